//! Certificates made for a test with rcgen: a CA, server certificates for loopback (by IP SAN
//! and by name), expired ones, client certificates with SPIFFE-style URI SANs; written as PEM
//! files in the test's directory.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
};

/// A certificate authority for one test.
pub struct Ca {
    pub cert: rcgen::Certificate,
    key: KeyPair,
    /// The CA certificate's PEM file.
    pub pem: PathBuf,
}

/// A certificate and key written as PEM files.
#[derive(Clone)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What a leaf certificate says.
pub struct Leaf<'a> {
    pub cn: &'a str,
    pub dns: &'a [&'a str],
    pub ips: &'a [IpAddr],
    pub uris: &'a [&'a str],
    pub client: bool,
    pub expired: bool,
}

impl Default for Leaf<'_> {
    fn default() -> Self {
        Leaf {
            cn: "server",
            dns: &[],
            ips: &[],
            uris: &[],
            client: false,
            expired: false,
        }
    }
}

impl Ca {
    pub fn new(dir: &Path, name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        let pem = dir.join(format!("{name}.ca.pem"));
        std::fs::write(&pem, cert.pem()).unwrap();
        Ca { cert, key, pem }
    }

    /// Issue a leaf certificate, written to `<file>.pem` and `<file>.key` in `dir`.
    pub fn issue(&self, dir: &Path, file: &str, leaf: Leaf<'_>) -> Issued {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, leaf.cn);
        for d in leaf.dns {
            params
                .subject_alt_names
                .push(SanType::DnsName((*d).try_into().unwrap()));
        }
        for ip in leaf.ips {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        for u in leaf.uris {
            params
                .subject_alt_names
                .push(SanType::URI((*u).try_into().unwrap()));
        }
        params.extended_key_usages = vec![if leaf.client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        if leaf.expired {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let issued = Issued {
            cert: dir.join(format!("{file}.pem")),
            key: dir.join(format!("{file}.key")),
        };
        std::fs::write(&issued.cert, cert.pem()).unwrap();
        std::fs::write(&issued.key, key.serialize_pem()).unwrap();
        issued
    }
}

/// The loopback address, for IP SANs.
pub fn loopback() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}
