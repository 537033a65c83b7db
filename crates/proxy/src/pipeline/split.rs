//! Stage 2's draw among a route's weighted targets: by weight at random; by a hash of the user's
//! key into the weights with `sticky` (the same user, the same variant, while the weights hold);
//! or by name, when a tester's `force_backend_header` names a backend's pool.
//!
//! The hash `h` of a key places the user at `h / 2^64` along the cumulative weights. The last
//! target (the canary, by convention) owns the top of that range, so as its weight grows every
//! user already in it stays in it: the rollout only ever adds users to the canary.

use std::net::IpAddr;

use http::header::{HeaderValue, AUTHORIZATION};
use http::HeaderMap;
use switchyard_balance::{hash_key, hash_source_ip};

use crate::headers;
use crate::route_entry::{RouteEntry, StickyKey};

/// The target for one request, and a cookie to set on its response (a new user of a
/// cookie-sticky split).
pub struct Choice {
    pub index: usize,
    pub set_cookie: Option<HeaderValue>,
}

pub fn choose(route: &RouteEntry, headers: &HeaderMap, client: IpAddr) -> Choice {
    let drawn = |index| Choice {
        index,
        set_cookie: None,
    };
    if route.targets.len() == 1 {
        return drawn(0);
    }
    if let Some(index) = forced(route, headers) {
        return drawn(index);
    }
    let Some(sticky) = &route.split.sticky else {
        return drawn(random(route));
    };
    if let Some(h) = key_hash(sticky, headers, client) {
        return drawn(by_hash(route, h));
    }
    match sticky {
        // A new user: an id of its own, kept in the cookie, places it from now on.
        StickyKey::Cookie(name) => {
            let id = format!("{:016x}", fastrand::u64(..));
            Choice {
                index: by_hash(route, hash_key(id.as_bytes())),
                set_cookie: HeaderValue::from_str(&format!(
                    "{name}={id}; Path=/; Max-Age={COOKIE_MAX_AGE}; HttpOnly; SameSite=Lax"
                ))
                .ok(),
            }
        }
        _ => drawn(random(route)),
    }
}

/// A draw by weight, or by the rollout's current shares.
fn random(route: &RouteEntry) -> usize {
    match &route.rollout {
        Some(r) => r.target_at(fastrand::u32(..100)),
        None => route.pick_target(),
    }
}

/// How long a browser keeps the split's cookie: 30 days.
const COOKIE_MAX_AGE: u32 = 30 * 24 * 3600;

/// The target whose pool the tester's header names, when the route honours one.
fn forced(route: &RouteEntry, headers: &HeaderMap) -> Option<usize> {
    let value = headers.get(route.split.force.as_ref()?)?;
    route
        .targets
        .iter()
        .position(|t| t.pool.name().as_bytes() == value.as_bytes())
}

fn key_hash(key: &StickyKey, headers: &HeaderMap, client: IpAddr) -> Option<u64> {
    match key {
        StickyKey::Cookie(name) => headers::cookie(headers, name)
            .filter(|v| !v.is_empty())
            .map(|v| hash_key(v.as_bytes())),
        StickyKey::Header(name) => headers.get(name).map(|v| hash_key(v.as_bytes())),
        StickyKey::ApiKey => headers
            .get(AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .map(|token| hash_key(token.trim_ascii())),
        StickyKey::SourceIp => Some(hash_source_ip(client)),
    }
}

/// The target at `h / 2^64` of the way along the cumulative weights (or the rollout's shares).
fn by_hash(route: &RouteEntry, h: u64) -> usize {
    if let Some(r) = &route.rollout {
        return r.target_at(((u128::from(h) * 100) >> 64) as u32);
    }
    let total = route.cumulative_weights.last().copied().unwrap_or(0);
    let at = ((u128::from(h) * u128::from(total)) >> 64) as u64;
    route
        .cumulative_weights
        .partition_point(|&c| c <= at)
        .min(route.targets.len() - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(yaml_route: &str) -> std::sync::Arc<crate::gateway::Gateway> {
        let yaml = format!(
            "pools: [{{name: v1, endpoints: [127.0.0.1:1]}}, {{name: v2, endpoints: [127.0.0.1:2]}}]\nroutes:\n  - name: r\n{yaml_route}"
        );
        let config = switchyard_config::parse(&yaml, std::path::Path::new("t.yaml")).unwrap();
        crate::gateway::GatewayHandle::new(config, switchyard_telemetry::Metrics::new())
            .unwrap()
            .load()
            .clone()
    }

    fn split(w1: u32, w2: u32, sticky: &str) -> std::sync::Arc<crate::gateway::Gateway> {
        route(&format!(
            "    backends: [{{pool: v1, weight: {w1}}}, {{pool: v2, weight: {w2}}}]\n    sticky: {sticky}\n    force_backend_header: x-backend\n"
        ))
    }

    fn with(name: &str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
        h
    }

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[tokio::test]
    async fn a_user_keeps_its_variant_and_the_canary_only_gains_users() {
        let users: Vec<String> = (0..2000).map(|i| format!("user-{i}")).collect();
        let in_canary = |w: u32| -> Vec<bool> {
            let g = split(100 - w, w, "{header: x-user}");
            users
                .iter()
                .map(|u| choose(&g.routes[0], &with("x-user", u), IP).index == 1)
                .collect()
        };
        let mut before = in_canary(5);
        // Stable: the same answer every time for the same weights.
        assert_eq!(before, in_canary(5));
        for w in [25, 50, 75, 95] {
            let now = in_canary(w);
            for (u, (was, is)) in before.iter().zip(&now).enumerate() {
                assert!(!was || *is, "user {u} left the canary when it grew to {w}%");
            }
            // The split follows the weights (2,000 users: within a few points).
            let share = now.iter().filter(|c| **c).count() as f64 / users.len() as f64;
            assert!((share - f64::from(w) / 100.0).abs() < 0.04, "{w}%: {share}");
            before = now;
        }
    }

    #[tokio::test]
    async fn a_new_user_gets_a_cookie_that_keeps_it_in_place() {
        let g = split(50, 50, "{cookie: variant}");
        let r = &g.routes[0];
        let first = choose(r, &HeaderMap::new(), IP);
        let cookie = first.set_cookie.expect("a new user gets a cookie");
        let cookie = cookie.to_str().unwrap();
        assert!(
            cookie.starts_with("variant=") && cookie.contains("Path=/"),
            "{cookie}"
        );
        let value = cookie.split(';').next().unwrap();
        for _ in 0..20 {
            let again = choose(r, &with("cookie", &format!("a=b; {value}")), IP);
            assert_eq!(again.index, first.index);
            assert!(again.set_cookie.is_none());
        }
    }

    #[tokio::test]
    async fn a_tester_forces_a_backend_by_pool_name_and_api_keys_are_sticky() {
        let g = split(99, 1, "api_key");
        let r = &g.routes[0];
        assert_eq!(choose(r, &with("x-backend", "v2"), IP).index, 1);
        assert_eq!(choose(r, &with("x-backend", "v1"), IP).index, 0);
        let key = with("authorization", "Bearer sk-123");
        let first = choose(r, &key, IP).index;
        assert!((0..20).all(|_| choose(r, &key, IP).index == first));
        // Without the header the force is off; without the key the draw is by weight.
        let g = route("    backends: [{pool: v1, weight: 1}, {pool: v2, weight: 1}]\n");
        let forced = (0..64)
            .filter(|_| choose(&g.routes[0], &with("x-backend", "v2"), IP).index == 1)
            .count();
        assert!(
            forced < 64,
            "a route without force_backend_header ignores the header"
        );
    }
}
