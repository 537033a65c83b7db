//! How a config is laid out in etcd, and how errors find their way back to the key they are in.
//!
//! Either one key holds the whole YAML document (`/switchyard/prod`), or the keys under it hold
//! its parts (`/switchyard/prod/listeners`, `/switchyard/prod/routes`, `/switchyard/prod/pools`,
//! ...), each a YAML mapping of one or more top-level sections. The parts are joined in key
//! order into one document and parsed with the same loader as a local file, so the checks are
//! the same; an error is then moved back to the key and the line within it that it came from.
//! A section set in two parts is a duplicate key in the joined document, and refused as one.

use std::path::PathBuf;

use switchyard_config::{Config, ConfigError, ConfigErrors};

/// The most config text read from etcd (its own default limit is 1.5 MiB per value).
pub const MAX_CONFIG_BYTES: usize = 8 << 20;

/// One key's value as read from etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: Vec<u8>,
}

/// The config text of one revision, and where each key's lines are in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assembled {
    pub text: String,
    /// (key, first line of its text in `text`, 1-based; lines it spans).
    pieces: Vec<(String, usize, usize)>,
}

/// Keys that belong to the config at `root`: the key itself or one under `root/`. A range read
/// of `root` also returns `root-x` or `root.x`; those belong to another config.
pub fn belongs(root: &str, key: &str) -> bool {
    key == root
        || key
            .strip_prefix(root)
            .is_some_and(|rest| rest.starts_with('/') && rest.len() > 1)
}

/// The end of the etcd range that holds `root` and every key under `root/`: `root` with its
/// last byte incremented past `/`, so the range also covers `root-x`, which [`belongs`] filters.
pub fn range_end(root: &str) -> Vec<u8> {
    let mut end = root.as_bytes().to_vec();
    end.push(b'/' + 1);
    end
}

/// Join the entries of one revision into one document. `label` names a key in errors.
pub fn assemble(
    root: &str,
    mut entries: Vec<Entry>,
    label: impl Fn(&str) -> String,
) -> Result<Assembled, String> {
    entries.retain(|e| belongs(root, &e.key));
    entries.sort_by(|a, b| a.key.cmp(&b.key));
    if entries.is_empty() {
        return Err(format!(
            "{}: no config: neither this key nor keys under it are set",
            label(root)
        ));
    }
    if entries.len() > 1 && entries[0].key == root {
        return Err(format!(
            "{}: both this key and keys under `{root}/` are set; keep the whole config in one key \
             or split it over keys under it, not both",
            label(root)
        ));
    }
    let total: usize = entries.iter().map(|e| e.value.len()).sum();
    if total > MAX_CONFIG_BYTES {
        return Err(format!(
            "{}: the config is {total} bytes, over the limit of {MAX_CONFIG_BYTES}",
            label(root)
        ));
    }
    let mut text = String::with_capacity(total + entries.len());
    let mut pieces = Vec::with_capacity(entries.len());
    let mut line = 1;
    for Entry { key, value } in entries {
        let part = String::from_utf8(value)
            .map_err(|e| format!("{}: not UTF-8 text: {e}", label(&key)))?;
        text.push_str(&part);
        if !part.ends_with('\n') {
            text.push('\n');
        }
        let lines = part.lines().count().max(1);
        pieces.push((key, line, lines));
        line += lines;
    }
    Ok(Assembled { text, pieces })
}

impl Assembled {
    /// Parse and validate; each error names the key and the line within that key's text.
    pub fn parse(&self, label: impl Fn(&str) -> String) -> Result<Config, ConfigErrors> {
        let whole = label(&self.pieces[0].0);
        switchyard_config::parse(&self.text, std::path::Path::new(&whole)).map_err(|errors| {
            ConfigErrors(
                errors
                    .0
                    .into_iter()
                    .map(|e| self.relocate(e, &label))
                    .collect(),
            )
        })
    }

    fn relocate(&self, mut error: ConfigError, label: &impl Fn(&str) -> String) -> ConfigError {
        let Some(position) = error.position.as_mut() else {
            return error;
        };
        let found = self
            .pieces
            .iter()
            .find(|(_, first, lines)| position.line >= *first && position.line < first + lines);
        // A position past the last line (an unexpected end of the document) is in the last key.
        let (key, first, _) = found.unwrap_or_else(|| &self.pieces[self.pieces.len() - 1]);
        position.line = position.line + 1 - first;
        error.file = PathBuf::from(label(key));
        error
    }

    /// The keys this config was assembled from, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.pieces.iter().map(|(k, _, _)| k.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, value: &str) -> Entry {
        Entry {
            key: key.into(),
            value: value.into(),
        }
    }

    fn label(key: &str) -> String {
        format!("etcd://e:2379{key}")
    }

    const POOLS: &str = "pools:\n  - name: p\n    endpoints: [127.0.0.1:9]\n";

    #[test]
    fn parts_join_in_key_order_and_errors_name_their_key_and_line() {
        let routes = "routes:\n  - name: r\n    pool: p\n    timout: 1s\n";
        let entries = vec![
            entry("/sy/prod/routes", routes),
            entry("/sy/prod/pools", POOLS),
            entry("/sy/production", "ignored: 1\n"),
        ];
        let doc = assemble("/sy/prod", entries, label).unwrap();
        assert_eq!(
            doc.keys().collect::<Vec<_>>(),
            ["/sy/prod/pools", "/sy/prod/routes"]
        );
        let errors = doc.parse(label).unwrap_err();
        let e = &errors.0[0];
        assert_eq!(e.file, PathBuf::from("etcd://e:2379/sy/prod/routes"));
        assert_eq!(e.position.unwrap().line, 4, "{errors}");
        assert!(e.to_string().contains("timeout"), "{errors}");
    }

    #[test]
    fn a_whole_config_in_one_key_parses() {
        let doc = assemble("/sy/prod", vec![entry("/sy/prod", POOLS)], label).unwrap();
        let config = doc.parse(label).unwrap();
        assert_eq!(config.pools[0].name, "p");
    }

    #[test]
    fn a_section_in_two_keys_is_refused() {
        let entries = vec![entry("/sy/a/x", POOLS), entry("/sy/a/y", POOLS)];
        let doc = assemble("/sy/a", entries, label).unwrap();
        let errors = doc.parse(label).unwrap_err().to_string();
        assert!(errors.contains("/sy/a/y"), "{errors}");
    }

    #[test]
    fn refuses_empty_mixed_oversized_and_binary() {
        assert!(assemble("/k", vec![entry("/k2", POOLS)], label).is_err());
        let mixed = vec![entry("/k", POOLS), entry("/k/pools", POOLS)];
        assert!(assemble("/k", mixed, label).unwrap_err().contains("both"));
        let big = Entry {
            key: "/k".into(),
            value: vec![b'#'; MAX_CONFIG_BYTES + 1],
        };
        assert!(assemble("/k", vec![big], label)
            .unwrap_err()
            .contains("limit"));
        let binary = Entry {
            key: "/k".into(),
            value: vec![0xff, 0xfe],
        };
        assert!(assemble("/k", vec![binary], label)
            .unwrap_err()
            .contains("UTF-8"));
    }

    #[test]
    fn the_range_covers_the_key_and_its_children_only_through_belongs() {
        let end = range_end("/sy/prod");
        for key in ["/sy/prod", "/sy/prod/a", "/sy/prod-x", "/sy/prod.x"] {
            assert!(key.as_bytes() < end.as_slice(), "{key}");
        }
        assert!(belongs("/sy/prod", "/sy/prod/a"));
        assert!(!belongs("/sy/prod", "/sy/prod-x"));
        assert!(!belongs("/sy/prod", "/sy/prod/"));
    }
}
