//! Header filters: a `request_headers` or `response_headers` filter, its values prebuilt or
//! compiled to text and variables.

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use switchyard_config::filters::{self as config, Part};

use super::{name, Vars};
use crate::h1_codec::RawHeaders;

/// One `request_headers` or `response_headers` filter.
pub(super) struct HeaderOps {
    remove: Box<[HeaderName]>,
    set: Box<[(HeaderName, Value)]>,
    add: Box<[(HeaderName, Value)]>,
    /// A value reads a request header (`%REQ(..)%`).
    reads_request: bool,
}

/// Where header changes are written: a map, or an upstream's raw HTTP/1 head on its way to an
/// HTTP/1 client (changed in place, so it is still written as it came).
pub(super) trait Headers {
    fn remove(&mut self, name: &HeaderName);
    fn append(&mut self, name: HeaderName, value: HeaderValue);
    fn set(&mut self, name: HeaderName, value: HeaderValue) {
        self.remove(&name);
        self.append(name, value);
    }
}

impl Headers for HeaderMap {
    fn remove(&mut self, name: &HeaderName) {
        HeaderMap::remove(self, name);
    }
    fn append(&mut self, name: HeaderName, value: HeaderValue) {
        HeaderMap::append(self, name, value);
    }
    fn set(&mut self, name: HeaderName, value: HeaderValue) {
        self.insert(name, value);
    }
}

impl Headers for RawHeaders {
    fn remove(&mut self, name: &HeaderName) {
        self.remove_all(name);
    }
    fn append(&mut self, name: HeaderName, value: HeaderValue) {
        self.push(name, value);
    }
}

impl HeaderOps {
    pub(super) fn compile(h: &config::HeaderFilter) -> Result<Self, String> {
        let pairs = |m: &std::collections::BTreeMap<String, String>| {
            m.iter()
                .map(|(n, v)| Ok((name(n)?, Value::compile(v)?)))
                .collect::<Result<Box<[_]>, String>>()
        };
        let (set, add) = (pairs(&h.set)?, pairs(&h.add)?);
        let reads_request = set.iter().chain(add.iter()).any(|(_, v)| v.reads_request());
        Ok(Self {
            remove: h.remove.iter().map(|n| name(n)).collect::<Result<_, _>>()?,
            set,
            add,
            reads_request,
        })
    }

    pub(super) fn reads_request(&self) -> bool {
        self.reads_request
    }

    /// Remove, then set, then add, as Envoy orders them; `%REQ(..)%` reads `request`.
    pub(super) fn apply(&self, headers: &mut impl Headers, vars: &Vars<'_>, request: &HeaderMap) {
        for n in &self.remove {
            headers.remove(n);
        }
        for (n, v) in &self.set {
            headers.set(n.clone(), v.render(vars, request));
        }
        for (n, v) in &self.add {
            headers.append(n.clone(), v.render(vars, request));
        }
    }

    /// On the request, `%REQ(..)%` reads the headers this filter changes, as they were given to
    /// it: its values are rendered before any change.
    pub(super) fn apply_to_request(&self, headers: &mut HeaderMap, vars: &Vars<'_>) {
        if !self.reads_request {
            return self.apply(headers, vars, &HeaderMap::new());
        }
        let render = |ops: &[(HeaderName, Value)]| -> Vec<HeaderValue> {
            ops.iter().map(|(_, v)| v.render(vars, headers)).collect()
        };
        let (set, add) = (render(&self.set), render(&self.add));
        for n in &self.remove {
            headers.remove(n);
        }
        for ((n, _), v) in self.set.iter().zip(set) {
            headers.insert(n.clone(), v);
        }
        for ((n, _), v) in self.add.iter().zip(add) {
            headers.append(n.clone(), v);
        }
    }
}

/// A header value: fixed, or text and variables joined per request.
enum Value {
    Fixed(HeaderValue),
    Template(Box<[Piece]>),
}

enum Piece {
    Text(Bytes),
    RequestId,
    ClientIp,
    Route,
    Header(HeaderName),
}

impl Value {
    fn compile(s: &str) -> Result<Self, String> {
        let parts = config::parse_value(s)?;
        if let [Part::Text(t)] = parts.as_slice() {
            return HeaderValue::from_str(t)
                .map(Value::Fixed)
                .map_err(|_| format!("`{s}` is not a header value"));
        }
        let pieces = parts
            .into_iter()
            .map(|p| {
                Ok(match p {
                    Part::Text(t) => Piece::Text(Bytes::from(t)),
                    Part::RequestId => Piece::RequestId,
                    Part::ClientIp => Piece::ClientIp,
                    Part::Route => Piece::Route,
                    Part::RequestHeader(n) => Piece::Header(name(&n)?),
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Value::Template(pieces))
    }

    fn reads_request(&self) -> bool {
        matches!(self, Value::Template(p) if p.iter().any(|p| matches!(p, Piece::Header(_))))
    }

    fn render(&self, vars: &Vars<'_>, request: &HeaderMap) -> HeaderValue {
        let pieces = match self {
            Value::Fixed(v) => return v.clone(),
            Value::Template(p) => p,
        };
        let mut out = BytesMut::new();
        for p in pieces {
            match p {
                Piece::Text(t) => out.put_slice(t),
                Piece::RequestId => out.put_slice(vars.request_id.as_bytes()),
                Piece::ClientIp => out.put_slice(vars.client_ip.as_bytes()),
                Piece::Route => out.put_slice(vars.route.as_bytes()),
                Piece::Header(n) => {
                    if let Some(v) = request.get(n) {
                        out.put_slice(v.as_bytes());
                    }
                }
            }
        }
        // Every piece is a valid field value, so their concatenation is one.
        HeaderValue::from_maybe_shared(out.freeze())
            .unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}
