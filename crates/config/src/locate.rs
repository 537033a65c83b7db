//! Maps key paths (`routes[1].match.headers`) to where they sit in the YAML text, so that errors
//! found after parsing (a route naming a missing pool, a duplicate name) still point at a line.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

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
    /// Index a YAML document. Text that does not parse gives an empty index; the serde pass
    /// reports that error with its own position.
    pub fn index(text: &str) -> Self {
        let mut walker = Walker::default();
        let mut parser = Parser::new_from_str(text);
        let _ = parser.load(&mut walker, false);
        Self { map: walker.map }
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

enum Frame {
    Map { key: Option<String> },
    Seq { index: usize },
}

#[derive(Default)]
struct Walker {
    stack: Vec<Frame>,
    map: HashMap<String, Position>,
}

impl Walker {
    fn path(&self) -> String {
        let mut out = String::new();
        for frame in &self.stack {
            match frame {
                Frame::Map { key: Some(k) } => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(k);
                }
                Frame::Map { key: None } => {}
                Frame::Seq { index } => {
                    out.push('[');
                    out.push_str(&index.to_string());
                    out.push(']');
                }
            }
        }
        out
    }

    fn position(mark: Marker) -> Position {
        Position {
            line: mark.line(),
            column: mark.col() + 1,
        }
    }

    /// Called before a value node starts; returns true when the node is a mapping key.
    fn before_node(&mut self, mark: Marker) -> bool {
        match self.stack.last_mut() {
            Some(Frame::Map { key }) if key.is_none() => true,
            Some(Frame::Seq { .. }) => {
                let path = self.path();
                self.map.entry(path).or_insert(Self::position(mark));
                false
            }
            _ => false,
        }
    }

    /// Called after a value node has ended.
    fn after_value(&mut self) {
        match self.stack.last_mut() {
            Some(Frame::Map { key }) => *key = None,
            Some(Frame::Seq { index }) => *index += 1,
            None => {}
        }
    }
}

impl MarkedEventReceiver for Walker {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(value, ..) => {
                if self.before_node(mark) {
                    if let Some(Frame::Map { key }) = self.stack.last_mut() {
                        *key = Some(value);
                    }
                    let path = self.path();
                    self.map.entry(path).or_insert(Self::position(mark));
                } else {
                    self.after_value();
                }
            }
            Event::MappingStart(..) => {
                self.before_node(mark);
                self.stack.push(Frame::Map { key: None });
            }
            Event::SequenceStart(..) => {
                self.before_node(mark);
                self.stack.push(Frame::Seq { index: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.after_value();
            }
            Event::Alias(..) => {
                self.before_node(mark);
                self.after_value();
            }
            _ => {}
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
