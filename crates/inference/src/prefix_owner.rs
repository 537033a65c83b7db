//! Who owns a prefix nobody holds yet: rendezvous hashing, so that several gateway replicas
//! send a new prefix to the same server without talking to each other.
//!
//! Each replica's approximate prefix index learns only from its own picks, and even the precise
//! index from KV events learns of a prefix only after its prefill has stored blocks. Until then
//! a prefix seen by three replicas at once would be scattered over three servers by their load
//! scores, each computing it again. The inference Extension runs a single active picker for this
//! reason (GAIE #1406). Here, a prefix that no candidate is known to hold goes to its owner: of
//! the candidates whose score is within a band of the best (`weights.prefix_owner`, as a share
//! of a full prefix hit's score), the one with the highest hash of (prefix, endpoint address).
//! Replicas that score those candidates alike choose the same one without talking; removing an
//! endpoint moves only the prefixes it owned; and the owner is never much busier than the best.
//!
//! A narrow band, not a credit: until session 17 the owner was the highest hash among all
//! candidates, credited half a prefix hit among the load terms. With a hash, a prefix's owner
//! is a ball thrown into a bin, and on a shared-prefix workload each system prompt stays where
//! it was first placed: the bins' uneven counts became lasting load imbalance, which the load
//! terms then answered by copying prompts onto second servers (more prefill, more KV blocks per
//! running batch, full caches, preemptions). On `h100` at 80% load with KV events, TTFT p99 was
//! 190–396 ms with the credit (hash or load-ordered owners) and 84–94 ms with the band
//! (docs/benchmarks.md, session 17).
//!
//! The band trades one case against another. Replicas score candidates with their own picks
//! and in-flight work, so when the *same* new prefix reaches two replicas within milliseconds
//! a narrow band lets them choose different owners; a wider one makes them agree more often
//! but places new prefixes more by hash than by load. With KV events that happens only for a
//! burst of a brand-new prompt, so the band is narrow (0.15). Without them every prefix a
//! replica has not routed itself looks new to it, which only a wide band (0.5) answers, and a
//! single gateway pays for that band: every prompt's first placement partly by hash, so on a
//! shared-prefix workload TTFT p99 4–9× that of owners off, and on prompts that share nothing
//! 3–7 points of SLO attainment (session 18). So without events owners are off unless set
//! (`InferenceWeights::owner_band`); several replicas without events set 0.5, which keeps
//! about half their hits where the narrow band kept a quarter (session 17). Scoring the band
//! on the servers' readings alone (what all replicas share) was measured too: it lost the
//! picks in flight that keep a single gateway's placement even.

use std::net::SocketAddr;

/// Prefixes are told apart by their first this-many blocks (512 tokens at 16 per block; the
/// whole prompt when shorter): long enough to separate system prompts, short enough that a
/// user's question after a long one does not.
pub const OWNER_DEPTH_BLOCKS: usize = 32;

/// The owner of the prefix `block_hashes` among `candidates`, whose addresses `address` gives:
/// of those whose `load` is within `band` of the least, the one with the highest hash.
pub fn owner(
    block_hashes: &[u64],
    candidates: &[usize],
    address: impl Fn(usize) -> Option<SocketAddr>,
    load: impl Fn(usize) -> f64,
    band: f64,
) -> Option<usize> {
    owner_recalling(block_hashes, candidates, address, load, band, |_| 0.0)
}

/// [`owner`], except that a candidate this gateway sent the prefix to before comes first, and
/// may be as far behind the best as the hit its own record credits it with (`recalled`: that
/// hit's score, 0 where it sent none), as the approximate index would have scored it.
///
/// For a prefix the KV events say nobody holds any more, because its engine restarted or
/// evicted it: the engine that lost it is where its group was placed, and, emptied by a
/// restart, about to be the least busy. Placed as new, by hash within the narrow band, the
/// group lands on a replica already holding its own, and a restart scatters some eight groups
/// over the rest of the fleet: on `h100` at 80% load with a replica crashing every 5 s, TTFT
/// p99 with events was 2–3× the approximate index's, which does not know the blocks are gone
/// and keeps each group where it was (docs/benchmarks.md, session 19).
pub fn owner_recalling(
    block_hashes: &[u64],
    candidates: &[usize],
    address: impl Fn(usize) -> Option<SocketAddr>,
    load: impl Fn(usize) -> f64,
    band: f64,
    recalled: impl Fn(usize) -> f64,
) -> Option<usize> {
    let key = *block_hashes.get(block_hashes.len().min(OWNER_DEPTH_BLOCKS).checked_sub(1)?)?;
    let least = candidates
        .iter()
        .map(|&i| load(i))
        .fold(f64::INFINITY, f64::min);
    let hash = |i: usize| address(i).map_or(0, |a| weight(key, a));
    candidates
        .iter()
        .copied()
        .filter(|&i| load(i) <= least + band.max(recalled(i)))
        .max_by(|&a, &b| {
            recalled(a)
                .total_cmp(&recalled(b))
                .then_with(|| hash(a).cmp(&hash(b)))
        })
}

/// Hash of (prefix key, address) from a stack buffer: this runs per candidate on a pick.
fn weight(key: u64, address: SocketAddr) -> u64 {
    let mut bytes = [0u8; 26];
    bytes[..8].copy_from_slice(&key.to_le_bytes());
    let ip = match address.ip() {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        std::net::IpAddr::V6(v6) => v6.octets(),
    };
    bytes[8..24].copy_from_slice(&ip);
    bytes[24..].copy_from_slice(&address.port().to_le_bytes());
    switchyard_balance::hash_key(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: u16) -> Vec<SocketAddr> {
        (0..n).map(|p| ([127, 0, 0, 1], 9000 + p).into()).collect()
    }

    #[test]
    fn the_same_prefix_has_the_same_owner_whatever_the_order() {
        let a = addrs(8);
        let all: Vec<usize> = (0..8).collect();
        let mut reversed = all.clone();
        reversed.reverse();
        for key in 0..200u64 {
            let hashes = [key, key + 1];
            assert_eq!(
                owner(&hashes, &all, |i| a.get(i).copied(), |_| 0.0, 1.0),
                owner(&hashes, &reversed, |i| a.get(i).copied(), |_| 0.0, 1.0)
            );
        }
        assert_eq!(owner(&[], &all, |i| a.get(i).copied(), |_| 0.0, 1.0), None);
    }

    #[test]
    fn owners_spread_and_removing_one_moves_only_its_prefixes() {
        let a = addrs(8);
        let all: Vec<usize> = (0..8).collect();
        let without_3: Vec<usize> = all.iter().copied().filter(|&i| i != 3).collect();
        let mut per = [0usize; 8];
        for key in 0..4000u64 {
            let hashes = [key.wrapping_mul(0x9e37_79b9_7f4a_7c15)];
            let before = owner(&hashes, &all, |i| a.get(i).copied(), |_| 0.0, 1.0).unwrap();
            per[before] += 1;
            let after = owner(&hashes, &without_3, |i| a.get(i).copied(), |_| 0.0, 1.0).unwrap();
            if before != 3 {
                assert_eq!(before, after);
            }
        }
        assert!(per.iter().all(|&c| (350..=650).contains(&c)), "{per:?}");
    }

    #[test]
    fn prefixes_differ_by_their_first_blocks_only() {
        let a = addrs(8);
        let all: Vec<usize> = (0..8).collect();
        let mut long: Vec<u64> = (0..40).collect();
        let first = owner(&long, &all, |i| a.get(i).copied(), |_| 0.0, 1.0);
        long[35] = 999; // a different question after the shared 32 blocks
        assert_eq!(
            owner(&long, &all, |i| a.get(i).copied(), |_| 0.0, 1.0),
            first
        );
    }

    #[test]
    fn the_least_loaded_owns_and_placement_stays_even() {
        let a = addrs(8);
        let all: Vec<usize> = (0..8).collect();
        let address = |i: usize| a.get(i).copied();
        // Each new prefix is placed, and adds a request where it went (as a burst of new system
        // prompts does before any finishes).
        let (mut hashed, mut placed) = ([0f64; 8], [0f64; 8]);
        for key in 0..64u64 {
            let hashes = [key.wrapping_mul(0x9e37_79b9_7f4a_7c15)];
            hashed[owner(&hashes, &all, address, |_| 0.0, 1.0).unwrap()] += 1.0;
            let o = owner(&hashes, &all, address, |i| placed[i], 0.5).unwrap();
            placed[o] += 1.0;
        }
        assert_eq!(placed, [8.0; 8], "by load");
        assert_ne!(hashed, [8.0; 8], "by hash alone");
        // Loads within the band of the least leave the hash's choice in place.
        let hashes = [7u64];
        let first = owner(&hashes, &all, address, |_| 0.0, 1.0).unwrap();
        let nudged = owner(
            &hashes,
            &all,
            address,
            |i| if i == first { 0.5 } else { 0.0 },
            1.0,
        );
        assert_eq!(nudged, Some(first));
        // One loaded past the band gives the prefix to the next by hash.
        let busy = owner(
            &hashes,
            &all,
            address,
            |i| if i == first { 3.0 } else { 0.0 },
            1.0,
        )
        .unwrap();
        assert_ne!(busy, first);
        let without_first: Vec<usize> = all.iter().copied().filter(|&i| i != first).collect();
        assert_eq!(
            owner(&hashes, &without_first, address, |_| 0.0, 1.0),
            Some(busy)
        );
    }

    #[test]
    fn a_recalled_candidate_comes_first_as_far_behind_as_its_recalled_hit() {
        let a = addrs(8);
        let all: Vec<usize> = (0..8).collect();
        let address = |i: usize| a.get(i).copied();
        let hashes = [7u64];
        let by_hash = owner(&hashes, &all, address, |_| 0.0, 0.1).unwrap();
        let sent = (by_hash + 1) % 8;
        let recalled = |i: usize| if i == sent { 0.3 } else { 0.0 };
        // Behind by more than the band, less than its recalled hit.
        let load = |i: usize| if i == sent { 0.25 } else { 0.0 };
        assert_eq!(
            owner_recalling(&hashes, &all, address, load, 0.1, recalled),
            Some(sent)
        );
        // Of two, the one with more of the prefix.
        let more = (by_hash + 2) % 8;
        let both = |i: usize| {
            [(sent, 0.3), (more, 0.5)]
                .iter()
                .find(|e| e.0 == i)
                .map_or(0.0, |e| e.1)
        };
        assert_eq!(
            owner_recalling(&hashes, &all, address, |_| 0.0, 0.1, both),
            Some(more)
        );
        // Further behind than that, it is passed over.
        let busy = |i: usize| if i == sent { 0.4 } else { 0.0 };
        assert_eq!(
            owner_recalling(&hashes, &all, address, busy, 0.1, recalled),
            Some(by_hash)
        );
    }
}
