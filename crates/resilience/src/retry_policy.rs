//! Which failed attempts are worth another try, and how long to wait first.
//!
//! The conditions and their names follow Envoy's `x-envoy-retry-on` and `x-envoy-retry-grpc-on`
//! (`connect-failure`, `refused-stream`, `reset`, `5xx`, `gateway-error`, `retriable-status-codes`,
//! and gRPC status names). [`RetryPolicy::classify`] is a pure function of what happened, so the
//! proxy's code path and the tests see exactly the same decision.
//!
//! What this module does *not* decide, because only the proxy knows it:
//!
//! - **Response already sent.** Once response headers have gone downstream the request is
//!   committed; a failure after that (a reset mid-stream) is never retried. The proxy only builds
//!   an [`Attempt`] for outcomes it can still replace.
//! - **Body replay.** A request can be sent again only if the proxy still has its body. Use
//!   [`replayable`] with the exact length when it is known (`0` for a request without a body).
//!   For a body of unknown length the proxy tees the chunks it streams upstream into a buffer
//!   bounded by `max_replay_body`; if the body ends within the cap, the buffered copy is
//!   replayable (`replayable(Some(buffered), cap)`); the moment it would exceed the cap the
//!   buffer is dropped and the request is no longer retried. The first attempt is never delayed
//!   by this: buffering happens while streaming.
//! - **Whether the fleet can afford it.** That is [`crate::RetryBudget`]'s job, asked after a
//!   positive decision here.
//!
//! A retry should go to an endpoint not tried yet: the proxy records each endpoint in a
//! [`TriedSet`] and the picker skips those while others remain.

use std::fmt;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode};
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

use crate::backoff::Backoff;

/// Envoy's default cap on a honoured `Retry-After`.
pub const DEFAULT_RETRY_AFTER_MAX: Duration = Duration::from_secs(10);
/// Default cap on a request body kept for replay.
pub const DEFAULT_MAX_REPLAY_BODY: u64 = 64 * 1024;

/// The gRPC status codes a policy can retry on (the retriable ones from the gRPC spec).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GrpcCode {
    Cancelled = 1,
    DeadlineExceeded = 4,
    ResourceExhausted = 8,
    Internal = 13,
    Unavailable = 14,
}

impl GrpcCode {
    /// The code for a numeric `grpc-status`, if it is one of the retriable ones.
    pub fn from_status(code: u32) -> Option<GrpcCode> {
        Some(match code {
            1 => GrpcCode::Cancelled,
            4 => GrpcCode::DeadlineExceeded,
            8 => GrpcCode::ResourceExhausted,
            13 => GrpcCode::Internal,
            14 => GrpcCode::Unavailable,
            _ => return None,
        })
    }

    /// The config name (`unavailable`, ...), also used as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            GrpcCode::Cancelled => "cancelled",
            GrpcCode::DeadlineExceeded => "deadline-exceeded",
            GrpcCode::ResourceExhausted => "resource-exhausted",
            GrpcCode::Internal => "internal",
            GrpcCode::Unavailable => "unavailable",
        }
    }
}

/// One `retry_on` condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryOn {
    /// The TCP/TLS connection to the upstream failed.
    ConnectFailure,
    /// The upstream refused the stream before processing it (HTTP/2 `REFUSED_STREAM`).
    RefusedStream,
    /// No response at all: reset, refused stream or per-try timeout before response headers.
    Reset,
    /// Any 5xx, plus connect failure, refused stream, reset and per-try timeout (Envoy's `5xx`).
    FiveXx,
    /// 502, 503, 504, plus connect failure, refused stream, reset and per-try timeout.
    GatewayError,
    /// Exactly 503.
    Status503,
    /// Exactly 429.
    Status429,
    /// Any status in the policy's `retriable_status_codes`.
    RetriableStatusCodes,
    /// A `grpc-status` in response headers (trailers-only response).
    Grpc(GrpcCode),
}

impl RetryOn {
    /// Every condition, in the order the docs list them.
    pub const ALL: [RetryOn; 13] = [
        RetryOn::ConnectFailure,
        RetryOn::RefusedStream,
        RetryOn::Reset,
        RetryOn::FiveXx,
        RetryOn::GatewayError,
        RetryOn::Status503,
        RetryOn::Status429,
        RetryOn::RetriableStatusCodes,
        RetryOn::Grpc(GrpcCode::Cancelled),
        RetryOn::Grpc(GrpcCode::DeadlineExceeded),
        RetryOn::Grpc(GrpcCode::ResourceExhausted),
        RetryOn::Grpc(GrpcCode::Internal),
        RetryOn::Grpc(GrpcCode::Unavailable),
    ];

    /// The config name (`connect-failure`, `5xx`, `503`, `unavailable`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            RetryOn::ConnectFailure => "connect-failure",
            RetryOn::RefusedStream => "refused-stream",
            RetryOn::Reset => "reset",
            RetryOn::FiveXx => "5xx",
            RetryOn::GatewayError => "gateway-error",
            RetryOn::Status503 => "503",
            RetryOn::Status429 => "429",
            RetryOn::RetriableStatusCodes => "retriable-status-codes",
            RetryOn::Grpc(code) => code.as_str(),
        }
    }

    /// The condition for a config name; the inverse of [`RetryOn::as_str`].
    pub fn from_name(name: &str) -> Option<RetryOn> {
        RetryOn::ALL.into_iter().find(|c| c.as_str() == name)
    }

    fn bit(self) -> u16 {
        1 << match self {
            RetryOn::ConnectFailure => 0,
            RetryOn::RefusedStream => 1,
            RetryOn::Reset => 2,
            RetryOn::FiveXx => 3,
            RetryOn::GatewayError => 4,
            RetryOn::Status503 => 5,
            RetryOn::Status429 => 6,
            RetryOn::RetriableStatusCodes => 7,
            RetryOn::Grpc(code) => 8 + grpc_slot(code),
        }
    }
}

impl fmt::Display for RetryOn {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for RetryOn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A name from [`RetryOn::ALL`]; `503` and `429` may also be written as numbers. Anything else is
/// an error naming the allowed values, so a config loader can point at it and suggest a spelling.
impl<'de> Deserialize<'de> for RetryOn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = RetryOn;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a retry condition such as `connect-failure`, `5xx` or `503`")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<RetryOn, E> {
                RetryOn::from_name(s).ok_or_else(|| E::unknown_variant(s, names()))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<RetryOn, E> {
                match n {
                    503 => Ok(RetryOn::Status503),
                    429 => Ok(RetryOn::Status429),
                    _ => Err(E::custom(format!(
                        "`{n}` is not a retry condition; only 503 and 429 are named by number, \
                         use `retriable-status-codes` for others"
                    ))),
                }
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<RetryOn, E> {
                match u64::try_from(n) {
                    Ok(n) => self.visit_u64(n),
                    Err(_) => Err(E::custom(format!("`{n}` is not a retry condition"))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// The names of [`RetryOn::ALL`], for "expected one of" in errors.
fn names() -> &'static [&'static str] {
    static NAMES: OnceLock<Vec<&'static str>> = OnceLock::new();
    NAMES.get_or_init(|| RetryOn::ALL.iter().map(|c| c.as_str()).collect())
}

fn grpc_slot(code: GrpcCode) -> u16 {
    match code {
        GrpcCode::Cancelled => 0,
        GrpcCode::DeadlineExceeded => 1,
        GrpcCode::ResourceExhausted => 2,
        GrpcCode::Internal => 3,
        GrpcCode::Unavailable => 4,
    }
}

/// What one attempt came to, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    ConnectFailure,
    RefusedStream,
    /// Reset before response headers arrived.
    Reset,
    /// The per-try timeout fired before response headers arrived.
    Timeout,
    /// Response headers arrived (and were not yet sent downstream).
    Response {
        status: StatusCode,
        /// `grpc-status` from the response headers (a trailers-only gRPC response).
        grpc_status: Option<u32>,
        /// A parsed `Retry-After`.
        retry_after: Option<Duration>,
    },
}

impl Attempt {
    /// Describes a response from its status and headers; `now` resolves an HTTP-date
    /// `Retry-After`.
    pub fn from_response(status: StatusCode, headers: &HeaderMap, now: SystemTime) -> Attempt {
        static GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
        let grpc_status = headers
            .get(&GRPC_STATUS)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        let retry_after = headers
            .get(http::header::RETRY_AFTER)
            .and_then(|v| crate::backoff::parse_retry_after(v.as_bytes(), now));
        Attempt::Response {
            status,
            grpc_status,
            retry_after,
        }
    }
}

/// Why an attempt is retried; `as_str` is the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    ConnectFailure,
    RefusedStream,
    Reset,
    Timeout,
    Status(StatusCode),
    Grpc(GrpcCode),
}

impl RetryReason {
    /// A low-cardinality label: `connect-failure`, `5xx`, `429`, `unavailable`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            RetryReason::ConnectFailure => "connect-failure",
            RetryReason::RefusedStream => "refused-stream",
            RetryReason::Reset => "reset",
            RetryReason::Timeout => "timeout",
            RetryReason::Status(s) if s == StatusCode::TOO_MANY_REQUESTS => "429",
            RetryReason::Status(s) if s.is_server_error() => "5xx",
            RetryReason::Status(_) => "status",
            RetryReason::Grpc(code) => code.as_str(),
        }
    }
}

/// A positive retry decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    pub reason: RetryReason,
    /// How long to wait before sending the retry.
    pub delay: Duration,
}

/// A route's retry policy.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Total tries including the first; 1 means no retries.
    pub attempts: u32,
    conditions: u16,
    pub retriable_status_codes: Vec<u16>,
    /// Bound on each attempt, up to response headers. `None`: only the route timeout applies.
    pub per_try_timeout: Option<Duration>,
    pub backoff: Backoff,
    /// A `Retry-After` above this is not waited for: the attempt is not retried.
    pub retry_after_max: Duration,
    /// Largest request body kept for replay.
    pub max_replay_body: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 1,
            conditions: 0,
            retriable_status_codes: Vec::new(),
            per_try_timeout: None,
            backoff: Backoff::default(),
            retry_after_max: DEFAULT_RETRY_AFTER_MAX,
            max_replay_body: DEFAULT_MAX_REPLAY_BODY,
        }
    }
}

impl RetryPolicy {
    /// A policy with `attempts` total tries on the given conditions, other settings default.
    pub fn new(attempts: u32, retry_on: impl IntoIterator<Item = RetryOn>) -> RetryPolicy {
        let mut p = RetryPolicy {
            attempts: attempts.max(1),
            ..RetryPolicy::default()
        };
        for c in retry_on {
            p.conditions |= c.bit();
        }
        p
    }

    /// Whether `condition` is enabled.
    pub fn retries_on(&self, condition: RetryOn) -> bool {
        self.conditions & condition.bit() != 0
    }

    /// The reason to retry `attempt`, or `None` if no enabled condition matches. Ignores the
    /// attempt count and `Retry-After`; see [`RetryPolicy::should_retry`].
    pub fn classify(&self, attempt: &Attempt) -> Option<RetryReason> {
        let on = |c| self.retries_on(c);
        let transport = on(RetryOn::FiveXx) || on(RetryOn::GatewayError);
        match *attempt {
            Attempt::ConnectFailure => {
                (on(RetryOn::ConnectFailure) || transport).then_some(RetryReason::ConnectFailure)
            }
            Attempt::RefusedStream => {
                (on(RetryOn::RefusedStream) || on(RetryOn::Reset) || transport)
                    .then_some(RetryReason::RefusedStream)
            }
            Attempt::Reset => (on(RetryOn::Reset) || transport).then_some(RetryReason::Reset),
            Attempt::Timeout => (on(RetryOn::Reset) || transport).then_some(RetryReason::Timeout),
            Attempt::Response {
                status,
                grpc_status,
                ..
            } => {
                if let Some(code) = grpc_status.and_then(GrpcCode::from_status) {
                    if on(RetryOn::Grpc(code)) {
                        return Some(RetryReason::Grpc(code));
                    }
                }
                let s = status.as_u16();
                let hit = (on(RetryOn::FiveXx) && status.is_server_error())
                    || (on(RetryOn::GatewayError) && matches!(s, 502..=504))
                    || (on(RetryOn::Status503) && s == 503)
                    || (on(RetryOn::Status429) && s == 429)
                    || (on(RetryOn::RetriableStatusCodes)
                        && self.retriable_status_codes.contains(&s));
                hit.then_some(RetryReason::Status(status))
            }
        }
    }

    /// Whether to retry after `tries` attempts (1 after the first) ended in `attempt`, and how
    /// long to wait: the upstream's `Retry-After` if it sent one (no retry if it is over
    /// `retry_after_max`), else jittered backoff.
    pub fn should_retry(&self, tries: u32, attempt: &Attempt) -> Option<Retry> {
        if tries >= self.attempts {
            return None;
        }
        let reason = self.classify(attempt)?;
        let delay = match attempt {
            Attempt::Response {
                retry_after: Some(after),
                ..
            } => {
                if *after > self.retry_after_max {
                    return None;
                }
                *after
            }
            _ => self.backoff.delay(tries),
        };
        Some(Retry { reason, delay })
    }
}

/// Whether a request body of `content_length` bytes can be replayed under a `cap`. `None` (length
/// unknown while streaming) is `false`: the proxy decides once its bounded copy is complete.
pub fn replayable(content_length: Option<u64>, cap: u64) -> bool {
    matches!(content_length, Some(n) if n <= cap)
}

/// Capacity of a [`TriedSet`]; more attempts than this forget the oldest.
pub const TRIED_CAPACITY: usize = 16;

/// The endpoints (indices into the pool's endpoint list) a request has tried, kept inline so it
/// costs no allocation per request.
#[derive(Debug, Clone, Copy, Default)]
pub struct TriedSet {
    slots: [u32; TRIED_CAPACITY],
    len: u8,
    next: u8,
}

impl TriedSet {
    pub fn new() -> TriedSet {
        TriedSet::default()
    }

    /// Records `endpoint`; past [`TRIED_CAPACITY`] entries the oldest is forgotten.
    pub fn insert(&mut self, endpoint: usize) {
        let e = endpoint as u32;
        if self.contains(endpoint) {
            return;
        }
        self.slots[self.next as usize] = e;
        self.next = ((self.next as usize + 1) % TRIED_CAPACITY) as u8;
        self.len = (self.len + 1).min(TRIED_CAPACITY as u8);
    }

    pub fn contains(&self, endpoint: usize) -> bool {
        self.slots[..self.len as usize].contains(&(endpoint as u32))
    }

    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether every one of `endpoints` endpoints (indices `0..endpoints`) was tried: the picker
    /// then falls back to any endpoint rather than failing the retry.
    pub fn covers(&self, endpoints: usize) -> bool {
        (0..endpoints).all(|i| self.contains(i))
    }
}

#[cfg(test)]
#[path = "retry_policy_tests.rs"]
mod tests;
