//! `switchyard config push FILE --to etcd://...`: a checked, race-free write of a fleet's config.
//!
//! The file is validated with the same checks a gateway applies, so a push cannot break the
//! fleet with a config every replica would refuse. The write is a compare-and-swap on the key's
//! revision: two operators pushing at once cannot silently overwrite each other, and
//! `--expect-revision` lets a pipeline say which revision its change was made against.

use std::path::Path;

use etcd_client::{Compare, CompareOp, Txn, TxnOp};

use crate::layout::range_end;
use crate::watch::{connect, read};
use crate::EtcdUrl;

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// The revision the config had before (0: it was not set).
    pub previous: i64,
    /// The revision of this write: what every replica's `/config` reports once applied.
    pub revision: i64,
}

/// Validate `file` and write it as the whole config at `url`'s key.
pub async fn push(file: &Path, url: &EtcdUrl, expect: Option<i64>) -> Result<Pushed, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("{}: cannot read config file: {e}", file.display()))?;
    switchyard_config::parse(&text, file).map_err(|e| e.to_string())?;
    let mut client = connect(url).await?;
    let current = read(&mut client, url).await?;
    if let Some(other) = current.entries.iter().find(|e| e.key != url.key) {
        return Err(format!(
            "{}: the config is split over keys under it (such as {}); push writes the whole \
             config to one key, so delete those first or write them with etcdctl",
            url,
            url.label(&other.key)
        ));
    }
    let previous = current.revision;
    if let Some(expect) = expect.filter(|e| *e != previous) {
        return Err(format!(
            "{url}: the config is at revision {previous}, not {expect}; pull it again and redo \
             the change"
        ));
    }
    // Nothing in the range may have changed since the read: not the key, and no part created
    // under it (which would leave both layouts set, and every replica refusing them).
    let txn = Txn::new()
        .when([
            Compare::mod_revision(url.key.as_bytes(), CompareOp::Less, current.read_at + 1)
                .with_range(range_end(&url.key)),
        ])
        .and_then([TxnOp::put(url.key.as_bytes(), text.into_bytes(), None)]);
    let response = client
        .txn(txn)
        .await
        .map_err(|e| format!("{url}: write failed: {e}"))?;
    if !response.succeeded() {
        return Err(format!(
            "{url}: someone else changed the config since revision {previous}; nothing written"
        ));
    }
    let revision = response.header().map_or(0, |h| h.revision());
    Ok(Pushed { previous, revision })
}
