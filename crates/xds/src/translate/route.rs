//! Switchyard routes as one Envoy virtual host, first match wins in both. Matches, weighted
//! backends, timeouts, retries, mirrors and header and URL filters carry over; what only the
//! gateway does (model matching, sticky splits, rollouts, rate limits) is reported.

use envoy_types::pb::envoy::config::core::v3::{
    data_source, header_value_option::HeaderAppendAction, DataSource, HeaderValue,
    HeaderValueOption, RuntimeFractionalPercent,
};
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier,
    query_parameter_matcher::QueryParameterMatchSpecifier,
    redirect_action::{PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier},
    retry_policy::RetryBackOff,
    route::Action,
    route_action,
    route_match::PathSpecifier,
    weighted_cluster::ClusterWeight,
    DirectResponseAction, HeaderMatcher, QueryParameterMatcher, RedirectAction, RetryPolicy, Route,
    RouteAction, RouteConfiguration, RouteMatch, VirtualHost, WeightedCluster,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    string_matcher::MatchPattern, RegexMatchAndSubstitute, RegexMatcher, StringMatcher,
};
use envoy_types::pb::envoy::r#type::v3::{fractional_percent::DenominatorType, FractionalPercent};
use route_action::hash_policy::{self, PolicySpecifier};
use switchyard_config::filters::{parse_value, Filter, HeaderFilter, Part};
use switchyard_config::resilience::RetryConfig;
use switchyard_config::{Balancer, Config, HashKey, Pool, Priority, Route as Config_};
use switchyard_resilience::RetryOn;

use super::{duration, u32_value, Report};

/// Every route of the config, translated once and shared by each listener's route config.
pub fn route_configuration_parts(config: &Config, report: &mut Report) -> Vec<Route> {
    config
        .routes
        .iter()
        .map(|r| route(r, &config.pools, report))
        .collect()
}

pub fn route_configuration(name: &str, routes: &[Route]) -> RouteConfiguration {
    RouteConfiguration {
        name: name.to_string(),
        virtual_hosts: vec![VirtualHost {
            name: name.to_string(),
            domains: vec!["*".into()],
            routes: routes.to_vec(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn route(r: &Config_, pools: &[Pool], report: &mut Report) -> Route {
    let at = format!("routes[{}]", r.name);
    let defaults = default_route();
    let mut out = Route {
        name: r.name.clone(),
        r#match: Some(route_match(r, &at, report)),
        ..Default::default()
    };
    for (field, set, reason) in [
        (
            "rate_limits",
            !r.rate_limits.is_empty(),
            "the gateway's rate limits have no per-route equivalent in Envoy's route",
        ),
        (
            "sticky",
            r.sticky.is_some(),
            "sticky weighted splits are the gateway's own",
        ),
        (
            "force_backend_header",
            r.force_backend_header.is_some(),
            "Envoy's cluster_header would let any client pick any cluster",
        ),
        (
            "rollout",
            r.rollout.is_some(),
            "canary rollouts are judged and driven by the gateway",
        ),
        (
            "rewrite",
            r.rewrite.is_some(),
            "model rewrites change the request body, which Envoy's route cannot",
        ),
        (
            "hedge",
            r.hedge.is_some(),
            "Envoy hedges only on per-try timeout, not after a delay",
        ),
        (
            "priority",
            r.priority != Priority::Standard,
            "request priority drives the gateway's admission queue",
        ),
        (
            "max_request_body",
            r.max_request_body != defaults.max_request_body,
            "Envoy bounds bodies per listener buffer, not per route",
        ),
        (
            "body_read_timeout",
            r.body_read_timeout != defaults.body_read_timeout,
            "Envoy has no per-route body read timeout",
        ),
    ] {
        if set {
            report.add(format!("{at}.{field}"), reason);
        }
    }
    let mut action = RouteAction {
        timeout: Some(duration(r.timeout)),
        idle_timeout: Some(duration(r.idle_timeout)),
        ..Default::default()
    };
    if let Some(pool) = &r.pool {
        action.cluster_specifier = Some(route_action::ClusterSpecifier::Cluster(pool.clone()));
    } else if let Some(backends) = &r.backends {
        for (i, b) in backends.iter().enumerate() {
            if b.model.is_some() {
                report.add(
                    format!("{at}.backends[{i}].model"),
                    "model rewrites change the request body, which Envoy's route cannot",
                );
            }
        }
        action.cluster_specifier = Some(route_action::ClusterSpecifier::WeightedClusters(
            WeightedCluster {
                clusters: backends
                    .iter()
                    .map(|b| ClusterWeight {
                        name: b.pool.clone(),
                        weight: Some(u32_value(b.weight)),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            },
        ));
    }
    action.hash_policy = hash_policies(r, pools);
    if let Some(retry) = &r.retry {
        action.retry_policy = Some(retry_policy(retry, &format!("{at}.retry"), report));
    }
    for (i, m) in r.mirror.iter().enumerate() {
        if m.max_in_flight != default_mirror().max_in_flight {
            report.add(
                format!("{at}.mirror[{i}].max_in_flight"),
                "Envoy does not bound shadow requests in flight",
            );
        }
        action
            .request_mirror_policies
            .push(route_action::RequestMirrorPolicy {
                cluster: m.pool.clone(),
                runtime_fraction: Some(RuntimeFractionalPercent {
                    default_value: Some(FractionalPercent {
                        numerator: (m.percent * 10_000.0).round() as u32,
                        denominator: DenominatorType::Million as i32,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            });
    }
    let mut answer = None;
    for (i, f) in r.filters.iter().enumerate() {
        let fat = format!("{at}.filters[{i}]");
        match f {
            Filter::RequestHeaders(h) => {
                let (add, remove) = header_changes(h, &fat, report);
                out.request_headers_to_add.extend(add);
                out.request_headers_to_remove.extend(remove);
            }
            Filter::ResponseHeaders(h) => {
                let (add, remove) = header_changes(h, &fat, report);
                out.response_headers_to_add.extend(add);
                out.response_headers_to_remove.extend(remove);
            }
            Filter::UrlRewrite(u) => {
                if let Some(host) = &u.host {
                    action.host_rewrite_specifier = Some(
                        route_action::HostRewriteSpecifier::HostRewriteLiteral(host.clone()),
                    );
                }
                if let Some(path) = &u.path {
                    action.regex_rewrite = Some(RegexMatchAndSubstitute {
                        pattern: Some(RegexMatcher {
                            regex: "^.*$".into(),
                            ..Default::default()
                        }),
                        substitution: path.clone(),
                    });
                }
                if let Some(prefix) = &u.path_prefix {
                    action.prefix_rewrite = prefix.clone();
                }
            }
            Filter::Redirect(rd) => {
                answer = Some(Action::Redirect(RedirectAction {
                    scheme_rewrite_specifier: rd
                        .scheme
                        .clone()
                        .map(SchemeRewriteSpecifier::SchemeRedirect),
                    host_redirect: rd.host.clone().unwrap_or_default(),
                    port_redirect: rd.port.map(u32::from).unwrap_or(0),
                    path_rewrite_specifier: rd
                        .path
                        .clone()
                        .map(PathRewriteSpecifier::PathRedirect)
                        .or_else(|| {
                            rd.path_prefix
                                .clone()
                                .map(PathRewriteSpecifier::PrefixRewrite)
                        }),
                    response_code: match rd.status {
                        301 => RedirectResponseCode::MovedPermanently,
                        303 => RedirectResponseCode::SeeOther,
                        307 => RedirectResponseCode::TemporaryRedirect,
                        308 => RedirectResponseCode::PermanentRedirect,
                        _ => RedirectResponseCode::Found,
                    } as i32,
                    ..Default::default()
                }));
            }
            Filter::DirectResponse(d) => {
                for (k, v) in &d.headers {
                    out.response_headers_to_add
                        .push(header(k, &literal(v), true));
                }
                answer = Some(Action::DirectResponse(DirectResponseAction {
                    status: u32::from(d.status),
                    body: (!d.body.is_empty()).then(|| DataSource {
                        specifier: Some(data_source::Specifier::InlineString(d.body.clone())),
                        ..Default::default()
                    }),
                    ..Default::default()
                }));
            }
        }
    }
    out.action = Some(answer.unwrap_or(Action::Route(action)));
    out
}

/// Envoy hashes on what the route says, Switchyard on what the pool's balancer says: a route to
/// a `ring_hash` or `maglev` pool carries that pool's key.
fn hash_policies(r: &Config_, pools: &[Pool]) -> Vec<route_action::HashPolicy> {
    let mut out: Vec<route_action::HashPolicy> = Vec::new();
    for t in r.targets() {
        let key = pools
            .iter()
            .find(|p| p.name == t.pool)
            .and_then(|p| match &p.balancer {
                Balancer::RingHash { key, .. } | Balancer::Maglev { key, .. } => Some(key),
                _ => None,
            });
        let policy = match key {
            Some(HashKey::Header(name)) => PolicySpecifier::Header(hash_policy::Header {
                header_name: name.clone(),
                ..Default::default()
            }),
            Some(HashKey::Cookie(name)) => PolicySpecifier::Cookie(hash_policy::Cookie {
                name: name.clone(),
                ..Default::default()
            }),
            Some(HashKey::SourceIp) => {
                PolicySpecifier::ConnectionProperties(hash_policy::ConnectionProperties {
                    source_ip: true,
                })
            }
            None => continue,
        };
        let policy = route_action::HashPolicy {
            policy_specifier: Some(policy),
            terminal: false,
        };
        if !out.contains(&policy) {
            out.push(policy);
        }
    }
    out
}

fn route_match(r: &Config_, at: &str, report: &mut Report) -> RouteMatch {
    let m = &r.matcher;
    let mut out = RouteMatch::default();
    let mut paths = Vec::new();
    if let Some(p) = &m.path {
        paths.push(PathSpecifier::Path(p.clone()));
    }
    if let Some(p) = &m.path_prefix {
        paths.push(PathSpecifier::Prefix(p.clone()));
    }
    if let Some(p) = &m.path_regex {
        paths.push(PathSpecifier::SafeRegex(RegexMatcher {
            regex: p.clone(),
            ..Default::default()
        }));
    }
    if paths.len() > 1 {
        report.add(
            format!("{at}.match"),
            "Envoy matches one of path, path_prefix and path_regex; only the first set is used",
        );
    }
    out.path_specifier = Some(
        paths
            .into_iter()
            .next()
            .unwrap_or_else(|| PathSpecifier::Prefix("/".into())),
    );
    if let Some(host) = &m.host {
        // The gateway compares the host without its port and ignoring case.
        out.headers.push(header_matcher(
            ":authority",
            MatchPattern::SafeRegex(RegexMatcher {
                regex: format!("(?i)^{}(:[0-9]+)?$", regex_escape(host)),
                ..Default::default()
            }),
        ));
    }
    if let Some(method) = &m.method {
        out.headers.push(header_matcher(
            ":method",
            MatchPattern::Exact(method.clone()),
        ));
    }
    for (name, value) in &m.headers {
        out.headers
            .push(header_matcher(name, MatchPattern::Exact(value.clone())));
    }
    for (name, value) in &m.query {
        out.query_parameters.push(QueryParameterMatcher {
            name: name.clone(),
            query_parameter_match_specifier: Some(QueryParameterMatchSpecifier::StringMatch(
                StringMatcher {
                    match_pattern: Some(MatchPattern::Exact(value.clone())),
                    ..Default::default()
                },
            )),
        });
    }
    if m.model.is_some() {
        report.add(
            format!("{at}.match.model"),
            "the model is in the request body, which Envoy's route match cannot read",
        );
    }
    if m.client_cert.is_some() {
        report.add(
            format!("{at}.match.client_cert"),
            "Envoy matches client certificates per filter chain, not per route",
        );
    }
    out
}

fn header_matcher(name: &str, pattern: MatchPattern) -> HeaderMatcher {
    HeaderMatcher {
        name: name.to_string(),
        header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
            match_pattern: Some(pattern),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn retry_policy(retry: &RetryConfig, at: &str, report: &mut Report) -> RetryPolicy {
    let defaults = RetryConfig::default();
    let mut on = Vec::new();
    let mut codes: Vec<u32> = retry
        .retriable_status_codes
        .iter()
        .map(|c| u32::from(*c))
        .collect();
    for r in &retry.retry_on {
        let name = match r {
            RetryOn::Status503 => {
                codes.push(503);
                "retriable-status-codes"
            }
            RetryOn::Status429 => {
                codes.push(429);
                "retriable-status-codes"
            }
            other => other.as_str(),
        };
        if !on.contains(&name) {
            on.push(name);
        }
    }
    codes.sort_unstable();
    codes.dedup();
    if retry.retry_after_max != defaults.retry_after_max {
        report.add(
            format!("{at}.retry_after_max"),
            "Envoy's Retry-After handling is its rate_limited_retry_back_off, not a bound",
        );
    }
    if retry.max_replay_body != defaults.max_replay_body {
        report.add(
            format!("{at}.max_replay_body"),
            "Envoy buffers a retried body up to the listener's buffer limit",
        );
    }
    let per_try_timeout = match &retry.per_try_timeout {
        Some(t) => match t.fixed() {
            Some(d) => Some(duration(d)),
            None => {
                report.add(
                    format!("{at}.per_try_timeout"),
                    "`auto` per-try timeouts come from the gateway's latency histogram",
                );
                None
            }
        },
        None => None,
    };
    RetryPolicy {
        retry_on: on.join(","),
        num_retries: Some(u32_value(retry.attempts.saturating_sub(1))),
        per_try_timeout,
        retriable_status_codes: codes,
        retry_back_off: Some(RetryBackOff {
            base_interval: Some(duration(retry.backoff.base)),
            max_interval: Some(duration(retry.backoff.max)),
        }),
        ..Default::default()
    }
}

/// Envoy applies `remove` before the additions, as the gateway does; `set` replaces every
/// value of the name, `add` appends one.
fn header_changes(
    h: &HeaderFilter,
    at: &str,
    report: &mut Report,
) -> (Vec<HeaderValueOption>, Vec<String>) {
    let mut add = Vec::new();
    for (set, values) in [(true, &h.set), (false, &h.add)] {
        for (k, v) in values {
            match template(v) {
                Some(value) => add.push(header(k, &value, set)),
                None => report.add(
                    format!("{at}.{}.{k}", if set { "set" } else { "add" }),
                    "this value template has no Envoy equivalent",
                ),
            }
        }
    }
    (add, h.remove.clone())
}

fn header(name: &str, value: &str, overwrite: bool) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: name.to_string(),
            value: value.to_string(),
            ..Default::default()
        }),
        append_action: if overwrite {
            HeaderAppendAction::OverwriteIfExistsOrAdd
        } else {
            HeaderAppendAction::AppendIfExistsOrAdd
        } as i32,
        ..Default::default()
    }
}

/// A gateway header template in Envoy's substitution format (`%` is Envoy's escape).
fn template(value: &str) -> Option<String> {
    let parts = parse_value(value).ok()?;
    let mut out = String::new();
    for p in parts {
        match p {
            Part::Text(t) => out.push_str(&literal(&t)),
            Part::RequestId => out.push_str("%REQ(x-request-id)%"),
            Part::ClientIp => out.push_str("%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"),
            Part::Route => out.push_str("%ROUTE_NAME%"),
            Part::RequestHeader(name) => out.push_str(&format!("%REQ({name})%")),
        }
    }
    Some(out)
}

fn literal(text: &str) -> String {
    text.replace('%', "%%")
}

fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn default_route() -> Config_ {
    serde_json::from_value(serde_json::json!({"name": "", "pool": ""}))
        .expect("a route with defaults")
}

fn default_mirror() -> switchyard_config::Mirror {
    serde_json::from_value(serde_json::json!({"pool": ""})).expect("a mirror with defaults")
}
