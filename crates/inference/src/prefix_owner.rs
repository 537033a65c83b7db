//! Who owns a prefix nobody holds yet: rendezvous hashing, so that several gateway replicas
//! send a new prefix to the same server without talking to each other.
//!
//! Each replica's approximate prefix index learns only from its own picks, and even the precise
//! index from KV events learns of a prefix only after its prefill has stored blocks. Until then
//! a prefix seen by three replicas at once would be scattered over three servers by their load
//! scores, each computing it again. The inference Extension runs a single active picker for this
//! reason (GAIE #1406). Here, a prefix that no candidate is known to hold is given a virtual
//! share on its owner (`weights.prefix_owner`, half a full hit by default): the candidate with
//! the highest hash of (prefix, endpoint address), the same on every replica. Only candidates count (saturated endpoints are not), and the share is
//! one scorer input among the load terms, so an owner much busier than the others still loses:
//! the load stays bounded. Removing an endpoint moves only the prefixes it owned.

use std::net::SocketAddr;

/// Prefixes are told apart by their first this-many blocks (512 tokens at 16 per block; the
/// whole prompt when shorter): long enough to separate system prompts, short enough that a
/// user's question after a long one does not.
pub const OWNER_DEPTH_BLOCKS: usize = 32;

/// The owner of the prefix `block_hashes` among `candidates`, whose addresses `address` gives.
pub fn owner(
    block_hashes: &[u64],
    candidates: &[usize],
    address: impl Fn(usize) -> Option<SocketAddr>,
) -> Option<usize> {
    let key = *block_hashes.get(block_hashes.len().min(OWNER_DEPTH_BLOCKS).checked_sub(1)?)?;
    candidates
        .iter()
        .copied()
        .max_by_key(|&i| address(i).map_or(0, |a| weight(key, a)))
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
                owner(&hashes, &all, |i| a.get(i).copied()),
                owner(&hashes, &reversed, |i| a.get(i).copied())
            );
        }
        assert_eq!(owner(&[], &all, |i| a.get(i).copied()), None);
    }

    #[test]
    fn owners_spread_and_removing_one_moves_only_its_prefixes() {
        let a = addrs(8);
        let all: Vec<usize> = (0..8).collect();
        let without_3: Vec<usize> = all.iter().copied().filter(|&i| i != 3).collect();
        let mut per = [0usize; 8];
        for key in 0..4000u64 {
            let hashes = [key.wrapping_mul(0x9e37_79b9_7f4a_7c15)];
            let before = owner(&hashes, &all, |i| a.get(i).copied()).unwrap();
            per[before] += 1;
            let after = owner(&hashes, &without_3, |i| a.get(i).copied()).unwrap();
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
        let first = owner(&long, &all, |i| a.get(i).copied());
        long[35] = 999; // a different question after the shared 32 blocks
        assert_eq!(owner(&long, &all, |i| a.get(i).copied()), first);
    }
}
