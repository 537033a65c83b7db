//! Where the serving config came from, as `/config` reports it: a fleet operator compares the
//! revision across replicas to find one stuck on a stale config, and reads here why a newer
//! revision was refused.

use serde::Serialize;

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct SourceStatus {
    /// `file` or `etcd`.
    pub kind: &'static str,
    /// The file's path or the `etcd://` source.
    pub location: String,
    /// The etcd revision applied (0 for a file).
    pub revision: i64,
    /// When it was applied, milliseconds since the Unix epoch.
    pub applied_unix_ms: u64,
    /// The config was read from the local cache because etcd could not be reached at start,
    /// and no newer revision has been read since.
    pub from_cache: bool,
    /// etcd answers (always true for a file).
    pub reachable: bool,
    /// The last revision refused, and why; cleared when a newer one applies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<Refused>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Refused {
    pub revision: i64,
    pub error: String,
}

impl SourceStatus {
    pub fn file(path: &std::path::Path) -> Self {
        Self {
            kind: "file",
            location: path.display().to_string(),
            reachable: true,
            applied_unix_ms: now_ms(),
            ..Self::default()
        }
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
