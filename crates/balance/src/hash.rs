//! The request-key hash shared by the proxy (to hash a header, cookie or source IP) and the
//! consistent-hashing pickers (to place virtual nodes). It must stay stable across releases and
//! processes: a change would remap every key at the next deploy, so the test pins its outputs.
//!
//! It is a folded-multiply hash in the style of wyhash/foldhash: 8 bytes per multiply, then a
//! final avalanche. Not DoS-resistant, and it need not be: bounded load caps what a chosen key
//! can do to one endpoint.

use std::net::IpAddr;

const P0: u64 = 0xa076_1d64_78bd_642f;
const P1: u64 = 0xe703_7ed1_a0b4_28db;
const P2: u64 = 0x8ebc_6af0_9c88_c6e3;

/// Multiply into 128 bits and fold the halves together.
#[inline]
pub(crate) fn fold_mul(a: u64, b: u64) -> u64 {
    let full = u128::from(a) * u128::from(b);
    (full as u64) ^ ((full >> 64) as u64)
}

/// Hash a request key (header value, cookie value, source IP bytes) to a `u64`. Stable: the
/// same bytes give the same value in every process and release.
pub fn hash_key(bytes: &[u8]) -> u64 {
    let mut h = P2 ^ (bytes.len() as u64).wrapping_mul(P1);
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let word = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        h = fold_mul(h ^ word, P0);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut buf = [0u8; 8];
        buf[..rest.len()].copy_from_slice(rest);
        h = fold_mul(h ^ u64::from_le_bytes(buf), P1);
    }
    let h = fold_mul(h, P2);
    h ^ (h >> 29)
}

/// Hash a client address for `key: source_ip`. IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`,
/// seen on dual-stack listeners) hash as the IPv4 address, so one client keeps one key.
pub fn hash_source_ip(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => hash_key(&v4.octets()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => hash_key(&v4.octets()),
            None => hash_key(&v6.octets()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn outputs_are_pinned() {
        // A change here remaps every user's keys: only ever change it on purpose.
        let got: Vec<u64> = [
            &b""[..],
            b"a",
            b"user-42",
            b"10.0.0.1",
            b"0123456789abcdefXYZ",
        ]
        .iter()
        .map(|b| hash_key(b))
        .collect();
        assert_eq!(got, PINNED.to_vec());
    }

    const PINNED: [u64; 5] = [
        6472359079604495939,
        17757876763676099817,
        2976634244751176853,
        5882968139251424783,
        992584434981642777,
    ];

    #[test]
    fn mapped_ipv6_hashes_as_ipv4() {
        let v4: IpAddr = "10.1.2.3".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(hash_source_ip(v4), hash_source_ip(mapped));
        assert_ne!(
            hash_source_ip(v4),
            hash_source_ip("10.1.2.4".parse().unwrap())
        );
    }

    #[test]
    fn low_bits_are_spread() {
        let mut buckets = [0u32; 16];
        for i in 0..16_000u32 {
            buckets[(hash_key(format!("user-{i}").as_bytes()) % 16) as usize] += 1;
        }
        for b in buckets {
            assert!((800..1200).contains(&b), "{buckets:?}");
        }
    }

    proptest! {
        #[test]
        fn one_byte_change_changes_the_hash(mut bytes in prop::collection::vec(any::<u8>(), 1..64), i in any::<prop::sample::Index>()) {
            let before = hash_key(&bytes);
            let j = i.index(bytes.len());
            bytes[j] ^= 1;
            prop_assert_ne!(before, hash_key(&bytes));
        }
    }
}
