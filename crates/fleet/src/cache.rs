//! The last good config, kept on local disk, so a gateway can start while etcd is down.
//!
//! Only a revision that parsed and was applied is written, so the cache never holds a config
//! the gateway refused. It keeps the raw entries (not the parsed config) and the revision: a
//! start from the cache runs them through the same checks and resumes the watch after that
//! revision once etcd answers.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::layout::{Entry, MAX_CONFIG_BYTES};
use crate::watch::Snapshot;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cached {
    /// The `etcd://` source it was read from: a cache of another source is not used.
    pub source: String,
    /// The config's revision, and the store's revision when it was read (the watch resumes
    /// after it).
    pub revision: i64,
    pub read_at: i64,
    pub entries: Vec<CachedEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedEntry {
    pub key: String,
    pub value: String,
}

impl Cached {
    pub fn new(source: String, snapshot: &Snapshot) -> Self {
        let entries = snapshot
            .entries
            .iter()
            .map(|e| CachedEntry {
                key: e.key.clone(),
                value: String::from_utf8_lossy(&e.value).into_owned(),
            })
            .collect();
        Self {
            source,
            revision: snapshot.revision,
            read_at: snapshot.read_at,
            entries,
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        let entries = self
            .entries
            .iter()
            .map(|e| Entry {
                key: e.key.clone(),
                value: e.value.clone().into_bytes(),
            })
            .collect();
        Snapshot {
            read_at: self.read_at,
            revision: self.revision,
            entries,
        }
    }
}

/// Write `cached` to `path` through a temporary file and a rename, so a crash mid-write leaves
/// the previous cache, never half of one.
pub fn store(path: &Path, cached: &Cached) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let json = serde_json::to_vec(cached).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, json)?;
    std::fs::rename(&tmp, path)
}

/// The cache at `path` if it holds a config of `source`.
pub fn load(path: &Path, source: &str) -> Result<Cached, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.len() > 2 * MAX_CONFIG_BYTES {
        return Err(format!("{}: larger than any config", path.display()));
    }
    let cached: Cached =
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    if cached.source != source {
        return Err(format!(
            "{}: holds the config of {}, not {source}",
            path.display(),
            cached.source
        ));
    }
    Ok(cached)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_another_source() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.json");
        let snapshot = Snapshot {
            read_at: 50,
            revision: 42,
            entries: vec![Entry {
                key: "/k".into(),
                value: b"pools: []\n".to_vec(),
            }],
        };
        let cached = Cached::new("etcd://a:1/k".into(), &snapshot);
        store(&path, &cached).unwrap();
        let back = load(&path, "etcd://a:1/k").unwrap();
        assert_eq!(back, cached);
        assert_eq!(back.snapshot(), snapshot);
        assert!(load(&path, "etcd://a:1/other").is_err());
        std::fs::write(&path, b"{not json").unwrap();
        assert!(load(&path, "etcd://a:1/k").is_err());
    }
}
