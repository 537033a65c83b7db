//! The PROXY protocol version 2 header (HAProxy's `send-proxy-v2`): the first bytes an endpoint
//! of a `proxy_protocol: v2` pool reads, telling it the client's address that the TCP hop hides.
//! The binary form, not v1's text line: fixed offsets an endpoint parses without scanning, and
//! the form Envoy, NGINX and HAProxy all accept. Layout (spec section 2.2): the 12-byte signature,
//! version and command (0x21: v2, PROXY), family and transport (0x11 TCP over IPv4, 0x21 over
//! IPv6), the length of what follows, then source address, destination address, source port,
//! destination port, all in network order. No TLVs are sent.

use std::net::{IpAddr, SocketAddr};

pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The header for a connection from `client` that arrived at `local` (the listener's address as
/// the client addressed it). A client and local address of different families (an IPv4 client on
/// a dual-stack socket) are both written as IPv6, mapping the IPv4 one.
pub fn encode(client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + 36);
    out.extend_from_slice(&SIGNATURE);
    out.push(0x21);
    match (client.ip(), local.ip()) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            out.push(0x11);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&src.octets());
            out.extend_from_slice(&dst.octets());
        }
        (src, dst) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out.push(0x21);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(src).octets());
            out.extend_from_slice(&v6(dst).octets());
        }
    }
    out.extend_from_slice(&client.port().to_be_bytes());
    out.extend_from_slice(&local.port().to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_matches_the_spec_layout() {
        let h = encode(
            "192.0.2.1:51000".parse().unwrap(),
            "198.51.100.7:6379".parse().unwrap(),
        );
        let mut want = b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a".to_vec();
        want.extend_from_slice(&[0x21, 0x11, 0x00, 0x0c]);
        want.extend_from_slice(&[192, 0, 2, 1, 198, 51, 100, 7]);
        want.extend_from_slice(&51000u16.to_be_bytes());
        want.extend_from_slice(&6379u16.to_be_bytes());
        assert_eq!(h, want);
        assert_eq!(h.len(), 28);
    }

    #[test]
    fn ipv6_and_mixed_families_are_written_as_ipv6() {
        let h = encode(
            "[2001:db8::1]:1234".parse().unwrap(),
            "[::1]:80".parse().unwrap(),
        );
        assert_eq!(&h[12..16], &[0x21, 0x21, 0x00, 0x24]);
        assert_eq!(h.len(), 16 + 36);
        assert_eq!(
            &h[16..32],
            &"2001:db8::1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
        );
        assert_eq!(&h[48..52], &[0x04, 0xd2, 0x00, 0x50]);
        let mixed = encode("10.0.0.1:5".parse().unwrap(), "[::1]:80".parse().unwrap());
        assert_eq!(mixed[13], 0x21);
        assert_eq!(
            &mixed[16..32],
            &"::ffff:10.0.0.1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
        );
    }
}
