//! A client's identity from the certificate it presented (already verified by rustls against
//! the listener's `client_ca`): the subject as an RFC 4514 string and the subject alternative
//! names, read once per connection for route matching, the access log and
//! `x-forwarded-client-cert`.
//!
//! Only the few fields needed are read, with a small DER walker rather than a full X.509
//! parser: the certificate has passed chain verification, but its contents are still the
//! client's bytes, so every length is checked against what remains and anything unexpected
//! leaves the field out rather than failing the connection.

use std::fmt::Write as _;
use std::net::IpAddr;

/// Who a verified client certificate names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientIdentity {
    /// RFC 4514 (`CN=client-a,O=Acme`), most specific attribute first.
    pub subject: String,
    pub uris: Vec<String>,
    pub dns: Vec<String>,
    pub emails: Vec<String>,
    pub ips: Vec<IpAddr>,
    /// SHA-256 of the certificate's DER, lowercase hex (XFCC's `Hash`).
    pub hash: String,
}

impl ClientIdentity {
    /// Read the end-entity certificate `der`; `None` when it is not a certificate this walker
    /// can read.
    pub fn from_der(der: &[u8]) -> Option<Self> {
        let (cert, _) = tlv(der, SEQUENCE)?;
        let (mut tbs, _) = tlv(cert, SEQUENCE)?;
        if tbs.first() == Some(&0xA0) {
            tbs = tlv(tbs, 0xA0)?.1;
        }
        let (_serial, rest) = tlv(tbs, 0x02)?;
        let (_sig_alg, rest) = tlv(rest, SEQUENCE)?;
        let (_issuer, rest) = tlv(rest, SEQUENCE)?;
        let (_validity, rest) = tlv(rest, SEQUENCE)?;
        let (subject, mut rest) = tlv(rest, SEQUENCE)?;
        let (_spki, r) = tlv(rest, SEQUENCE)?;
        rest = r;
        let mut id = ClientIdentity {
            subject: rfc4514(subject).unwrap_or_default(),
            hash: hex(ring::digest::digest(&ring::digest::SHA256, der).as_ref()),
            ..Self::default()
        };
        while let Some(&tag) = rest.first() {
            let (body, r) = tlv(rest, tag)?;
            rest = r;
            if tag == 0xA3 {
                id.read_extensions(body);
            }
        }
        Some(id)
    }

    fn read_extensions(&mut self, body: &[u8]) -> Option<()> {
        let (mut exts, _) = tlv(body, SEQUENCE)?;
        while !exts.is_empty() {
            let (ext, r) = tlv(exts, SEQUENCE)?;
            exts = r;
            let (oid, rest) = tlv(ext, OID)?;
            if oid != SUBJECT_ALT_NAME {
                continue;
            }
            let rest = match rest.first() {
                Some(0x01) => tlv(rest, 0x01)?.1,
                _ => rest,
            };
            let (value, _) = tlv(rest, 0x04)?;
            let (mut names, _) = tlv(value, SEQUENCE)?;
            while let Some(&tag) = names.first() {
                let (name, r) = tlv(names, tag)?;
                names = r;
                let text = || String::from_utf8_lossy(name).into_owned();
                match tag {
                    0x81 => self.emails.push(text()),
                    0x82 => self.dns.push(text()),
                    0x86 => self.uris.push(text()),
                    0x87 => match name.len() {
                        4 => self.ips.push(IpAddr::from(<[u8; 4]>::try_from(name).ok()?)),
                        16 => self
                            .ips
                            .push(IpAddr::from(<[u8; 16]>::try_from(name).ok()?)),
                        _ => {}
                    },
                    _ => {}
                }
            }
        }
        Some(())
    }

    /// Every subject alternative name as text: URIs, DNS names, emails, IPs.
    pub fn sans(&self) -> impl Iterator<Item = std::borrow::Cow<'_, str>> {
        self.uris
            .iter()
            .chain(&self.dns)
            .chain(&self.emails)
            .map(|s| std::borrow::Cow::Borrowed(s.as_str()))
            .chain(
                self.ips
                    .iter()
                    .map(|ip| std::borrow::Cow::Owned(ip.to_string())),
            )
    }

    /// This certificate as one element of `x-forwarded-client-cert` (Envoy's format:
    /// `Hash=..;Subject="..";URI=..;DNS=..`), quoting values that need it.
    pub fn xfcc_element(&self) -> String {
        let mut out = format!("Hash={}", self.hash);
        let _ = write!(out, ";Subject=\"{}\"", xfcc_escape(&self.subject));
        for uri in &self.uris {
            let _ = write!(out, ";URI={}", xfcc_value(uri));
        }
        for dns in &self.dns {
            let _ = write!(out, ";DNS={}", xfcc_value(dns));
        }
        out
    }
}

const SEQUENCE: u8 = 0x30;
const OID: u8 = 0x06;
/// 2.5.29.17
const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1D, 0x11];

/// The body of the DER element at the start of `input` if its tag is `tag`, and what follows.
fn tlv(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = input.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7F) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | b as usize);
        (len, &rest[n..])
    };
    (len <= rest.len()).then(|| rest.split_at(len))
}

/// A Name as RFC 4514: relative names last to first, `+` within one.
fn rfc4514(mut name: &[u8]) -> Option<String> {
    let mut rdns = Vec::new();
    while !name.is_empty() {
        let (set, r) = tlv(name, 0x31)?;
        name = r;
        let mut parts = Vec::new();
        let mut set = set;
        while !set.is_empty() {
            let (atv, r) = tlv(set, SEQUENCE)?;
            set = r;
            let (oid, value) = tlv(atv, OID)?;
            let (&vtag, _) = value.split_first()?;
            let (v, _) = tlv(value, vtag)?;
            let text = match vtag {
                // UTF8String, PrintableString, IA5String, TeletexString
                0x0C | 0x13 | 0x16 | 0x14 => escape_rfc4514(&String::from_utf8_lossy(v)),
                _ => format!("#{}", hex(value)),
            };
            parts.push(format!("{}={text}", attribute_name(oid)));
        }
        rdns.push(parts.join("+"));
    }
    rdns.reverse();
    Some(rdns.join(","))
}

fn attribute_name(oid: &[u8]) -> String {
    match oid {
        [0x55, 0x04, 0x03] => "CN".into(),
        [0x55, 0x04, 0x06] => "C".into(),
        [0x55, 0x04, 0x07] => "L".into(),
        [0x55, 0x04, 0x08] => "ST".into(),
        [0x55, 0x04, 0x09] => "STREET".into(),
        [0x55, 0x04, 0x0A] => "O".into(),
        [0x55, 0x04, 0x0B] => "OU".into(),
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xF2, 0x2C, 0x64, 0x01, 0x19] => "DC".into(),
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xF2, 0x2C, 0x64, 0x01, 0x01] => "UID".into(),
        other => dotted_oid(other),
    }
}

fn dotted_oid(oid: &[u8]) -> String {
    let mut out = String::new();
    let mut value: u64 = 0;
    for (i, &b) in oid.iter().enumerate() {
        value = (value << 7) | u64::from(b & 0x7F);
        if b & 0x80 != 0 {
            continue;
        }
        if out.is_empty() && i < oid.len() {
            let first = (value / 40).min(2);
            let _ = write!(out, "{first}.{}", value - first * 40);
        } else {
            let _ = write!(out, ".{value}");
        }
        value = 0;
    }
    out
}

fn escape_rfc4514(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let last = v.chars().count().saturating_sub(1);
    for (i, c) in v.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        if c.is_control() {
            let _ = write!(out, "\\{:02X}", c as u32 & 0xFF);
        } else {
            out.push(c);
        }
    }
    out
}

/// Inside XFCC's double quotes: `"` and `\` escaped.
fn xfcc_escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"")
}

/// A bare XFCC value, quoted when it holds a separator.
fn xfcc_value(v: &str) -> String {
    if v.contains([',', ';', '=', '"']) {
        format!("\"{}\"", xfcc_escape(v))
    } else {
        v.to_string()
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(subject: &[(rcgen::DnType, &str)], sans: Vec<rcgen::SanType>) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::default();
        let mut dn = rcgen::DistinguishedName::new();
        for (t, v) in subject {
            dn.push(t.clone(), *v);
        }
        params.distinguished_name = dn;
        params.subject_alt_names = sans;
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn reads_subject_and_names() {
        let der = cert(
            &[
                (rcgen::DnType::OrganizationName, "Acme, Inc"),
                (rcgen::DnType::CommonName, "client-a"),
            ],
            vec![
                rcgen::SanType::URI("spiffe://prod/ns/a/sa/x".try_into().unwrap()),
                rcgen::SanType::DnsName("a.example".try_into().unwrap()),
                rcgen::SanType::IpAddress("10.0.0.7".parse().unwrap()),
                rcgen::SanType::Rfc822Name("ops@example.com".try_into().unwrap()),
            ],
        );
        let id = ClientIdentity::from_der(&der).expect("parsed");
        assert_eq!(id.subject, "CN=client-a,O=Acme\\, Inc");
        assert_eq!(id.uris, vec!["spiffe://prod/ns/a/sa/x"]);
        assert_eq!(id.dns, vec!["a.example"]);
        assert_eq!(id.emails, vec!["ops@example.com"]);
        assert_eq!(id.ips, vec!["10.0.0.7".parse::<IpAddr>().unwrap()]);
        assert_eq!(id.hash.len(), 64);
        let sans: Vec<_> = id.sans().map(|s| s.into_owned()).collect();
        assert_eq!(
            sans,
            [
                "spiffe://prod/ns/a/sa/x",
                "a.example",
                "ops@example.com",
                "10.0.0.7"
            ]
        );
        let x = id.xfcc_element();
        assert!(
            x.ends_with(";Subject=\"CN=client-a,O=Acme\\\\, Inc\";URI=spiffe://prod/ns/a/sa/x;DNS=a.example"),
            "{x}"
        );
    }

    #[test]
    fn garbage_and_truncation_never_panic() {
        let der = cert(&[(rcgen::DnType::CommonName, "x")], vec![]);
        for cut in 0..der.len() {
            let _ = ClientIdentity::from_der(&der[..cut]);
        }
        let mut flipped = der.clone();
        for i in 0..flipped.len() {
            flipped[i] ^= 0xFF;
            let _ = ClientIdentity::from_der(&flipped);
            flipped[i] ^= 0xFF;
        }
        assert!(ClientIdentity::from_der(&[0x30, 0x84, 0xFF, 0xFF, 0xFF, 0xFF]).is_none());
        assert_eq!(ClientIdentity::from_der(&der).unwrap().subject, "CN=x");
    }

    #[test]
    fn unknown_attributes_are_dotted() {
        assert_eq!(
            dotted_oid(&[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D]),
            "1.2.840.113549"
        );
    }
}
