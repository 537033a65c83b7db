//! Reading a config file: YAML → typed [`Config`], then cross-field validation. Both passes
//! report errors with file, line, column and key path.

use std::path::Path;

use crate::error::{suggest_from_message, ConfigError, ConfigErrors};
use crate::locate::Locations;
use crate::model::Config;
use crate::validate::validate;
use crate::yaml;

/// Read, parse and validate the file at `path`.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            position: None,
            path: String::new(),
            message: format!("cannot read config file: {e}"),
            suggestion: None,
        }])
    })?;
    parse(&text, path)
}

/// Parse and validate YAML `text`; `file` names it in errors. The text is parsed once: the
/// typed config and the key-path index that validation errors use come from the same tree.
pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigErrors> {
    let root = yaml::parse(text).map_err(|e| ConfigErrors(vec![yaml_error(e, file, "")]))?;
    let Some(root) = root else {
        return Ok(Config::default());
    };
    let locations = Locations::of(&root);
    let config = serde_path_to_error::deserialize::<_, Config>(&root).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let mut error = yaml_error(e.into_inner(), file, &path);
        error.position = error.position.or_else(|| locations.find(&path));
        ConfigErrors(vec![error])
    })?;
    let errors = validate(&config, file, &locations);
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(errors))
    }
}

fn yaml_error(e: yaml::Error, file: &Path, path: &str) -> ConfigError {
    let suggestion = suggest_from_message(&e.message);
    ConfigError {
        file: file.to_path_buf(),
        position: e.position,
        path: path.to_string(),
        message: e.message,
        suggestion,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    /// Every error `text` gets, as shown to users (`c.yaml:line:col: ...`).
    pub(crate) fn errors(text: &str) -> Vec<String> {
        match super::parse(text, std::path::Path::new("c.yaml")) {
            Ok(_) => vec![],
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    use super::*;
    use crate::locate::Position;

    fn err(text: &str) -> ConfigError {
        parse(text, Path::new("t.yaml")).unwrap_err().0.remove(0)
    }

    #[test]
    fn empty_file_is_a_valid_empty_config() {
        let c = parse("", Path::new("t.yaml")).unwrap();
        assert!(c.listeners.is_empty());
    }

    #[test]
    fn typo_names_line_column_path_and_suggestion() {
        let text = "pools:\n  - name: p\n    endpoints: []\nroutes:\n  - name: r\n    pool: p\n    timout: 5s\n";
        let e = err(text);
        assert_eq!(e.position, Some(Position { line: 7, column: 5 }));
        assert_eq!(e.suggestion.as_deref(), Some("timeout"));
        assert!(e.path.starts_with("routes[0]"), "{}", e.path);
        let shown = e.to_string();
        assert!(shown.starts_with("t.yaml:7:5: routes[0]"), "{shown}");
    }

    #[test]
    fn bad_nested_value_names_its_path() {
        let text = "routes:\n  - name: r\n    pool: p\n    match:\n      headers: [1, 2]\n";
        let e = err(text);
        assert_eq!(e.path, "routes[0].match.headers");
        assert_eq!(e.position.unwrap().line, 5);
    }

    #[test]
    fn http3_needs_tls_and_names_bad_quic_settings() {
        let e = err("listeners:\n  - name: l\n    address: 127.0.0.1:0\n    http3: true\n");
        assert_eq!(e.path, "listeners[0].http3");
        assert_eq!(e.position.unwrap().line, 4);
        let text = "listeners:\n  - name: l\n    address: 127.0.0.1:0\n    tls: {cert: c, key: k}\n    http3: true\n    quic: {receive_window: 1024}\n";
        let e = parse(text, Path::new("t.yaml")).unwrap_err();
        assert!(
            e.0.iter()
                .any(|e| e.path == "listeners[0].quic.receive_window"),
            "{e}"
        );
    }

    #[test]
    fn an_http3_pool_needs_tls_and_no_active_checks() {
        let text = "pools:\n  - name: p\n    protocol: http3\n    health: {tcp: {}}\n";
        let e = parse(text, Path::new("t.yaml")).unwrap_err();
        let paths: Vec<_> = e.0.iter().map(|e| e.path.as_str()).collect();
        assert!(paths.contains(&"pools[0].protocol"), "{e}");
        assert!(paths.contains(&"pools[0].health"), "{e}");
    }

    #[test]
    fn bad_endpoint_address() {
        let text = "pools:\n  - name: p\n    endpoints: [127.0.0.1:1, nonsense]\n";
        let e = err(text);
        assert!(e.message.contains("nonsense"), "{}", e.message);
        assert_eq!(e.position.unwrap().line, 3);
    }

    #[test]
    fn bad_duration() {
        let text = "pools: [{name: p}]\nroutes:\n  - name: r\n    pool: p\n    timeout: fast\n";
        let e = err(text);
        assert_eq!(e.path, "routes[0].timeout");
        assert_eq!(e.position.unwrap().line, 5);
    }

    #[test]
    fn endpoint_map_and_balancer_forms() {
        let text = "pools:\n  - name: p\n    balancer: {kind: random}\n    endpoints:\n      - 127.0.0.1:1\n      - {address: 127.0.0.1:2, weight: 3, zone: a}\n";
        let c = parse(text, Path::new("t.yaml")).unwrap();
        assert_eq!(c.pools[0].endpoints[1].weight, 3);
        assert_eq!(c.pools[0].balancer, crate::balancer::Balancer::Random);
    }

    #[test]
    fn unknown_balancer_suggests() {
        let e = err("pools:\n  - name: p\n    balancer: round_robbin\n");
        assert_eq!(e.suggestion.as_deref(), Some("round_robin"));
        assert_eq!(e.position.unwrap().line, 3);
    }

    fn balancer(yaml: &str) -> crate::balancer::Balancer {
        let text = format!("pools:\n  - name: p\n    balancer: {yaml}\n");
        parse(&text, Path::new("t.yaml"))
            .unwrap()
            .pools
            .remove(0)
            .balancer
    }

    #[test]
    fn every_balancer_form_parses() {
        use crate::balancer::{Balancer as B, HashKey};
        use std::time::Duration;
        let ms = Duration::from_millis;
        let s = Duration::from_secs;
        assert_eq!(balancer("weighted_round_robin"), B::WeightedRoundRobin);
        assert_eq!(balancer("least_request"), B::LeastRequest { choices: 2 });
        assert_eq!(
            balancer("{kind: least_request, choices: 3}"),
            B::LeastRequest { choices: 3 }
        );
        assert_eq!(
            balancer("{kind: peak_ewma, decay: 5s, default_rtt: 2ms}"),
            B::PeakEwma {
                decay: s(5),
                default_rtt: ms(2)
            }
        );
        assert_eq!(
            balancer("peak_ewma"),
            B::PeakEwma {
                decay: s(10),
                default_rtt: ms(5)
            }
        );
        assert_eq!(
            balancer(
                "{kind: ring_hash, key: {header: X-User}, min_ring_size: 2048, load_factor: 1.5}"
            ),
            B::RingHash {
                key: HashKey::Header("x-user".into()),
                min_ring_size: 2048,
                load_factor: 1.5
            }
        );
        assert_eq!(
            balancer("{kind: ring_hash, key: {cookie: session}}"),
            B::RingHash {
                key: HashKey::Cookie("session".into()),
                min_ring_size: 1024,
                load_factor: 1.25
            }
        );
        assert_eq!(
            balancer("{key: source_ip, kind: maglev, table_size: 251}"),
            B::Maglev {
                key: HashKey::SourceIp,
                table_size: 251,
                load_factor: 1.25
            }
        );
        assert_eq!(
            balancer("{kind: weighted_least_utilization, blackout: 0s, expiration: 3m, error_penalty: 2}"),
            B::WeightedLeastUtilization { blackout: s(0), expiration: s(180), error_penalty: 2.0 }
        );
        match balancer("inference") {
            B::Inference { orca, metrics, .. } => assert!(orca && metrics == "vllm"),
            other => panic!("{other:?}"),
        }
        match balancer("{kind: inference, orca: false, scrape_interval: 20ms}") {
            B::Inference {
                orca,
                scrape_interval,
                ..
            } => assert!(!orca && scrape_interval == ms(20)),
            other => panic!("{other:?}"),
        }
        assert_eq!(balancer("maglev").hash_key(), Some(&HashKey::SourceIp));
        assert_eq!(balancer("random").hash_key(), None);
    }

    #[test]
    fn balancers_round_trip_through_serialization() {
        for yaml in [
            "round_robin",
            "{kind: least_request, choices: 4}",
            "{kind: peak_ewma, decay: 30s, default_rtt: 1ms}",
            "{kind: ring_hash, key: {header: x-user}}",
            "{kind: maglev, key: {cookie: s}, table_size: 251}",
            "weighted_least_utilization",
            "{kind: inference, orca: false}",
        ] {
            let b = balancer(yaml);
            let shown = serde_json::to_string(&b).unwrap();
            let back: crate::balancer::Balancer = crate::yaml::from_str(&shown).unwrap();
            assert_eq!(back, b, "{shown}");
            let json = serde_json::to_value(&b).unwrap();
            assert_eq!(json["kind"], b.kind(), "{json}");
        }
    }

    #[test]
    fn typo_inside_balancer_map_suggests_with_line() {
        let text = "pools:\n  - name: p\n    balancer:\n      kind: ring_hash\n      key: {header: x-user}\n      load_factr: 1.5\n";
        let e = err(text);
        assert_eq!(e.suggestion.as_deref(), Some("load_factor"), "{e}");
        assert_eq!(e.position.unwrap().line, 6, "{e}");
        assert!(e.path.starts_with("pools[0].balancer"), "{}", e.path);
    }

    #[test]
    fn key_of_another_kind_is_rejected_even_before_kind() {
        let e = err("pools:\n  - name: p\n    balancer: {table_size: 251, kind: ring_hash}\n");
        assert!(e.message.contains("unknown field `table_size`"), "{e}");
        assert!(e.message.contains("min_ring_size"), "{e}");
        assert_eq!(e.position.unwrap().line, 3);
        let e = err("pools:\n  - name: p\n    balancer: {kind: least_request, choises: 3}\n");
        assert_eq!(e.suggestion.as_deref(), Some("choices"));
    }

    #[test]
    fn bad_balancer_values() {
        for (yaml, want) in [
            ("{kind: maglev, table_size: 65536}", "prime"),
            ("{kind: ring_hash, load_factor: 0.5}", "load_factor"),
            ("{kind: least_request, choices: 0}", "choices"),
            ("{kind: peak_ewma, decay: 0s}", "decay"),
            (
                "{kind: ring_hash, key: {headr: x}}",
                "unknown field `headr`",
            ),
            (
                "{kind: ring_hash, key: client_ip}",
                "unknown variant `client_ip`",
            ),
        ] {
            let e = err(&format!("pools:\n  - name: p\n    balancer: {yaml}\n"));
            assert!(e.message.contains(want), "{yaml}: {e}");
            assert_eq!(e.position.unwrap().line, 3, "{yaml}: {e}");
        }
    }
}
