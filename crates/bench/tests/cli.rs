//! The `switchyard bench` entry point end to end: flags in, table out, JSON and SVG written.

mod common;

use std::time::Duration;

use clap::Parser;
use common::Script;
use switchyard_bench::BenchArgs;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: BenchArgs,
}

/// Starts a scripted server on its own thread and runtime (`main` builds its own runtime).
fn server(script: Script) -> common::TestServer {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            tx.send(common::start(script).await).unwrap();
            std::future::pending::<()>().await;
        });
    });
    rx.recv().unwrap()
}

fn run(line: &str) -> anyhow::Result<()> {
    let cli = Cli::try_parse_from(std::iter::once("bench").chain(line.split_whitespace()))?;
    switchyard_bench::main(cli.args)
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("bench-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn single_run_writes_json() {
    let s = server(Script::Stream {
        first: Duration::from_millis(3),
        gap: Duration::from_millis(1),
        tokens: 5,
        usage: true,
    });
    let dir = tempdir("single");
    let out = dir.join("r.json");
    run(&format!(
        "--target a={} --concurrency 2 --requests 8 --slo ttft=1s --quiet --out {}",
        s.url(),
        out.display()
    ))
    .unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let t = &v["targets"][0];
    assert_eq!(t["name"], "a");
    assert_eq!(t["completed"], 8);
    assert_eq!(t["output_tokens"], 40);
    assert_eq!(t["goodput"]["good"], 8);
    assert!(t["ttft_ms"]["p99"].as_f64().unwrap() >= 3.0);
    assert_eq!(
        v["config"]["load"],
        serde_json::json!({"mode": "closed", "concurrency": 2})
    );
    assert_eq!(v["config"]["workload"]["kind"], "synthetic");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn sweep_writes_chart_and_levels() {
    let a = server(Script::Stream {
        first: Duration::from_millis(3),
        gap: Duration::from_millis(1),
        tokens: 3,
        usage: true,
    });
    let b = server(Script::Stream {
        first: Duration::from_millis(6),
        gap: Duration::from_millis(2),
        tokens: 3,
        usage: true,
    });
    let dir = tempdir("sweep");
    let (out, chart) = (dir.join("s.json"), dir.join("c.svg"));
    run(&format!(
        "--target a={} --target b={} --requests 6 --sweep rate=50,100 --arrival constant --quiet --out {} --chart {}",
        a.url(),
        b.url(),
        out.display(),
        chart.display()
    ))
    .unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let points = v["sweep"]["points"].as_array().unwrap();
    assert_eq!(points.len(), 2);
    assert_eq!(points[1]["level"], 100.0);
    assert_eq!(points[1]["report"]["config"]["load"]["rate"], 100.0);
    assert_eq!(points[0]["report"]["targets"][1]["completed"], 3);
    assert_eq!((a.count(), b.count()), (6, 6));
    let svg = std::fs::read_to_string(&chart).unwrap();
    assert!(svg.starts_with("<svg") && svg.matches("<polyline").count() == 6);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn trace_replay_uses_timestamps_and_headers() {
    let s = server(Script::Stream {
        first: Duration::from_millis(2),
        gap: Duration::from_millis(1),
        tokens: 2,
        usage: true,
    });
    let dir = tempdir("trace");
    let trace = dir.join("t.jsonl");
    std::fs::write(
        &trace,
        "{\"timestamp\":0,\"prompt\":\"hello there\",\"max_tokens\":2}\n\
         {\"timestamp\":0.2,\"prompt_tokens\":30,\"max_tokens\":2,\"model\":\"m2\",\"headers\":{\"x-tenant\":\"t1\"}}\n",
    )
    .unwrap();
    run(&format!(
        "--target {} --workload trace --trace {} --model m1 --quiet",
        s.url(),
        trace.display()
    ))
    .unwrap();
    let bodies = s.bodies.lock().unwrap().clone();
    assert_eq!(bodies.len(), 2);
    assert_eq!(bodies[0]["model"], "m1");
    assert_eq!(bodies[0]["messages"][0]["content"], "hello there");
    assert_eq!(bodies[1]["model"], "m2");
    assert_eq!(bodies[1]["x-tenant header"], "t1");
    assert!(bodies[0].get("x-tenant header").is_none());
    let arrivals = s.arrivals.lock().unwrap().clone();
    let gap = arrivals[1].duration_since(arrivals[0]).as_secs_f64();
    assert!((0.19..0.3).contains(&gap), "gap {gap}");

    std::fs::write(
        &trace,
        "{\"timestamp\":0,\"prompt\":\"x\",\"max_tokens\":2}\n{\"timestamp\":1}\n",
    )
    .unwrap();
    let err = run(&format!(
        "--target {} --workload trace --trace {}",
        s.url(),
        trace.display()
    ))
    .unwrap_err();
    assert!(format!("{err:#}").contains("t.jsonl:2: "), "{err:#}");
    std::fs::remove_dir_all(dir).unwrap();
}
