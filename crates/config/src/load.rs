//! Reading a config file: YAML → typed [`Config`], then cross-field validation. Both passes
//! report errors with file, line, column and key path.

use std::path::Path;

use crate::error::{suggest_from_message, ConfigError, ConfigErrors};
use crate::locate::{Locations, Position};
use crate::model::Config;
use crate::validate::validate;

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

/// Parse and validate YAML `text`; `file` names it in errors.
pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigErrors> {
    let locations = Locations::index(text);
    let config = if text.trim().is_empty() {
        Config::default()
    } else {
        let de = serde_yaml::Deserializer::from_str(text);
        serde_path_to_error::deserialize::<_, Config>(de)
            .map_err(|e| ConfigErrors(vec![serde_error(e, file, &locations)]))?
    };
    let errors = validate(&config, file, &locations);
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(errors))
    }
}

fn serde_error(
    e: serde_path_to_error::Error<serde_yaml::Error>,
    file: &Path,
    locations: &Locations,
) -> ConfigError {
    let path = e.path().to_string();
    let path = if path == "." { String::new() } else { path };
    let inner = e.into_inner();
    let position = inner
        .location()
        .map(|l| Position {
            line: l.line(),
            column: l.column(),
        })
        .or_else(|| locations.find(&path));
    let message = clean_message(&inner.to_string(), &path);
    let suggestion = suggest_from_message(&message);
    ConfigError {
        file: file.to_path_buf(),
        position,
        path,
        message,
        suggestion,
    }
}

/// serde_yaml decorates messages with the path and " at line L column C"; we print those
/// ourselves, once.
fn clean_message(raw: &str, path: &str) -> String {
    let mut msg = raw;
    if let Some(i) = msg.rfind(" at line ") {
        msg = &msg[..i];
    }
    if let Some((prefix, rest)) = msg.split_once(": ") {
        if !prefix.is_empty() && path.starts_with(prefix) {
            msg = rest;
        }
    }
    msg.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(c.pools[0].balancer, crate::model::Balancer::Random);
    }

    #[test]
    fn unknown_balancer_suggests() {
        let e = err("pools:\n  - name: p\n    balancer: round_robbin\n");
        assert_eq!(e.suggestion.as_deref(), Some("round_robin"));
        assert_eq!(e.position.unwrap().line, 3);
    }
}
