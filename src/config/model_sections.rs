//! Reads one role's `[models.<role>]`: one model section, or named sections
//! `[models.<role>.<name>]`, as the document streams.
//!
//! Why streaming rather than a table read first and judged after: a value taken out of the
//! document as a `toml::Table` has lost its place in the file, so every mistake inside a
//! model section was reported at the section's header. Here each key and value is read
//! through the document's own deserializer, which marks the error with the line and column
//! of the key or value at fault.
//!
//! Which form a role is written in is decided by its first key: a model setting (a field of
//! `ModelConfig`) opens one section, anything else names a model.

use std::fmt;
use std::sync::OnceLock;

use serde::de::value::{MapAccessDeserializer, StrDeserializer};
use serde::de::{self, DeserializeSeed, Deserializer, Error as _, MapAccess, Visitor};
use serde::Deserialize;

use super::models::ModelConfig;

/// How a role was written: one section (no key at all reads as one section of defaults), or
/// named sections in file order.
pub(super) enum Sections {
    One(ModelConfig),
    Named(Vec<(String, ModelConfig)>),
}

pub(super) fn read<'de, D: Deserializer<'de>>(d: D) -> Result<Sections, D::Error> {
    d.deserialize_map(RoleVisitor)
}

struct RoleVisitor;

impl<'de> Visitor<'de> for RoleVisitor {
    type Value = Sections;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a model section, or named model sections")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let Some(first) = map.next_key_seed(KeySeed { named: &[] })? else {
            return Ok(Sections::One(ModelConfig::default()));
        };
        match first {
            Key::Setting(key) => {
                let rest = OneSection {
                    first: Some(key),
                    map,
                    named: false,
                };
                Ok(Sections::One(ModelConfig::deserialize(MapAccessDeserializer::new(
                    rest,
                ))?))
            }
            Key::Name(first) => {
                let mut entries = Vec::new();
                let mut next = Some(first);
                while let Some(name) = next {
                    let cfg = map.next_value_seed(SectionSeed { name: &name })?;
                    entries.push((name, cfg));
                    next = match map.next_key_seed(KeySeed { named: &entries })? {
                        Some(Key::Name(n)) => Some(n),
                        // KeySeed refuses a setting once a named section was read.
                        Some(Key::Setting(_)) => unreachable!("a setting after named sections is refused"),
                        None => None,
                    };
                }
                Ok(Sections::Named(entries))
            }
        }
    }
}

/// The keys a model section may hold, as serde derives them for `ModelConfig` (so the list
/// cannot drift from the struct).
fn settings() -> &'static [&'static str] {
    static FIELDS: OnceLock<&'static [&'static str]> = OnceLock::new();
    FIELDS.get_or_init(|| {
        let mut fields: &'static [&'static str] = &[];
        let _ = ModelConfig::deserialize(FieldNames(&mut fields));
        fields
    })
}

fn is_setting(key: &str) -> bool {
    settings().contains(&key)
}

fn is_model_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

enum Key {
    Setting(String),
    Name(String),
}

/// Reads a key of the role's table and says which it is; refuses, at the key, a setting
/// after named sections and a model name that is not a plain name.
struct KeySeed<'a> {
    /// The named sections read so far (none while the form is undecided).
    named: &'a [(String, ModelConfig)],
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Key;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        let key = String::deserialize(d)?;
        if is_setting(&key) {
            if let Some((first, _)) = self.named.first() {
                let names: Vec<&str> = self.named.iter().map(|(n, _)| n.as_str()).collect();
                return Err(D::Error::custom(format!(
                    "the setting `{key}` follows named model sections ({}); fix: move it into a named section such as [models.<role>.{first}], or write one section without names",
                    names.join(", ")
                )));
            }
            return Ok(Key::Setting(key));
        }
        if !is_model_name(&key) {
            return Err(D::Error::custom(format!(
                "{key:?} is neither a model setting nor a plain model name; fix: name a model with letters, digits, '_' and '-' only, or use a setting ({})",
                settings().join(", ")
            )));
        }
        Ok(Key::Name(key))
    }
}

/// The rest of a one-section role after its first key: every further key must be a setting.
struct OneSection<A> {
    first: Option<String>,
    map: A,
    /// A named model's section (no model may be named inside it).
    named: bool,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for OneSection<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, A::Error> {
        if let Some(first) = self.first.take() {
            return seed.deserialize(StrDeserializer::<A::Error>::new(&first)).map(Some);
        }
        self.map.next_key_seed(SettingSeed(seed, self.named))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.map.next_value_seed(seed)
    }
}

/// A key of a model section, refused at the key unless it is a setting; the flag says the
/// section is a named model's.
struct SettingSeed<K>(K, bool);

impl<'de, K: DeserializeSeed<'de>> DeserializeSeed<'de> for SettingSeed<K> {
    type Value = K::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<K::Value, D::Error> {
        let key = String::deserialize(d)?;
        if !is_setting(&key) {
            let or_named = match self.1 {
                true => String::new(),
                false => format!(
                    "; or, if `{key}` names a model, write every model as a named section [models.<role>.<name>]"
                ),
            };
            return Err(D::Error::custom(format!(
                "`{key}` is not a model setting; fix: use one of {}{or_named}",
                settings().join(", ")
            )));
        }
        self.0.deserialize(StrDeserializer::<D::Error>::new(&key))
    }
}

/// The value of a named model: a section of settings.
struct SectionSeed<'a> {
    name: &'a str,
}

impl<'de> DeserializeSeed<'de> for SectionSeed<'_> {
    type Value = ModelConfig;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<ModelConfig, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for SectionSeed<'_> {
    type Value = ModelConfig;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "a model section [models.<role>.{}]: `{}` is not a model setting ({}), so it is read as a model's name",
            self.name,
            self.name,
            settings().join(", ")
        )
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ModelConfig, A::Error> {
        let rest = OneSection {
            first: None,
            map,
            named: true,
        };
        ModelConfig::deserialize(MapAccessDeserializer::new(rest))
    }
}

/// A deserializer that only records the field names a derived struct asks for.
struct FieldNames<'a>(&'a mut &'static [&'static str]);

impl<'de> Deserializer<'de> for FieldNames<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(Self::Error::custom("only the field names are read"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(Self::Error::custom("only the field names are read"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}
