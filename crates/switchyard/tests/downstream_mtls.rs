//! Client certificates on listeners (`tls.client_ca`, `require_client_cert`), with curl as the
//! client and, upstream, Python's `ssl` server requiring the gateway's own client certificate:
//! handshakes refused without a certificate, routes chosen by the certificate's SAN or subject,
//! the identity in the access log and in `x-forwarded-client-cert`, the CA re-read on reload.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use support::origin::Origin;
use support::pki::{loopback, Ca, Issued, Leaf};
use support::{Gateway, Kill};

fn curl() -> Command {
    let found = Command::new("sh")
        .args(["-c", "command -v curl"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "`curl` is not installed; run scripts/test or install it"
    );
    Command::new("curl")
}

/// `curl` to `path` on the gateway's TLS listener, trusting `edge`, with `client`'s
/// certificate when given; `Err(stderr)` when curl fails (a refused handshake).
fn fetch(
    gw: &Gateway,
    edge: &Ca,
    client: Option<&Issued>,
    path: &str,
    extra: &[&str],
) -> Result<(u16, serde_json::Value), String> {
    let mut cmd = curl();
    cmd.args([
        "-sS",
        "--max-time",
        "20",
        "-w",
        "\n%{http_code}",
        "--cacert",
    ])
    .arg(&edge.pem)
    .args(extra);
    if let Some(c) = client {
        cmd.arg("--cert").arg(&c.cert).arg("--key").arg(&c.key);
    }
    cmd.arg(format!("https://127.0.0.1:{}{path}", gw.addr().port()));
    let out = cmd.output().unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, code) = text.rsplit_once('\n').unwrap();
    let v = serde_json::from_str(body).unwrap_or_else(|_| serde_json::json!({ "raw": body }));
    Ok((code.parse().unwrap(), v))
}

/// The access log line of the first request to `route`, once the writer has written it.
fn access_line(gw: &Gateway, route: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + support::WAIT;
    loop {
        let found = gw
            .stdout_lines()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|l| l["route"] == route);
        if let Some(line) = found {
            return line;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no access log line for route `{route}`"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn edge_listener(dir: &Path, edge: &Ca, client_ca: &Path, require: bool, extra: &str) -> String {
    let cert = edge.issue(
        dir,
        "edge",
        Leaf {
            cn: "gateway-edge",
            dns: &["localhost"],
            ips: &[loopback()],
            ..Leaf::default()
        },
    );
    format!(
        "admin: {{address: 127.0.0.1:0}}\nruntime: {{workers: 1, watch_config: false}}\nlisteners:\n  - name: public\n    address: 127.0.0.1:0\n    access_log: true\n{extra}    tls: {{cert: {}, key: {}, client_ca: {}, require_client_cert: {require}}}\n",
        cert.cert.display(),
        cert.key.display(),
        client_ca.display()
    )
}

fn client(ca: &Ca, dir: &Path, name: &str, uri: &str) -> Issued {
    ca.issue(
        dir,
        name,
        Leaf {
            cn: name,
            uris: &[uri],
            client: true,
            ..Leaf::default()
        },
    )
}

#[test]
fn curl_clients_are_routed_by_their_certificate_to_a_python_mtls_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let edge = Ca::new(d, "edge");
    let clients = Ca::new(d, "clients");
    let upstreams = Ca::new(d, "upstreams");
    let gateways = Ca::new(d, "gateways");
    let alice = client(&clients, d, "alice", "spiffe://test/team-a/alice");
    let bob = client(&clients, d, "bob", "spiffe://test/team-b/bob");
    let mallory = client(&Ca::new(d, "rogue"), d, "mallory", "spiffe://test/team-a/m");
    let gateway_cert = gateways.issue(
        d,
        "gateway-client",
        Leaf {
            cn: "gateway",
            client: true,
            ..Leaf::default()
        },
    );
    let python_cert = upstreams.issue(
        d,
        "python",
        Leaf {
            cn: "python-upstream",
            ips: &[loopback()],
            ..Leaf::default()
        },
    );

    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/interop/tls_upstream.py"
    );
    let mut python = Kill(
        Command::new(support::python3())
            .arg(script)
            .arg(&python_cert.cert)
            .arg(&python_cert.key)
            .arg(&gateways.pem)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(python.0.stdout.take().unwrap()).lines();
    let port_line = lines.next().expect("python printed nothing").unwrap();
    let port: u16 = port_line
        .strip_prefix("PORT ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected: {port_line}"));
    let origin = Origin::start();

    let yaml = edge_listener(
        d,
        &edge,
        &clients.pem,
        true,
        "    forward_client_cert: sanitize_set\n",
    ) + &format!(
        "routes:\n  - {{name: team-a, match: {{client_cert: {{san: \"spiffe://test/team-a/*\"}}}}, pool: python}}\n  - {{name: bob, match: {{client_cert: {{subject: CN=bob}}}}, pool: plain}}\npools:\n  - {{name: python, endpoints: [127.0.0.1:{port}], tls: {{ca: {}, cert: {}, key: {}}}}}\n  - {{name: plain, endpoints: [{}]}}\n",
        upstreams.pem.display(),
        gateway_cert.cert.display(),
        gateway_cert.key.display(),
        origin.addr
    );
    let gw = Gateway::start(&yaml);

    // No certificate, or one from another CA: the handshake is refused.
    let err = fetch(&gw, &edge, None, "/a", &[]).unwrap_err();
    assert!(!err.is_empty(), "curl should say why");
    fetch(&gw, &edge, Some(&mallory), "/a", &[]).unwrap_err();

    // Alice's SAN routes her to the Python mTLS upstream, which saw the gateway's certificate;
    // the XFCC header is the gateway's, not the one she sent.
    let (status, v) = fetch(
        &gw,
        &edge,
        Some(&alice),
        "/a",
        &[
            "-H",
            "x-forwarded-client-cert: By=forged;URI=spiffe://test/admin",
        ],
    )
    .unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["upstream"], "python-ssl", "{v}");
    assert_eq!(v["peer_subject"], "commonName=gateway", "{v}");
    let xfcc = v["xfcc"].as_str().unwrap();
    assert!(
        xfcc.contains("Subject=\"CN=alice\"") && xfcc.contains("URI=spiffe://test/team-a/alice"),
        "{xfcc}"
    );
    assert!(!xfcc.contains("forged"), "{xfcc}");
    assert!(xfcc.starts_with("Hash="), "{xfcc}");

    // Bob's subject routes him to the plain origin.
    let (status, v) = fetch(&gw, &edge, Some(&bob), "/b", &[]).unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["origin"], origin.addr.to_string(), "{v}");

    // The access log names each client.
    let alice_line = access_line(&gw, "team-a");
    assert_eq!(alice_line["client_subject"], "CN=alice");
    assert_eq!(
        alice_line["client_san"],
        serde_json::json!(["spiffe://test/team-a/alice"])
    );
    assert_eq!(access_line(&gw, "bob")["client_subject"], "CN=bob");
    drop(python);
}

#[test]
fn optional_client_certificates_let_anonymous_clients_in_without_an_identity() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let edge = Ca::new(d, "edge");
    let clients = Ca::new(d, "clients");
    let alice = client(&clients, d, "alice", "spiffe://test/team-a/alice");
    let origin = Origin::start();
    let yaml = edge_listener(d, &edge, &clients.pem, false, "")
        + &format!(
            "routes:\n  - {{name: private, match: {{path_prefix: /private, client_cert: {{san: \"*\"}}}}, pool: p}}\n  - {{name: public, match: {{path_prefix: /public}}, pool: p}}\npools:\n  - {{name: p, endpoints: [{}]}}\n",
            origin.addr
        );
    let gw = Gateway::start(&yaml);
    let (status, v) = fetch(&gw, &edge, None, "/public", &[]).unwrap();
    assert_eq!(status, 200, "{v}");
    // The client's own XFCC never reaches the upstream by default (sanitize).
    let (status, v) = fetch(
        &gw,
        &edge,
        None,
        "/public",
        &["-H", "x-forwarded-client-cert: Hash=forged"],
    )
    .unwrap();
    assert_eq!(status, 200);
    assert!(v["headers"].get("x-forwarded-client-cert").is_none(), "{v}");
    let (status, v) = fetch(&gw, &edge, None, "/private", &[]).unwrap();
    assert_eq!(status, 404, "no identity, no route: {v}");
    let (status, v) = fetch(&gw, &edge, Some(&alice), "/private", &[]).unwrap();
    assert_eq!(status, 200, "{v}");
    assert!(v["headers"].get("x-forwarded-client-cert").is_none(), "{v}");
}

#[test]
fn a_reload_rereads_the_client_ca() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let edge = Ca::new(d, "edge");
    let old = Ca::new(d, "old");
    let new = Ca::new(d, "new");
    let alice = client(&new, d, "alice", "spiffe://test/a");
    let trusted = d.join("clients.pem");
    std::fs::copy(&old.pem, &trusted).unwrap();
    let origin = Origin::start();
    let yaml = edge_listener(d, &edge, &trusted, true, "")
        + &format!(
            "routes:\n  - {{name: r, match: {{path_prefix: /}}, pool: p}}\npools:\n  - {{name: p, endpoints: [{}]}}\n",
            origin.addr
        );
    let gw = Gateway::start(&yaml);
    fetch(&gw, &edge, Some(&alice), "/", &[]).unwrap_err();
    std::fs::copy(&new.pem, &trusted).unwrap();
    gw.reload(&yaml);
    let (status, v) = fetch(&gw, &edge, Some(&alice), "/", &[]).unwrap();
    assert_eq!(status, 200, "{v}");
}
