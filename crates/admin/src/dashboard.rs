//! `GET /dashboard`: one page, compiled into the binary (no CDN, no build step), drawn from
//! `/stats/stream` in the browser; `/debug/requests` for its recent errors.

use http::{header, HeaderValue, Response};

use crate::body::{self, AdminBody};

const PAGE: &str = include_str!("dashboard.html");

pub fn page() -> Response<AdminBody> {
    let mut r = Response::new(body::full(PAGE));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // The page loads nothing from elsewhere; say so, so an injected script could not either.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             img-src 'self' data:; connect-src 'self'",
        ),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}
