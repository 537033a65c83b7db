//! Maps key paths (`routes[1].match.headers`) to where they sit in the YAML text, so that errors
//! found after parsing (a route naming a missing pool, a duplicate name) still point at a line.
//! The index is built from the tree [`crate::yaml`] parsed, not from a second parse.

use std::collections::HashMap;

use crate::yaml::{Node, Value};

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

/// Key path → position of the key (or, for sequence items, of the item).
#[derive(Debug, Default)]
pub struct Locations {
    map: HashMap<String, Position>,
}

impl Locations {
    /// Index a parsed YAML document (the same tree the config is read from).
    pub fn of(root: &Node) -> Self {
        let mut map = HashMap::new();
        walk(root, &mut String::new(), &mut map);
        Self { map }
    }

    /// Index YAML text. Text that does not parse gives an empty index; the loader reports that
    /// error with its own position.
    pub fn index(text: &str) -> Self {
        match crate::yaml::parse(text) {
            Ok(Some(root)) => Self::of(&root),
            _ => Self::default(),
        }
    }

    /// The position of `path`, or of its nearest indexed ancestor.
    pub fn find(&self, path: &str) -> Option<Position> {
        let mut p = path;
        loop {
            if let Some(pos) = self.map.get(p) {
                return Some(*pos);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

fn walk(node: &Node, path: &mut String, map: &mut HashMap<String, Position>) {
    let len = path.len();
    match &node.value {
        Value::Scalar { .. } => {}
        Value::Seq(items) => {
            for (i, item) in items.iter().enumerate() {
                path.push_str(&format!("[{i}]"));
                map.entry(path.clone()).or_insert(item.position);
                walk(item, path, map);
                path.truncate(len);
            }
        }
        Value::Map(entries) => {
            for (key, value) in entries {
                let Value::Scalar { text, .. } = &key.value else {
                    continue;
                };
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(text);
                map.entry(path.clone()).or_insert(key.position);
                walk(value, path, map);
                path.truncate(len);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_keys_and_sequence_items() {
        let text =
            "routes:\n  - name: a\n    pool: x\n  - name: b\n    match:\n      headers: {a: b}\n";
        let loc = Locations::index(text);
        assert_eq!(loc.find("routes").unwrap().line, 1);
        assert_eq!(loc.find("routes[0].pool").unwrap().line, 3);
        assert_eq!(
            loc.find("routes[1].match.headers").unwrap(),
            Position { line: 6, column: 7 }
        );
        // Unknown leaf falls back to its parent.
        assert_eq!(loc.find("routes[1].match.nope").unwrap().line, 5);
    }
}
