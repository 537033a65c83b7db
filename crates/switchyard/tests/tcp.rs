//! `protocol: tcp` listeners end to end: the real gateway in front of real TCP upstreams (echo
//! servers, TLS servers, `redis-server`) and real clients (`redis-cli`, `openssl s_client`).

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use support::fleet::{dead_address, endpoint, pools};
use support::redis::RedisServer;
use support::tcp::{self as up, connect, echo_once, round_trip};
use support::{eventually, Gateway, WAIT};
use tokio::io::AsyncReadExt;

fn pool(name: &str, endpoints: &[SocketAddr], extra: &str) -> String {
    let eps: Vec<String> = endpoints.iter().map(|e| format!("'{e}'")).collect();
    format!(
        "  - name: {name}\n    endpoints: [{}]\n{extra}",
        eps.join(", ")
    )
}

/// One tcp listener `tcp` with `listener` settings (indented four spaces) and `pools`.
fn config(listener: &str, pools: &str) -> String {
    format!(
        "admin: {{address: 127.0.0.1:0}}\nruntime: {{workers: 1, watch_config: false}}\nlisteners:\n  - name: tcp\n    address: 127.0.0.1:0\n    protocol: tcp\n{listener}pools:\n{pools}"
    )
}

fn tcp_addr(gw: &Gateway) -> SocketAddr {
    gw.listeners["tcp"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_round_trip_with_half_close_and_round_robin_spreads_connections() {
    let ups = [up::echo().await, up::echo().await, up::echo().await];
    let eps: Vec<_> = ups.iter().map(|u| u.addr).collect();
    let gw = Gateway::start(&config("    pool: p\n", &pool("p", &eps, "")));
    let addr = tcp_addr(&gw);
    let big: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(round_trip(addr, &big).await, big, "1 MiB echoed through");
    for i in 0..5 {
        let msg = format!("hello {i}");
        assert_eq!(round_trip(addr, msg.as_bytes()).await, msg.as_bytes());
    }
    let counts: Vec<usize> = ups.iter().map(up::Upstream::accepted).collect();
    assert_eq!(counts, [2, 2, 2], "round robin over three endpoints");
    let received = "switchyard_tcp_downstream_bytes_total{listener=\"tcp\",direction=\"received\"}";
    let sent = "switchyard_tcp_downstream_bytes_total{listener=\"tcp\",direction=\"sent\"}";
    let expected = (big.len() + (0..5).map(|i| format!("hello {i}").len()).sum::<usize>()) as f64;
    eventually("byte counts flushed", || {
        gw.metric(received) == expected && gw.metric(sent) == expected
    })
    .await;
    let ep = format!(
        "switchyard_tcp_upstream_bytes_total{{pool=\"p\",endpoint=\"{}\",direction=\"sent\"}}",
        eps[0]
    );
    assert!(
        gw.metric(&ep) >= big.len() as f64
            || gw.metric(&ep.replace(&eps[0].to_string(), &eps[1].to_string())) >= big.len() as f64
            || gw.metric(&ep.replace(&eps[0].to_string(), &eps[2].to_string())) >= big.len() as f64
    );
    assert_eq!(
        gw.metric("switchyard_downstream_connections_accepted_total{listener=\"tcp\"}"),
        6.0
    );
    eventually("no connection left open", || {
        gw.metric("switchyard_downstream_connections{listener=\"tcp\"}") == 0.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_ip_hashing_keeps_a_client_on_one_endpoint() {
    let ups = [up::echo().await, up::echo().await, up::echo().await];
    let eps: Vec<_> = ups.iter().map(|u| u.addr).collect();
    let balancer = "    balancer: {kind: maglev, key: source_ip}\n";
    let gw = Gateway::start(&config("    pool: p\n", &pool("p", &eps, balancer)));
    for _ in 0..6 {
        assert_eq!(round_trip(tcp_addr(&gw), b"x").await, b"x");
    }
    let mut counts: Vec<usize> = ups.iter().map(up::Upstream::accepted).collect();
    counts.sort_unstable();
    assert_eq!(counts, [0, 0, 6], "one client IP, one endpoint");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connect_is_retried_on_another_endpoint_and_ejects_it() {
    let live = up::echo().await;
    let (dead, _keep) = dead_address();
    let outlier =
        "    outlier: {consecutive_refused: 1, base_ejection: 30s, max_ejected_percent: 50}\n";
    let gw = Gateway::start(&config(
        "    pool: p\n",
        &pool("p", &[dead, live.addr], outlier),
    ));
    for i in 0..6 {
        let msg = format!("m{i}");
        assert_eq!(
            round_trip(tcp_addr(&gw), msg.as_bytes()).await,
            msg.as_bytes()
        );
    }
    assert_eq!(
        live.accepted(),
        6,
        "every connection reached the live endpoint"
    );
    let failures =
        format!("switchyard_tcp_upstream_connect_failures_total{{pool=\"p\",endpoint=\"{dead}\"}}");
    assert_eq!(gw.metric(&failures), 1.0, "one refusal, then ejected");
    assert_eq!(endpoint(&pools(&gw), dead)["ejected"], true);
    assert_eq!(
        gw.metric("switchyard_upstream_connect_errors_total{pool=\"p\"}"),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_is_closed_when_every_connect_fails() {
    let (dead_a, _a) = dead_address();
    let (dead_b, _b) = dead_address();
    let gw = Gateway::start(&config("    pool: p\n", &pool("p", &[dead_a, dead_b], "")));
    let mut s = connect(tcp_addr(&gw)).await;
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(WAIT, s.read(&mut buf))
        .await
        .expect("closed once the connects failed")
        .unwrap_or(0);
    assert_eq!(n, 0);
    let unforwarded =
        "switchyard_tcp_unforwarded_connections_total{listener=\"tcp\",reason=\"connect\"}";
    eventually("counted as unforwarded", || gw.metric(unforwarded) == 1.0).await;
    assert_eq!(
        gw.metric("switchyard_upstream_connect_errors_total{pool=\"p\"}"),
        2.0,
        "the first connect and one retry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_tcp_health_checks_take_a_dead_endpoint_out() {
    let live = up::echo().await;
    let (dead, _keep) = dead_address();
    let health =
        "    health: {tcp: {}, interval: 50ms, timeout: 500ms, healthy: 1, unhealthy: 1}\n";
    let gw = Gateway::start(&config(
        "    pool: p\n    connect_retries: 0\n",
        &pool("p", &[dead, live.addr], health),
    ));
    eventually("the dead endpoint checked unhealthy", || {
        endpoint(&pools(&gw), dead)["healthy"] == false
    })
    .await;
    let failures =
        format!("switchyard_tcp_upstream_connect_failures_total{{pool=\"p\",endpoint=\"{dead}\"}}");
    let before = gw.metric(&failures);
    for _ in 0..6 {
        assert_eq!(
            round_trip(tcp_addr(&gw), b"ok").await,
            b"ok",
            "no retries needed"
        );
    }
    assert_eq!(
        gw.metric(&failures),
        before,
        "no connection tried the dead endpoint"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_holds_new_connections_until_one_closes() {
    let echo = up::echo().await;
    let gw = Gateway::start(&config(
        "    pool: p\n    max_connections: 1\n",
        &pool("p", &[echo.addr], ""),
    ));
    let addr = tcp_addr(&gw);
    let mut first = connect(addr).await;
    echo_once(&mut first, b"first").await;
    // The kernel completes the handshake (backlog); the gateway does not accept it yet.
    let mut second = connect(addr).await;
    tokio::io::AsyncWriteExt::write_all(&mut second, b"second")
        .await
        .unwrap();
    let accepted = "switchyard_downstream_connections_accepted_total{listener=\"tcp\"}";
    assert_eq!(gw.metric(accepted), 1.0);
    let mut probe = [0u8; 8];
    assert!(
        matches!(second.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the second connection was served while the first held the only slot"
    );
    assert_eq!(echo.accepted(), 1);
    drop(first);
    let mut back = [0u8; 6];
    tokio::time::timeout(WAIT, second.read_exact(&mut back))
        .await
        .expect("served once the first closed")
        .unwrap();
    assert_eq!(&back, b"second");
    assert_eq!(gw.metric(accepted), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pools_connection_limit_closes_clients_past_it() {
    let echo = up::echo().await;
    let limits = "    limits: {max_connections: 1}\n";
    let gw = Gateway::start(&config("    pool: p\n", &pool("p", &[echo.addr], limits)));
    let mut first = connect(tcp_addr(&gw)).await;
    echo_once(&mut first, b"first").await;
    let mut second = connect(tcp_addr(&gw)).await;
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(WAIT, second.read(&mut buf))
        .await
        .expect("closed at once")
        .unwrap_or(0);
    assert_eq!(n, 0, "past the pool's limit");
    let overflow =
        "switchyard_tcp_unforwarded_connections_total{listener=\"tcp\",reason=\"overflow\"}";
    eventually("counted as overflow", || gw.metric(overflow) == 1.0).await;
    echo_once(&mut first, b"still served").await;
    drop(first);
    let open = format!(
        "switchyard_tcp_upstream_connections{{pool=\"p\",endpoint=\"{}\"}}",
        echo.addr
    );
    eventually("the slot freed", || gw.metric(&open) == 0.0).await;
    assert_eq!(round_trip(tcp_addr(&gw), b"third").await, b"third");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed() {
    let echo = up::echo().await;
    let gw = Gateway::start(&config(
        "    pool: p\n    idle_timeout: 200ms\n",
        &pool("p", &[echo.addr], ""),
    ));
    let mut s = connect(tcp_addr(&gw)).await;
    echo_once(&mut s, b"once").await;
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(WAIT, s.read(&mut buf))
        .await
        .expect("closed by the idle timeout")
        .unwrap_or(0);
    assert_eq!(n, 0, "EOF after idling");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_v2_header_carries_the_client_address() {
    let (upstream, mut headers) = up::proxy_v2_echo().await;
    let gw = Gateway::start(&config(
        "    pool: p\n",
        &pool("p", &[upstream.addr], "    proxy_protocol: v2\n"),
    ));
    let mut s = connect(tcp_addr(&gw)).await;
    let client = s.local_addr().unwrap();
    echo_once(&mut s, b"after the header").await;
    let (src, dst) = headers.recv().await.unwrap().unwrap();
    assert_eq!(src, client, "source: the client as the gateway saw it");
    assert_eq!(
        dst,
        tcp_addr(&gw),
        "destination: the listener it connected to"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_moves_new_connections_and_keeps_open_ones() {
    let (a, b) = (up::echo().await, up::echo().await);
    let pools_yaml = format!("{}{}", pool("a", &[a.addr], ""), pool("b", &[b.addr], ""));
    let gw = Gateway::start(&config("    pool: a\n", &pools_yaml));
    let mut open = connect(tcp_addr(&gw)).await;
    echo_once(&mut open, b"before").await;
    assert_eq!(a.accepted(), 1);
    gw.reload(&config("    pool: b\n", &pools_yaml));
    assert_eq!(gw.log_count("config reloaded"), 1);
    echo_once(&mut open, b"after the reload, same connection").await;
    assert_eq!(round_trip(tcp_addr(&gw), b"new").await, b"new");
    assert_eq!(
        (a.accepted(), b.accepted()),
        (1, 1),
        "the new connection went to pool b"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_open_connection_finish() {
    let echo = up::echo().await;
    let mut gw = Gateway::start(&config("    pool: p\n", &pool("p", &[echo.addr], "")));
    let addr = tcp_addr(&gw);
    let mut open = connect(addr).await;
    echo_once(&mut open, b"before").await;
    gw.signal("TERM");
    gw.wait_log("draining", 1, WAIT);
    echo_once(&mut open, b"while draining").await;
    eventually("the listener closed", || {
        std::net::TcpStream::connect(addr).is_err()
    })
    .await;
    assert_eq!(
        gw.wait_exit(Duration::from_millis(200)),
        None,
        "waits for the open connection"
    );
    drop(open);
    assert_eq!(gw.wait_exit(WAIT), Some(0));
    assert_eq!(gw.log_count("drained; exiting"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_set_and_get_through_a_tcp_listener() {
    let redis = RedisServer::start();
    let gw = Gateway::start(&config("    pool: r\n", &pool("r", &[redis.addr], "")));
    let addr = tcp_addr(&gw);
    let cli = |args: &[&str]| {
        let out = Command::new("timeout")
            .args(["30", "redis-cli", "-h", "127.0.0.1", "-p"])
            .arg(addr.port().to_string())
            .args(args)
            .output()
            .expect("redis-cli (Debian package redis-tools) runs");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(
        cli(&["SET", "switchyard:k", "through the tcp listener"]).trim(),
        "OK"
    );
    assert_eq!(
        cli(&["GET", "switchyard:k"]).trim(),
        "through the tcp listener"
    );
}

/// `openssl s_client` through the listener; what it printed (the certificate's subject).
fn s_client(addr: SocketAddr, sni: Option<&str>) -> String {
    let mut cmd = Command::new("timeout");
    cmd.args(["30", "openssl", "s_client", "-connect"])
        .arg(addr.to_string());
    match sni {
        Some(name) => cmd.args(["-servername", name]),
        None => cmd.arg("-noservername"),
    };
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl runs");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_s_client_is_routed_by_sni_without_termination() {
    let a = up::tls_named("a.example").await;
    let b = up::tls_named("x.b.example").await;
    let fallback = up::tls_named("default.example").await;
    let listener = "    pool: fallback\n    sni_routes:\n      - {match: {sni: a.example}, pool: a}\n      - {match: {sni: '*.b.example'}, pool: b}\n";
    let pools_yaml = format!(
        "{}{}{}",
        pool("a", &[a.addr], ""),
        pool("b", &[b.addr], ""),
        pool("fallback", &[fallback.addr], "")
    );
    let gw = Gateway::start(&config(listener, &pools_yaml));
    let addr = tcp_addr(&gw);
    let subject = |out: &str| {
        out.lines()
            .find(|l| l.starts_with("subject="))
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("no certificate subject in {out}"))
    };
    let to_a = s_client(addr, Some("a.example"));
    assert!(subject(&to_a).contains("a.example"), "{to_a}");
    let to_b = s_client(addr, Some("x.b.example"));
    assert!(subject(&to_b).contains("x.b.example"), "{to_b}");
    let unnamed = s_client(addr, None);
    assert!(subject(&unnamed).contains("default.example"), "{unnamed}");
    let unmatched = s_client(addr, Some("c.example"));
    assert!(
        subject(&unmatched).contains("default.example"),
        "{unmatched}"
    );
    assert_eq!((a.accepted(), b.accepted(), fallback.accepted()), (1, 1, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_sends_no_client_hello_is_closed_after_the_header_timeout() {
    let fallback = up::tls_named("default.example").await;
    let listener = "    pool: p\n    header_read_timeout: 200ms\n    sni_routes:\n      - {match: {sni: a.example}, pool: p}\n";
    let gw = Gateway::start(&config(listener, &pool("p", &[fallback.addr], "")));
    let mut s = connect(tcp_addr(&gw)).await;
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(WAIT, s.read(&mut buf))
        .await
        .expect("closed by the header timeout")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert_eq!(fallback.accepted(), 0, "never forwarded");
    eventually("counted as unforwarded", || {
        gw.metric("switchyard_tcp_unforwarded_connections_total{listener=\"tcp\",reason=\"client_hello\"}") == 1.0
    })
    .await;
}
