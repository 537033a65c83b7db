//! `etcd://HOST:PORT[,HOST:PORT...]/KEY`: where a fleet's config lives.

use std::fmt;

/// A parsed `etcd://` config source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdUrl {
    /// `http://HOST:PORT`, one per cluster member listed.
    pub endpoints: Vec<String>,
    /// The key holding the whole config, or the prefix (`KEY/`) of the keys holding its parts.
    pub key: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlError(pub String);

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UrlError {}

impl EtcdUrl {
    pub fn parse(text: &str) -> Result<Self, UrlError> {
        let err = |why: &str| UrlError(format!("config source `{text}`: {why}"));
        let rest = text
            .strip_prefix("etcd://")
            .ok_or_else(|| err("expected etcd://HOST:PORT/KEY"))?;
        let (hosts, key) = rest
            .split_once('/')
            .ok_or_else(|| err("no key: expected etcd://HOST:PORT/KEY"))?;
        let key = format!("/{}", key.trim_end_matches('/'));
        if key == "/" {
            return Err(err("the key is empty"));
        }
        if key.contains("//") {
            return Err(err("the key has an empty segment (`//`)"));
        }
        let mut endpoints = Vec::new();
        for host in hosts.split(',') {
            let Some((name, port)) = host.rsplit_once(':') else {
                return Err(err(&format!("`{host}` has no port")));
            };
            if name.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
                return Err(err(&format!("`{host}` is not HOST:PORT")));
            }
            endpoints.push(format!("http://{host}"));
        }
        Ok(Self { endpoints, key })
    }

    /// How a key of this source is named in errors and in `/config`.
    pub fn label(&self, key: &str) -> String {
        let hosts: Vec<&str> = self
            .endpoints
            .iter()
            .map(|e| e.trim_start_matches("http://"))
            .collect();
        format!("etcd://{}{key}", hosts.join(","))
    }
}

impl fmt::Display for EtcdUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label(&self.key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_members_and_key() {
        let u = EtcdUrl::parse("etcd://127.0.0.1:2379,10.0.0.2:2379/switchyard/prod/").unwrap();
        assert_eq!(
            u.endpoints,
            ["http://127.0.0.1:2379", "http://10.0.0.2:2379"]
        );
        assert_eq!(u.key, "/switchyard/prod");
        assert_eq!(
            u.to_string(),
            "etcd://127.0.0.1:2379,10.0.0.2:2379/switchyard/prod"
        );
    }

    #[test]
    fn refuses_what_it_cannot_use() {
        for bad in [
            "http://h:1/k",
            "etcd://h:1",
            "etcd://h:1/",
            "etcd://h/k",
            "etcd://h:0/k",
            "etcd://:1/k",
            "etcd://h:1/a//b",
        ] {
            assert!(EtcdUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
