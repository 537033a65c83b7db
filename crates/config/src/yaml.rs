//! YAML, parsed once. The text becomes a tree of nodes that each know their line and column
//! (yaml-rust2's event parser, YAML 1.2); serde reads the typed config straight from that tree,
//! and the same tree indexes key paths for the checks that run after parsing
//! ([`crate::locate::Locations`]). Every error therefore carries the position of the node it is
//! about: an unknown key points at the key, a bad value at the value.
//!
//! Scalars resolve as YAML 1.2's core schema does: a plain `~`/`null`/empty is null, `true` and
//! `false` are booleans, decimal, `0x` and `0o` integers and decimal floats (with `.inf`, `.nan`)
//! are numbers, anything else is a string; a quoted or block scalar is always a string, and a
//! string is what a field asking for one gets even from a plain `123`. Anchors and aliases are
//! expanded; tags other than `!!str` are ignored.

use std::collections::HashMap;
use std::fmt;

use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, Visitor};
use serde::forward_to_deserialize_any;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use crate::locate::Position;

/// One YAML node and where it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub position: Position,
}

/// The content of a node.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `plain` is false for quoted, block and `!!str` scalars, which are always strings.
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

/// A YAML syntax error or a value that does not fit its type, with where it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Error {
    pub message: String,
    pub position: Option<Position>,
}

impl Error {
    /// This error, placed at `position` unless a node inside already placed it.
    fn at(mut self, position: Position) -> Self {
        self.position.get_or_insert(position);
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(p) = self.position {
            write!(f, " at line {} column {}", p.line, p.column)?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error {
            message: msg.to_string(),
            position: None,
        }
    }
}

/// Parse the first document of `text`; `None` when it holds none (empty, or only comments).
pub fn parse(text: &str) -> Result<Option<Node>, Error> {
    let mut builder = Builder::default();
    Parser::new_from_str(text)
        .load(&mut builder, false)
        .map_err(|e| Error {
            message: e.info().to_string(),
            position: Some(position(*e.marker())),
        })?;
    Ok(builder.root)
}

/// Parse `text` as a `T`; an empty document reads as null. A message names the key path of
/// the value it is about (`retry.budget.ratio: invalid type ...`), as the config loader's do.
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, Error> {
    let null = Node {
        value: Value::Scalar {
            text: String::new(),
            plain: true,
        },
        position: Position { line: 1, column: 1 },
    };
    let root = parse(text)?.unwrap_or(null);
    serde_path_to_error::deserialize(&root).map_err(|e| {
        let path = e.path().to_string();
        let mut error = e.into_inner();
        if path != "." {
            error.message = format!("{path}: {}", error.message);
        }
        error
    })
}

fn position(mark: Marker) -> Position {
    Position {
        line: mark.line(),
        column: mark.col() + 1,
    }
}

/// A collection whose end has not been seen yet.
enum Open {
    Seq {
        items: Vec<Node>,
        position: Position,
        anchor: usize,
    },
    Map {
        entries: Vec<(Node, Node)>,
        key: Option<Node>,
        position: Position,
        anchor: usize,
    },
}

#[derive(Default)]
struct Builder {
    open: Vec<Open>,
    anchors: HashMap<usize, Node>,
    root: Option<Node>,
}

impl Builder {
    fn finish(&mut self, node: Node, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.open.last_mut() {
            None => {
                self.root.get_or_insert(node);
            }
            Some(Open::Seq { items, .. }) => items.push(node),
            Some(Open::Map { entries, key, .. }) => match key.take() {
                None => *key = Some(node),
                Some(k) => entries.push((k, node)),
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        let position = position(mark);
        match event {
            Event::Scalar(text, style, anchor, tag) => {
                let is_str = tag
                    .is_some_and(|t| t.handle == "tag:yaml.org,2002:" && t.suffix == "str")
                    || style != TScalarStyle::Plain;
                let value = Value::Scalar {
                    text,
                    plain: !is_str,
                };
                self.finish(Node { value, position }, anchor);
            }
            Event::SequenceStart(anchor, _) => self.open.push(Open::Seq {
                items: Vec::new(),
                position,
                anchor,
            }),
            Event::MappingStart(anchor, _) => self.open.push(Open::Map {
                entries: Vec::new(),
                key: None,
                position,
                anchor,
            }),
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match self.open.pop() {
                    Some(Open::Seq {
                        items,
                        position,
                        anchor,
                    }) => (
                        Node {
                            value: Value::Seq(items),
                            position,
                        },
                        anchor,
                    ),
                    Some(Open::Map {
                        entries,
                        position,
                        anchor,
                        ..
                    }) => {
                        // A block map's start event comes at its first `:`; the map starts at
                        // its first key.
                        let first = entries.first().map_or(position, |(k, _)| k.position);
                        let position =
                            if (first.line, first.column) < (position.line, position.column) {
                                first
                            } else {
                                position
                            };
                        let value = Value::Map(entries);
                        (Node { value, position }, anchor)
                    }
                    None => return,
                };
                self.finish(node, anchor);
            }
            Event::Alias(id) => {
                // The parser rejects an alias to an unknown anchor, so this is always found.
                if let Some(node) = self.anchors.get(&id) {
                    let value = node.value.clone();
                    self.finish(Node { value, position }, 0);
                }
            }
            _ => {}
        }
    }
}

/// What a plain scalar means under the core schema.
enum Plain {
    Null,
    Bool(bool),
    Unsigned(u64),
    Signed(i64),
    Float(f64),
    Str,
}

fn resolve(text: &str) -> Plain {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Plain::Null,
        "true" | "True" | "TRUE" => return Plain::Bool(true),
        "false" | "False" | "FALSE" => return Plain::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Plain::Float(f64::INFINITY)
        }
        "-.inf" | "-.Inf" | "-.INF" => return Plain::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Plain::Float(f64::NAN),
        _ => {}
    }
    let radix = |prefix: &str, radix: u32| {
        text.strip_prefix(prefix)
            .and_then(|digits| u64::from_str_radix(digits, radix).ok())
    };
    if let Some(n) = radix("0x", 16).or_else(|| radix("0o", 8)) {
        return Plain::Unsigned(n);
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(n) = text.strip_prefix('+').unwrap_or(text).parse::<u64>() {
            return Plain::Unsigned(n);
        }
        if let Ok(n) = text.parse::<i64>() {
            return Plain::Signed(n);
        }
    }
    let float_chars = digits
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'));
    if float_chars && digits.bytes().any(|b| b.is_ascii_digit()) {
        if let Ok(f) = text.parse::<f64>() {
            return Plain::Float(f);
        }
    }
    Plain::Str
}

impl Node {
    fn is_null(&self) -> bool {
        matches!(&self.value, Value::Scalar { text, plain: true } if matches!(resolve(text), Plain::Null))
    }
}

impl<'de> de::Deserializer<'de> for &'de Node {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let result = match &self.value {
            Value::Scalar { text, plain: true } => match resolve(text) {
                Plain::Null => visitor.visit_unit(),
                Plain::Bool(b) => visitor.visit_bool(b),
                Plain::Unsigned(n) => visitor.visit_u64(n),
                Plain::Signed(n) => visitor.visit_i64(n),
                Plain::Float(f) => visitor.visit_f64(f),
                Plain::Str => visitor.visit_borrowed_str(text),
            },
            Value::Scalar { text, .. } => visitor.visit_borrowed_str(text),
            Value::Seq(items) => visitor.visit_seq(SeqAccess {
                items: items.iter(),
            }),
            Value::Map(entries) => {
                let mut access = MapAccess {
                    entries,
                    next: 0,
                    finished: false,
                };
                let result = visitor.visit_map(&mut access);
                // An error the visitor raises itself while entries remain (a check on a value
                // just read) is placed at that value's key; one raised after the last entry (a
                // missing field) falls to the map.
                match result {
                    Err(e) if !access.finished && access.next > 0 => {
                        Err(e.at(entries[access.next - 1].0.position))
                    }
                    other => other,
                }
            }
        };
        result.map_err(|e| e.at(self.position))
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match &self.value {
            Value::Scalar { text, .. } => visitor
                .visit_borrowed_str(text)
                .map_err(|e: Error| e.at(self.position)),
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if self.is_null() {
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        }
        .map_err(|e| e.at(self.position))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor
            .visit_newtype_struct(self)
            .map_err(|e| e.at(self.position))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let result = match &self.value {
            Value::Scalar { text, .. } => {
                visitor.visit_enum(de::value::BorrowedStrDeserializer::<Error>::new(text))
            }
            Value::Map(entries) if entries.len() == 1 => visitor.visit_enum(EnumAccess {
                key: &entries[0].0,
                value: &entries[0].1,
            }),
            _ => Err(de::Error::invalid_type(self.unexpected(), &visitor)),
        };
        result.map_err(|e| e.at(self.position))
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 bytes byte_buf unit unit_struct
        seq tuple tuple_struct map struct
    }
}

impl Node {
    fn unexpected(&self) -> de::Unexpected<'_> {
        match &self.value {
            Value::Scalar { text, .. } => de::Unexpected::Str(text),
            Value::Seq(_) => de::Unexpected::Seq,
            Value::Map(_) => de::Unexpected::Map,
        }
    }
}

struct SeqAccess<'de> {
    items: std::slice::Iter<'de, Node>,
}

impl<'de> de::SeqAccess<'de> for SeqAccess<'de> {
    type Error = Error;
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        self.items.next().map(|n| seed.deserialize(n)).transpose()
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct MapAccess<'de> {
    entries: &'de [(Node, Node)],
    /// Entries whose key has been read.
    next: usize,
    /// The visitor was told there are no more entries.
    finished: bool,
}

impl<'de> de::MapAccess<'de> for MapAccess<'de> {
    type Error = Error;
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some((key, _)) = self.entries.get(self.next) else {
            self.finished = true;
            return Ok(None);
        };
        self.next += 1;
        seed.deserialize(key).map(Some)
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        match self.next.checked_sub(1).and_then(|i| self.entries.get(i)) {
            Some((_, value)) => seed.deserialize(value),
            None => Err(de::Error::custom(
                "a map value was asked for before its key",
            )),
        }
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len() - self.next)
    }
}

struct EnumAccess<'de> {
    key: &'de Node,
    value: &'de Node,
}

impl<'de> de::EnumAccess<'de> for EnumAccess<'de> {
    type Error = Error;
    type Variant = &'de Node;
    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, &'de Node), Error> {
        Ok((seed.deserialize(self.key)?, self.value))
    }
}

impl<'de> de::VariantAccess<'de> for &'de Node {
    type Error = Error;
    fn unit_variant(self) -> Result<(), Error> {
        de::Deserialize::deserialize(self)
    }
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        seed.deserialize(self)
    }
    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_seq(self, visitor)
    }
    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_map(self, visitor)
    }
}

impl<'de> IntoDeserializer<'de, Error> for &'de Node {
    type Deserializer = Self;
    fn into_deserializer(self) -> Self {
        self
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        name: String,
        #[serde(default)]
        count: Option<u32>,
        #[serde(default)]
        ratio: f64,
        #[serde(default)]
        on: bool,
        #[serde(default)]
        shape: Option<Shape>,
        #[serde(default)]
        tags: BTreeMap<String, String>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "lowercase")]
    enum Shape {
        Round,
        Square { side: u32 },
    }

    fn at(e: &Error) -> (usize, usize) {
        let p = e.position.unwrap();
        (p.line, p.column)
    }

    #[test]
    fn scalars_resolve_by_the_core_schema_and_strings_stay_strings() {
        let d: Doc = from_str("name: 123\ncount: 0x10\nratio: 2\non: true\n").unwrap();
        assert_eq!(
            (d.name.as_str(), d.count, d.ratio, d.on),
            ("123", Some(16), 2.0, true)
        );
        let d: Doc = from_str("name: x\ncount: ~\nratio: .5\n").unwrap();
        assert_eq!((d.count, d.ratio), (None, 0.5));
        let e = from_str::<Doc>("name: x\ncount: '3'\n").unwrap_err();
        assert!(
            e.message.starts_with("count: invalid type: string \"3\""),
            "{e}"
        );
        assert_eq!(at(&e), (2, 8));
        let e = from_str::<Doc>("name: x\non: !!str true\n").unwrap_err();
        assert!(e.message.contains("invalid type: string \"true\""), "{e}");
        let e = from_str::<Doc>("name: x\ncount: -1\n").unwrap_err();
        assert!(e.message.contains("invalid value: integer `-1`"), "{e}");
    }

    #[test]
    fn errors_point_at_the_key_or_value_they_are_about() {
        let e = from_str::<Doc>("name: x\ntags:\n  a: b\ncont: 3\n").unwrap_err();
        assert!(e.message.starts_with("cont: unknown field `cont`"), "{e}");
        assert_eq!(at(&e), (4, 1));
        let e = from_str::<Doc>("count: 3\n").unwrap_err();
        assert_eq!(e.message, "missing field `name`");
        assert_eq!(at(&e), (1, 1));
        let e = from_str::<Doc>("name: x\nshape: {square: {side: big}}\n").unwrap_err();
        assert!(
            e.message.starts_with("shape.square.side: invalid type"),
            "{e}"
        );
        assert_eq!(at(&e), (2, 24));
        let e = from_str::<Doc>("name: x\n  bad: indent\n").unwrap_err();
        assert!(e.position.is_some(), "{e}");
        assert!(e.to_string().contains(" at line 2 "), "{e}");
    }

    #[test]
    fn enums_anchors_and_empty_documents() {
        let d: Doc = from_str("name: x\nshape: round\n").unwrap();
        assert_eq!(d.shape, Some(Shape::Round));
        let d: Doc = from_str("name: x\nshape: {square: {side: 2}}\n").unwrap();
        assert_eq!(d.shape, Some(Shape::Square { side: 2 }));
        let d: Doc = from_str("name: &n x\ntags: {copy: *n}\n").unwrap();
        assert_eq!(d.tags["copy"], "x");
        assert_eq!(parse("# only a comment\n").unwrap(), None);
        assert_eq!(from_str::<Option<u32>>("").unwrap(), None);
    }

    #[test]
    fn the_example_configs_load() {
        for name in ["switchyard.yaml", "canary.yaml", "filters.yaml"] {
            let path = format!("{}/../../examples/{name}", env!("CARGO_MANIFEST_DIR"));
            if let Err(e) = crate::load_file(std::path::Path::new(&path)) {
                panic!("{name}: {e}");
            }
        }
    }
}
