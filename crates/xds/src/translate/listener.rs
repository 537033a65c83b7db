//! A Switchyard listener as an Envoy listener: one HTTP connection manager whose routes come by
//! RDS under the listener's own name, with the listener's bounds and timeouts.

use envoy_types::pb::envoy::config::core::v3::{
    data_source, transport_socket, DataSource, Http2ProtocolOptions, HttpProtocolOptions,
    KeepaliveSettings, TransportSocket,
};
use envoy_types::pb::envoy::config::listener::v3::{filter, Filter, FilterChain, Listener};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::{
        CodecType, ForwardClientCertDetails, PathWithEscapedSlashesAction, RouteSpecifier,
    },
    http_filter, HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context::ValidationContextType, CertificateValidationContext, CommonTlsContext,
    DownstreamTlsContext, TlsCertificate,
};
use switchyard_config::{EscapedSlashes, ForwardClientCert, Listener as Config};

use super::{ads_source, any, bool_value, duration, socket_address, u32_value, Report};

/// An HTTP listener (a `protocol: tcp` one is [`super::tcp_listener`]'s).
pub fn listener(l: &Config, report: &mut Report) -> Listener {
    let at = format!("listeners[{}]", l.name);
    if l.http3 {
        report.add(
            format!("{at}.http3"),
            "Envoy's HTTP/3 needs a QUIC listener of its own; not translated",
        );
    }
    if l.access_log {
        report.add(
            format!("{at}.access_log"),
            "Envoy's access log format differs; configure it in Envoy",
        );
    }
    if !l.trusted_headers.is_empty() {
        report.add(
            format!("{at}.trusted_headers"),
            "gateway control headers have no meaning to Envoy",
        );
    }
    let hcm = HttpConnectionManager {
        codec_type: CodecType::Auto as i32,
        stat_prefix: l.name.clone(),
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: Some(ads_source()),
            route_config_name: l.name.clone(),
        })),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(
                any(&Router::default()),
            )),
            ..Default::default()
        }],
        max_request_headers_kb: Some(u32_value(
            u32::try_from(l.max_header_bytes.div_ceil(1024)).unwrap_or(u32::MAX),
        )),
        request_headers_timeout: Some(duration(l.header_read_timeout)),
        common_http_protocol_options: Some(HttpProtocolOptions {
            idle_timeout: Some(duration(l.idle_timeout)),
            max_headers_count: Some(u32_value(u32::try_from(l.max_headers).unwrap_or(u32::MAX))),
            ..Default::default()
        }),
        http2_protocol_options: Some(Http2ProtocolOptions {
            max_concurrent_streams: Some(u32_value(l.max_concurrent_streams)),
            connection_keepalive: (!l.http2_keepalive_interval.is_zero()).then(|| {
                KeepaliveSettings {
                    interval: Some(duration(l.http2_keepalive_interval)),
                    timeout: Some(duration(l.http2_keepalive_timeout)),
                    ..Default::default()
                }
            }),
            ..Default::default()
        }),
        normalize_path: Some(bool_value(l.path_normalization.normalize)),
        merge_slashes: l.path_normalization.merge_slashes,
        path_with_escaped_slashes_action: match l.path_normalization.escaped_slashes {
            EscapedSlashes::Reject => PathWithEscapedSlashesAction::RejectRequest,
            EscapedSlashes::Keep => PathWithEscapedSlashesAction::KeepUnchanged,
            EscapedSlashes::Unescape => PathWithEscapedSlashesAction::UnescapeAndForward,
        } as i32,
        forward_client_cert_details: match l.forward_client_cert {
            ForwardClientCert::Sanitize => ForwardClientCertDetails::Sanitize,
            ForwardClientCert::AppendForward => ForwardClientCertDetails::AppendForward,
            ForwardClientCert::SanitizeSet => ForwardClientCertDetails::SanitizeSet,
        } as i32,
        ..Default::default()
    };
    let transport_socket = l.tls.as_ref().map(|tls| {
        let file = |p: &std::path::Path| DataSource {
            specifier: Some(data_source::Specifier::Filename(p.display().to_string())),
            ..Default::default()
        };
        let context = DownstreamTlsContext {
            common_tls_context: Some(CommonTlsContext {
                tls_certificates: vec![TlsCertificate {
                    certificate_chain: Some(file(&tls.cert)),
                    private_key: Some(file(&tls.key)),
                    ..Default::default()
                }],
                alpn_protocols: vec!["h2".into(), "http/1.1".into()],
                validation_context_type: tls.client_ca.as_deref().map(|ca| {
                    ValidationContextType::ValidationContext(CertificateValidationContext {
                        trusted_ca: Some(file(ca)),
                        ..Default::default()
                    })
                }),
                ..Default::default()
            }),
            require_client_certificate: Some(bool_value(tls.require_client_cert)),
            ..Default::default()
        };
        TransportSocket {
            name: "envoy.transport_sockets.tls".into(),
            config_type: Some(transport_socket::ConfigType::TypedConfig(any(&context))),
        }
    });
    Listener {
        name: l.name.clone(),
        address: Some(socket_address(l.address)),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(filter::ConfigType::TypedConfig(any(&hcm))),
            }],
            transport_socket,
            ..Default::default()
        }],
        ..Default::default()
    }
}
