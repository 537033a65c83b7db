//! Stage 4, request rewrite: the client's head becomes the upstream hop's. Each step is one
//! header policy; a route filter (header modifiers, URL rewrites) is one more step in
//! [`rewrite`]'s list.

use http::header::{HeaderName, HeaderValue, CONNECTION, EXPECT, HOST, TE, UPGRADE};
use http::request::Parts;
use http::Version;

use bytes::Bytes;

use super::exchange::Routed;
use super::exchange::{ClientRequest, Exchange};
use crate::body::InBody;
use crate::headers::{self, X_REQUEST_ID};

/// The upstream hop's head, and the client side of an HTTP/1 upgrade when one was asked for.
pub struct UpstreamHead {
    pub parts: Parts,
    /// The protocol asked for and the client connection's upgrade, for `Upgrade` requests.
    pub upgrade: Option<(HeaderValue, hyper::upgrade::OnUpgrade)>,
}

pub fn rewrite(
    rx: &Exchange<'_>,
    to: Routed<'_>,
    mut req: ClientRequest,
    pre_read: Option<Bytes>,
) -> (UpstreamHead, InBody) {
    let scan = &rx.scan;
    let upgrade = if req.version() < Version::HTTP_2 && scan.upgrade {
        let protocol = req.headers().get(UPGRADE).cloned();
        protocol.map(|p| (p, hyper::upgrade::on(&mut req)))
    } else {
        None
    };
    let (mut parts, body) = req.into_parts();
    // `Connection: host` would strip the one validated `Host`; it goes back after stripping.
    let kept_host = scan
        .hop_by_hop
        .then(|| parts.headers.get(HOST).cloned())
        .flatten();
    let body = match pre_read {
        Some(bytes) => InBody::Buffered(bytes),
        None => InBody::Incoming(body),
    };
    hop_by_hop(rx, &mut parts, upgrade.as_ref().map(|(p, _)| p));
    let http2 = to.pool().http2();
    if http2 && scan.trailers {
        parts
            .headers
            .insert(TE, HeaderValue::from_static("trailers"));
    }
    if let Some(h) = kept_host {
        parts.headers.insert(HOST, h);
    }
    host(rx, &mut parts);
    headers::set_forwarded(&mut parts.headers, scan, &rx.conn.client_ip, rx.conn.https);
    headers::set_client_cert(
        &mut parts.headers,
        scan,
        rx.conn.forward_client_cert,
        rx.conn.xfcc.as_ref(),
    );
    request_id(rx, &mut parts);
    if to.pool().wants_load_reports() {
        // Ask the backend for an ORCA load report on the response (gRFC A51).
        static FORMAT: HeaderName = HeaderName::from_static("endpoint-load-metrics-format");
        parts
            .headers
            .insert(FORMAT.clone(), HeaderValue::from_static("TEXT"));
    }
    if let Some(f) = to.route.filters.as_deref() {
        f.apply_request(&mut parts, &rx.filter_vars(&to.route.name));
    }
    parts.version = if http2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    (UpstreamHead { parts, upgrade }, body)
}

/// Hop-by-hop headers stay on the client's hop; an upgrade asks the upstream again itself.
fn hop_by_hop(rx: &Exchange<'_>, parts: &mut Parts, upgrade: Option<&HeaderValue>) {
    if rx.scan.hop_by_hop {
        headers::strip_present_hop_by_hop(&mut parts.headers);
    }
    if rx.scan.expect {
        // The gateway answers `Expect: 100-continue` itself when it starts reading the body.
        parts.headers.remove(EXPECT);
    }
    if let Some(protocol) = upgrade {
        parts
            .headers
            .insert(CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(UPGRADE, protocol.clone());
    }
}

/// An absolute-form request without `Host` gets one from its authority.
fn host(rx: &Exchange<'_>, parts: &mut Parts) {
    if rx.scan.host {
        return;
    }
    if let Some(a) = parts.uri.authority() {
        if let Ok(v) = HeaderValue::from_str(a.as_str()) {
            parts.headers.insert(HOST, v);
        }
    }
}

/// The request id goes upstream: a sane id of the client's is already there (the scan only keeps
/// a lone one), unless the hop-by-hop stripping could have taken it.
fn request_id(rx: &Exchange<'_>, parts: &mut Parts) {
    let scan = &rx.scan;
    if scan.request_id.is_none() || scan.hop_by_hop {
        let maybe_present = scan.request_id_present || scan.hop_by_hop;
        headers::put(
            &mut parts.headers,
            &X_REQUEST_ID,
            rx.request_id.clone(),
            maybe_present,
        );
    }
}
