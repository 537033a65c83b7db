//! The "kind map": how a setting that chooses one of several policies is written. Either a bare
//! kind name (`balancer: round_robin`, every setting at its default) or a map whose `kind` names
//! the policy and whose other keys are that policy's settings
//! (`balancer: { kind: ring_hash, key: {header: x-user} }`).
//!
//! Why a hand-written deserializer rather than `#[serde(tag = "kind")]`: serde buffers an
//! internally tagged map before it knows the variant, and the buffer has no positions, so a typo
//! inside the map would be reported at the map's first line and without a key path. Here every key
//! is checked as it is read, against the keys of the kind when `kind` came first and against the
//! keys of every kind when it did not (the rest is checked once `kind` is known); values are read
//! and checked at their own key. A policy type declares its kinds once, as a table of
//! [`Kind`] rows, and this module does the rest.

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use serde::de::{self, MapAccess, Unexpected, Visitor};
use serde::{Deserialize, Deserializer};

/// A humantime duration (`10s`, `3m`) as a setting value.
pub(crate) struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        humantime_serde::deserialize(d).map(HumanDuration)
    }
}

/// One kind of a policy: the name written under `kind`, the keys its map form accepts (besides
/// `kind`), and how the value is built from the settings read.
pub(crate) struct Kind<T: KindMap> {
    pub name: &'static str,
    pub keys: &'static [&'static str],
    pub build: fn(T::Settings) -> Result<T, String>,
}

/// A policy written as a kind map. Implementors give the table of kinds, a holder for settings
/// read before the kind is known, and a reader per setting key.
pub(crate) trait KindMap: Sized + 'static {
    /// What a value may look like, for "invalid type" errors.
    const EXPECTING: &'static str;
    /// Every kind, in the order the docs list them.
    const KINDS: &'static [Kind<Self>];
    /// The settings of any kind, each `None` until read.
    type Settings: Default;

    /// Read and check the value of `key`, one of some kind's keys.
    fn read_setting<'de, A: MapAccess<'de>>(
        map: &mut A,
        key: &str,
        settings: &mut Self::Settings,
    ) -> Result<(), A::Error>;

    /// The bare-name form: by default the named kind with every setting at its default.
    fn from_name<E: de::Error>(name: &str) -> Result<Self, E> {
        let kind = find::<Self, E>(name)?;
        (kind.build)(Self::Settings::default()).map_err(E::custom)
    }

    /// The bare-number form; not accepted unless a policy says what a number means.
    fn from_number<E: de::Error>(n: i64) -> Result<Self, E> {
        Err(E::invalid_type(Unexpected::Signed(n), &Self::EXPECTING))
    }

    /// The kind names, as written.
    fn kind_names() -> impl Iterator<Item = &'static str> {
        Self::KINDS.iter().map(|k| k.name)
    }
}

fn find<T: KindMap, E: de::Error>(name: &str) -> Result<&'static Kind<T>, E> {
    T::KINDS.iter().find(|k| k.name == name).ok_or_else(|| {
        let names: Vec<&str> = T::kind_names().collect();
        E::custom(format!("unknown variant `{name}`, {}", expected(&names)))
    })
}

/// Deserialize a [`KindMap`] type; its `Deserialize` impl calls this.
pub(crate) fn deserialize<'de, D: Deserializer<'de>, T: KindMap>(d: D) -> Result<T, D::Error> {
    d.deserialize_any(KindVisitor::<T>(PhantomData))
}

struct KindVisitor<T>(PhantomData<T>);

impl<'de, T: KindMap> Visitor<'de> for KindVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(T::EXPECTING)
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<T, E> {
        T::from_name(s)
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<T, E> {
        match i64::try_from(n) {
            Ok(n) => T::from_number(n),
            Err(_) => Err(E::invalid_value(Unexpected::Unsigned(n), &self)),
        }
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<T, E> {
        T::from_number(n)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
        let mut kind: Option<&'static Kind<T>> = None;
        let mut seen: Vec<String> = Vec::new();
        let mut settings = T::Settings::default();
        while let Some(key) = map.next_key_seed(KeyIn::<T>(kind, PhantomData))? {
            if seen.contains(&key) {
                return Err(de::Error::custom(format!("duplicate field `{key}`")));
            }
            if key == "kind" {
                let name: String = map.next_value()?;
                kind = Some(find::<T, A::Error>(&name)?);
            } else {
                T::read_setting(&mut map, &key, &mut settings)?;
            }
            seen.push(key);
        }
        let kind = kind.ok_or_else(|| de::Error::missing_field("kind"))?;
        // Keys read before `kind` are checked now.
        if let Some(bad) = seen.iter().find(|k| !accepts(kind, k)) {
            return Err(unknown_field(bad, &allowed(kind)));
        }
        (kind.build)(settings).map_err(de::Error::custom)
    }
}

fn accepts<T: KindMap>(kind: &Kind<T>, key: &str) -> bool {
    key == "kind" || kind.keys.contains(&key)
}

/// The keys a map of `kind` accepts, `kind` first.
fn allowed<T: KindMap>(kind: &Kind<T>) -> Vec<&'static str> {
    std::iter::once("kind")
        .chain(kind.keys.iter().copied())
        .collect()
}

/// Every key any kind accepts, `kind` first, each once.
fn every_key<T: KindMap>() -> Vec<&'static str> {
    let mut keys = vec!["kind"];
    for key in T::KINDS.iter().flat_map(|k| k.keys) {
        if !keys.contains(key) {
            keys.push(key);
        }
    }
    keys
}

/// serde's own wording, so the loader's "did you mean" reads these errors like any other.
fn unknown_field<E: de::Error>(key: &str, allowed: &[&str]) -> E {
    E::custom(format!("unknown field `{key}`, {}", expected(allowed)))
}

fn expected(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    match quoted.as_slice() {
        [] => "there are none".to_string(),
        [one] => format!("expected {one}"),
        [a, b] => format!("expected {a} or {b}"),
        all => format!("expected one of {}", all.join(", ")),
    }
}

/// A map key, checked while it is deserialized (not after) so that the YAML error carries the
/// key's own line and column: against the kind's keys once `kind` is known, against every
/// kind's keys before.
struct KeyIn<T: KindMap>(Option<&'static Kind<T>>, PhantomData<T>);

impl<'de, T: KindMap> de::DeserializeSeed<'de> for KeyIn<T> {
    type Value = String;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        d.deserialize_str(self)
    }
}

impl<T: KindMap> Visitor<'_> for KeyIn<T> {
    type Value = String;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a setting name")
    }
    fn visit_str<E: de::Error>(self, key: &str) -> Result<String, E> {
        let ok = match self.0 {
            Some(kind) => accepts(kind, key),
            None => every_key::<T>().contains(&key),
        };
        if ok {
            return Ok(key.to_string());
        }
        let allowed = match self.0 {
            Some(kind) => allowed(kind),
            None => every_key::<T>(),
        };
        Err(unknown_field(key, &allowed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A two-kind policy: `plain`, or `sized` with a required `size` and an optional `label`.
    #[derive(Debug, PartialEq)]
    enum Shape {
        Plain,
        Sized { size: u32, label: String },
    }

    #[derive(Default)]
    struct Settings {
        size: Option<u32>,
        label: Option<String>,
    }

    impl KindMap for Shape {
        const EXPECTING: &'static str = "a shape name, a size, or a map with `kind`";
        const KINDS: &'static [Kind<Self>] = &[
            Kind {
                name: "plain",
                keys: &[],
                build: |_| Ok(Shape::Plain),
            },
            Kind {
                name: "sized",
                keys: &["size", "label"],
                build: |s| {
                    Ok(Shape::Sized {
                        size: s.size.ok_or("missing field `size`")?,
                        label: s.label.unwrap_or_default(),
                    })
                },
            },
        ];
        type Settings = Settings;

        fn read_setting<'de, A: MapAccess<'de>>(
            map: &mut A,
            key: &str,
            s: &mut Settings,
        ) -> Result<(), A::Error> {
            match key {
                "size" => s.size = Some(map.next_value()?),
                _ => s.label = Some(map.next_value()?),
            }
            Ok(())
        }

        fn from_number<E: de::Error>(n: i64) -> Result<Self, E> {
            let size = u32::try_from(n).map_err(|_| E::custom("size out of range"))?;
            Ok(Shape::Sized {
                size,
                label: String::new(),
            })
        }
    }

    impl<'de> Deserialize<'de> for Shape {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            deserialize(d)
        }
    }

    fn shape(json: &str) -> Result<Shape, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn bare_name_number_and_map_forms() {
        assert_eq!(shape("\"plain\""), Ok(Shape::Plain));
        assert_eq!(shape(r#"{"kind": "plain"}"#), Ok(Shape::Plain));
        let sized = |size, label: &str| {
            Ok(Shape::Sized {
                size,
                label: label.into(),
            })
        };
        assert_eq!(shape("7"), sized(7, ""));
        assert_eq!(shape(r#"{"kind": "sized", "size": 3}"#), sized(3, ""));
        assert_eq!(
            shape(r#"{"label": "x", "size": 3, "kind": "sized"}"#),
            sized(3, "x")
        );
    }

    #[test]
    fn errors_use_serdes_wording() {
        let err = |json| shape(json).unwrap_err();
        assert!(
            err("\"round\"").starts_with("unknown variant `round`, expected `plain` or `sized`")
        );
        assert!(err(r#"{"kind": "plain", "size": 3}"#)
            .starts_with("unknown field `size`, expected `kind`"));
        assert!(err(r#"{"size": 3, "kind": "plain"}"#)
            .starts_with("unknown field `size`, expected `kind`"));
        assert!(err(r#"{"sise": 3}"#)
            .starts_with("unknown field `sise`, expected one of `kind`, `size`, `label`"));
        assert!(err(r#"{"size": 3}"#).starts_with("missing field `kind`"));
        assert!(err(r#"{"kind": "sized"}"#).starts_with("missing field `size`"));
        assert!(err(r#"{"kind": "sized", "kind": "plain"}"#).starts_with("duplicate field `kind`"));
        assert!(err("-1").starts_with("size out of range"));
        assert!(err("[]").contains("a shape name, a size, or a map with `kind`"));
    }
}
