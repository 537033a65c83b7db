//! An oracle's word on what each endpoint's cache holds, for benchmarks only: how far is routing
//! on the KV-event index from routing on the engines' true cache state, everything else equal?
//!
//! A client the listener trusts with debug headers (`trusted_headers: [debug]`) may send
//! `x-switchyard-oracle-cached: ADDRESS=BLOCKS,...`, each endpoint's count of the prompt's
//! leading blocks cached there now (the simulator's `POST /sim/oracle/cached` answers in this
//! form). The picker then takes those counts in place of the blocks the KV-event index learned
//! from the engines' `BlockStored`/`BlockRemoved` events; this gateway's own pending picks
//! ([`crate::kv_index::PENDING_FOR`]) and every load term are scored as always, so the two
//! differ only in what the index knows. Endpoints the header does not name are scored as usual.

use std::net::SocketAddr;

/// The header's name.
pub const ORACLE_CACHED_HEADER: &str = "x-switchyard-oracle-cached";

/// Most entries read from one header: more endpoints than any pool has is a malformed header.
pub const MAX_ENTRIES: usize = 4096;

/// Each endpoint's true cached blocks from a header `value`, by position in `addresses`; `None`
/// where the header does not name it. A malformed value is an error (the caller ignores the
/// header: it is a benchmark's aid, never a reason to fail a request).
pub fn parse(value: &[u8], addresses: &[SocketAddr]) -> Result<Vec<Option<usize>>, &'static str> {
    let text = std::str::from_utf8(value).map_err(|_| "not UTF-8")?;
    let mut out = vec![None; addresses.len()];
    for (k, entry) in text.split(',').enumerate() {
        if k >= MAX_ENTRIES {
            return Err("too many entries");
        }
        let (addr, blocks) = entry
            .trim()
            .split_once('=')
            .ok_or("an entry is not ADDRESS=BLOCKS")?;
        let addr: SocketAddr = addr.parse().map_err(|_| "not a socket address")?;
        let blocks: usize = blocks.parse().map_err(|_| "not a block count")?;
        for (i, a) in addresses.iter().enumerate() {
            if *a == addr {
                out[i] = Some(blocks);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_by_address_and_refuses_malformed_values() {
        let a: Vec<SocketAddr> = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(
            parse(b"127.0.0.1:2=7, 127.0.0.1:1=0,10.0.0.1:9=4", &a),
            Ok(vec![Some(0), Some(7), None])
        );
        assert!(parse(b"127.0.0.1:2", &a).is_err());
        assert!(parse(b"host:2=1", &a).is_err());
        assert!(parse(b"127.0.0.1:2=-1", &a).is_err());
        assert!(parse(&[0xff], &a).is_err());
        let many = vec!["127.0.0.1:1=1"; MAX_ENTRIES + 1].join(",");
        assert_eq!(parse(many.as_bytes(), &a), Err("too many entries"));
    }
}
