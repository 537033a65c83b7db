//! A pool's `tls` as Envoy's `UpstreamTlsContext`: the CA bundle, the client certificate for
//! mTLS, ALPN, and SNI with the certificate's DNS name checked against it.

use envoy_types::pb::envoy::config::core::v3::{
    data_source, transport_socket, DataSource, TransportSocket,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context::ValidationContextType, subject_alt_name_matcher::SanType,
    CertificateValidationContext, CommonTlsContext, SubjectAltNameMatcher, TlsCertificate,
    UpstreamTlsContext,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher::MatchPattern, StringMatcher};
use switchyard_config::{Protocol, UpstreamTls};

use super::{any, Report};

fn file(p: &std::path::Path) -> DataSource {
    DataSource {
        specifier: Some(data_source::Specifier::Filename(p.display().to_string())),
        ..Default::default()
    }
}

pub fn transport_socket(
    t: &UpstreamTls,
    protocol: Protocol,
    at: &str,
    report: &mut Report,
) -> TransportSocket {
    let alpn = t.alpn.clone().unwrap_or_else(|| {
        vec![match protocol {
            Protocol::Http2 => "h2".into(),
            _ => "http/1.1".into(),
        }]
    });
    let validation = t.verify.then(|| {
        let names = match &t.sni {
            Some(sni) => vec![SubjectAltNameMatcher {
                san_type: SanType::Dns as i32,
                matcher: Some(StringMatcher {
                    match_pattern: Some(MatchPattern::Exact(sni.clone())),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            None => {
                report.add(
                    format!("{at}.tls.sni"),
                    "without `sni` the gateway checks each endpoint's IP against the certificate; Envoy checks the chain only",
                );
                Vec::new()
            }
        };
        ValidationContextType::ValidationContext(CertificateValidationContext {
            trusted_ca: t.ca.as_deref().map(file),
            match_typed_subject_alt_names: names,
            ..Default::default()
        })
    });
    let certificates = match (&t.cert, &t.key) {
        (Some(cert), Some(key)) => vec![TlsCertificate {
            certificate_chain: Some(file(cert)),
            private_key: Some(file(key)),
            ..Default::default()
        }],
        _ => Vec::new(),
    };
    let context = UpstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificates: certificates,
            alpn_protocols: alpn,
            validation_context_type: validation,
            ..Default::default()
        }),
        sni: t.sni.clone().unwrap_or_default(),
        ..Default::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(&context))),
    }
}
