//! The fleet's true prefix-cache state, read-only, for benchmarks that measure how far a
//! router's idea of the caches is from the truth (`POST /sim/oracle/cached`).
//!
//! Each replica's cache mirrors the chain hashes it can serve a hit from into a [`CacheView`]
//! as it registers, evicts and clears them, so a lookup never waits for the engine's step loop
//! (a step can take tens of milliseconds; a router needs the answer now). One lookup answers for
//! the whole fleet, in the `ADDRESS=BLOCKS,...` form the gateway's `x-switchyard-oracle-cached`
//! header takes, so a load generator can ask once per request and pass the answer on. Nothing
//! in the serving path reads these views.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

/// The chain hashes one replica's cache holds now (across its incarnations: a restart clears it).
#[derive(Debug, Default)]
pub struct CacheView {
    hashes: Mutex<HashSet<u64>>,
}

impl CacheView {
    fn lock(&self) -> MutexGuard<'_, HashSet<u64>> {
        self.hashes.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn insert(&self, hash: u64) {
        self.lock().insert(hash);
    }

    pub fn remove(&self, hash: u64) {
        self.lock().remove(&hash);
    }

    pub fn clear(&self) {
        self.lock().clear();
    }

    /// How many leading entries of `hashes` are cached.
    pub fn cached_prefix_len(&self, hashes: &[u64]) -> usize {
        let set = self.lock();
        hashes.iter().take_while(|h| set.contains(h)).count()
    }
}

/// Every replica's view, with the address it serves on, in replica order.
#[derive(Debug, Default)]
pub struct FleetTruth {
    pub replicas: Vec<(SocketAddr, Arc<CacheView>)>,
}

impl FleetTruth {
    /// `ADDRESS=BLOCKS` per replica, comma-separated: the leading blocks of the prompt with
    /// chain `hashes` that each replica holds now.
    pub fn cached(&self, hashes: &[u64]) -> String {
        let mut out = String::new();
        for (i, (addr, view)) in self.replicas.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{addr}={}", view.cached_prefix_len(hashes));
        }
        out
    }
}
