//! Interop with third-party clients through the gateway: curl (HTTP/1.1 and h2c), h2load, and
//! Python grpcio. `scripts/test` installs them; a missing tool fails the test rather than
//! skipping.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use support::origin::Origin;
use support::{simple_config, Gateway};

fn tool(name: &str) -> Command {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "`{name}` is not installed; run scripts/test or install it"
    );
    Command::new(name)
}

#[test]
fn curl_http11_and_h2c_prior_knowledge() {
    let origin = Origin::start();
    let gw = Gateway::start(&simple_config(&[origin.addr], "", ""));
    for flag in ["--http1.1", "--http2-prior-knowledge"] {
        let out = tool("curl")
            .args(["-sS", "-i", flag, &gw.url("/curl?x=1")])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{flag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let first = text.lines().next().unwrap_or("");
        assert!(first.contains("200"), "{flag}: {text}");
        if flag.contains("http2") {
            assert!(first.starts_with("HTTP/2"), "{text}");
        }
        assert!(
            text.to_ascii_lowercase().contains("x-request-id:"),
            "{text}"
        );
        assert!(text.contains("\"uri\":\"/curl?x=1\""), "{text}");
    }
    // Streaming: curl -N prints every SSE event.
    let out = tool("curl")
        .args(["-sS", "-N", &gw.url("/sse?n=3&ms=50")])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .matches("data: ")
            .count(),
        3
    );
}

#[test]
fn h2load_multiplexed_load_all_succeed() {
    let origin = Origin::start();
    let gw = Gateway::start(&simple_config(&[origin.addr], "", ""));
    let out = tool("h2load")
        .args(["-n", "2000", "-c", "10", "-m", "10", &gw.url("/h2load")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("2000 succeeded, 0 failed, 0 errored"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("status codes: 2000 2xx"), "{text}");
}

#[test]
fn python_grpcio_through_the_gateway() {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/interop/grpc_interop.py"
    );
    let mut child = Command::new(support::python3())
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let port_line = lines.next().expect("python printed nothing").unwrap();
    let port: u16 = port_line
        .strip_prefix("PORT ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected: {port_line}"));
    let yaml = format!(
        "admin: {{address: 127.0.0.1:0}}\nruntime: {{workers: 1, watch_config: false}}\nlisteners:\n  - {{name: public, address: 127.0.0.1:0}}\nroutes:\n  - {{name: grpc, match: {{path_prefix: /test.Echo/}}, pool: grpc}}\npools:\n  - {{name: grpc, protocol: http2, endpoints: [127.0.0.1:{port}]}}\n"
    );
    let gw = Gateway::start(&yaml);
    writeln!(child.stdin.as_mut().unwrap(), "{}", gw.addr()).unwrap();
    let result = lines.next().expect("no result").unwrap();
    let status = child.wait().unwrap();
    assert!(status.success());
    let v: serde_json::Value = serde_json::from_str(&result).unwrap();
    assert_eq!(v["unary"], "hello");
    assert_eq!(
        v["stream"],
        serde_json::json!(["msg0", "msg1", "msg2", "msg3", "msg4"])
    );
    assert_eq!(v["fail"], "PERMISSION_DENIED");
    assert_eq!(v["fail_details"], "nope");
    assert_eq!(v["no_route"], "UNIMPLEMENTED");
    assert_eq!(v["deadline"], "DEADLINE_EXCEEDED");
}
