//! `kv_events` of the `inference` balancer and `kv_events`/`kv_replay` of an endpoint: where
//! each model server publishes its KV-cache events (docs/inference.md, "Precise prefix routing").
//!
//! One engine per host is the common deployment, so the balancer takes a template,
//! `tcp://{host}:5557`, filled with each endpoint's IP; several engines on one host (a test
//! machine, a fleet of simulators) name their sockets per endpoint instead.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

/// The `kv_events` settings of an `inference` balancer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KvEvents {
    /// Each endpoint's PUB socket, `tcp://{host}:PORT` (or a fixed `tcp://IP:PORT`); endpoints
    /// with their own `kv_events` use that instead.
    #[serde(deserialize_with = "template", skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Each endpoint's replay ROUTER socket, same form; without one, a gap marks the endpoint
    /// stale instead of being replayed.
    #[serde(deserialize_with = "template", skip_serializing_if = "Option::is_none")]
    pub replay: Option<String>,
    /// How prompts are tokenized to key blocks as the engine does.
    pub tokenizer: KvTokenizer,
    /// How long an endpoint whose events were lost for good is scored by the approximate
    /// index instead, while its precise entries are rebuilt from new events.
    #[serde(with = "humantime_serde")]
    pub stale_for: Duration,
}

impl Default for KvEvents {
    fn default() -> Self {
        Self {
            endpoint: None,
            replay: None,
            tokenizer: KvTokenizer::Sim,
            stale_for: Duration::from_secs(10),
        }
    }
}

/// `kv_events.tokenizer`: the gateway must tokenize a prompt exactly as the engines do, or no
/// block key it computes matches one they stored.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KvTokenizer {
    /// The simulator's tokenizer (`switchyard sim` without a `tokenizer:`).
    Sim,
    /// The model's Hugging Face `tokenizer.json`, read from this path when the config loads
    /// (vLLM reads the same file; a path that cannot be read fails the load).
    Huggingface(PathBuf),
}

impl KvEvents {
    /// The PUB and replay sockets of the endpoint at `address`, its own `kv_events` and
    /// `kv_replay` (from [`crate::EndpointSpec`]) first, else the templates with its IP.
    pub fn sockets(
        &self,
        address: SocketAddr,
        own: Option<SocketAddr>,
        own_replay: Option<SocketAddr>,
    ) -> Option<(SocketAddr, Option<SocketAddr>)> {
        let fill = |t: &Option<String>| t.as_deref().and_then(|t| fill(t, address.ip()));
        let events = own.or_else(|| fill(&self.endpoint))?;
        Some((events, own_replay.or_else(|| fill(&self.replay))))
    }
}

fn fill(template: &str, ip: IpAddr) -> Option<SocketAddr> {
    let host = match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    };
    tcp_addr(&template.replace("{host}", &host)).ok()
}

/// `tcp://IP:PORT` as a socket address.
pub fn tcp_addr(s: &str) -> Result<SocketAddr, String> {
    let rest = s
        .strip_prefix("tcp://")
        .ok_or_else(|| format!("`{s}`: expected tcp://IP:PORT"))?;
    rest.parse()
        .map_err(|_| format!("`{s}`: expected tcp://IP:PORT (an IP address, not a name)"))
}

fn template<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    // Check it with a stand-in host, so `{host}` and fixed addresses are both accepted.
    fill(&s, IpAddr::from([127, 0, 0, 1]))
        .ok_or_else(|| {
            serde::de::Error::custom(format!(
                "`{s}`: expected tcp://{{host}}:PORT or tcp://IP:PORT"
            ))
        })
        .map(|_| Some(s))
}

/// An endpoint's own `kv_events` / `kv_replay`: `tcp://IP:PORT`.
pub(crate) fn endpoint_socket<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<SocketAddr>, D::Error> {
    let s = String::deserialize(d)?;
    tcp_addr(&s).map(Some).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_and_own_sockets() {
        let kv: KvEvents = serde_json::from_value(serde_json::json!({
            "endpoint": "tcp://{host}:5557", "replay": "tcp://{host}:5558"
        }))
        .unwrap();
        let a: SocketAddr = "10.0.0.5:8000".parse().unwrap();
        assert_eq!(
            kv.sockets(a, None, None),
            Some((
                "10.0.0.5:5557".parse().unwrap(),
                Some("10.0.0.5:5558".parse().unwrap())
            ))
        );
        let own: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        assert_eq!(kv.sockets(a, Some(own), None).unwrap().0, own);
        assert_eq!(KvEvents::default().sockets(a, None, None), None);
        let bad =
            serde_json::from_value::<KvEvents>(serde_json::json!({"endpoint": "tcp://host:1"}));
        assert!(bad.unwrap_err().to_string().contains("tcp://{host}:PORT"));
        let bad = serde_json::from_value::<KvEvents>(serde_json::json!({"tokenizer": "gpt2"}));
        let bad = bad.unwrap_err().to_string();
        assert!(bad.contains("sim") && bad.contains("huggingface"), "{bad}");
        let hf: KvEvents = serde_json::from_value(
            serde_json::json!({"tokenizer": {"huggingface": "/models/m/tokenizer.json"}}),
        )
        .unwrap();
        assert_eq!(
            hf.tokenizer,
            KvTokenizer::Huggingface("/models/m/tokenizer.json".into())
        );
        assert!(serde_json::from_value::<KvEvents>(serde_json::json!({"endpiont": "x"})).is_err());
    }
}
