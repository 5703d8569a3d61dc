//! JSON text to a [`serde_json::Value`], refusing any object that names a key twice, at any
//! depth. serde_json keeps the last of two equal keys; for a launch request that silently picks
//! one of two meanings (`"action"` given twice submits the second), so ambiguous input is
//! refused like unknown fields are: reported, naming the key and where it is.

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use std::cell::RefCell;
use std::fmt::{self, Write as _};

/// Why a text is not strict JSON.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StrictJsonError {
    /// An object names `key` twice; `path` says which object (`the top level`,
    /// `inputs[3].custom_data`).
    #[error("key {key:?} is given twice in {path}")]
    DuplicateKey { key: String, path: String },
    /// Not JSON at all: serde_json's message, with line and column.
    #[error("{0}")]
    Syntax(String),
}

/// Parses `bytes` as one JSON value (surrounding whitespace allowed), refusing duplicate keys.
pub fn from_slice(bytes: &[u8]) -> Result<Value, StrictJsonError> {
    let trail = RefCell::new(Trail::default());
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = Seed { trail: &trail }
        .deserialize(&mut de)
        .and_then(|value| de.end().map(|()| value));
    parsed.map_err(|e| {
        trail
            .into_inner()
            .duplicate
            .unwrap_or(StrictJsonError::Syntax(e.to_string()))
    })
}

/// As [`from_slice`], for text.
pub fn from_str(text: &str) -> Result<Value, StrictJsonError> {
    from_slice(text.as_bytes())
}

/// Where the parser is, so that a duplicate is reported with its place.
#[derive(Default)]
struct Trail {
    segments: Vec<Segment>,
    duplicate: Option<StrictJsonError>,
}

enum Segment {
    Key(String),
    Index(usize),
}

impl Trail {
    fn path(&self) -> String {
        if self.segments.is_empty() {
            return "the top level".to_owned();
        }
        let mut path = String::new();
        for segment in &self.segments {
            match segment {
                Segment::Index(i) => {
                    let _ = write!(path, "[{i}]");
                }
                Segment::Key(k) if is_plain(k) => {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(k);
                }
                Segment::Key(k) => {
                    let _ = write!(path, "[{}]", Value::String(k.clone()));
                }
            }
        }
        path
    }
}

/// A key that reads unambiguously after a dot.
fn is_plain(key: &str) -> bool {
    !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[derive(Clone, Copy)]
struct Seed<'t> {
    trail: &'t RefCell<Trail>,
}

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // What serde_json's own Value does: JSON text has no NaN or infinity.
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        loop {
            self.trail
                .borrow_mut()
                .segments
                .push(Segment::Index(items.len()));
            let next = seq.next_element_seed(self);
            self.trail.borrow_mut().segments.pop();
            match next? {
                Some(item) => items.push(item),
                None => return Ok(Value::Array(items)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            if map.contains_key(&key) {
                let mut trail = self.trail.borrow_mut();
                let path = trail.path();
                let message = format!("key {key:?} is given twice");
                trail.duplicate = Some(StrictJsonError::DuplicateKey { key, path });
                return Err(de::Error::custom(message));
            }
            self.trail
                .borrow_mut()
                .segments
                .push(Segment::Key(key.clone()));
            let value = access.next_value_seed(self);
            self.trail.borrow_mut().segments.pop();
            map.insert(key, value?);
        }
        Ok(Value::Object(map))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn duplicate(text: &str) -> (String, String) {
        match from_str(text) {
            Err(StrictJsonError::DuplicateKey { key, path }) => (key, path),
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn any_json_without_repeated_keys_parses_as_serde_json_would() {
        for text in [
            r#"{"a": 1, "b": [true, null, -3, 2.5, "x\u00e9"], "c": {"d": {}}, "e": []}"#,
            "[1, 18446744073709551615, -9223372036854775808, 1e308, 0.1]",
            r#"  "just a string"  "#,
            "null",
            r#"[{"k": 1}, {"k": 2}]"#,
        ] {
            let ours = from_str(text).unwrap();
            let theirs: Value = serde_json::from_str(text).unwrap();
            assert_eq!(ours, theirs, "{text}");
        }
    }

    #[test]
    fn a_key_given_twice_is_refused_at_any_depth_naming_the_key_and_its_place() {
        assert_eq!(
            duplicate(r#"{"action": "a", "inputs": [], "action": "b"}"#),
            ("action".into(), "the top level".into())
        );
        assert_eq!(
            duplicate(r#"{"inputs": [{}, {}, {}, {"custom_data": {"row": "1", "row": "2"}}]}"#),
            ("row".into(), "inputs[3].custom_data".into())
        );
        assert_eq!(
            duplicate(r#"{"schedule": {"cron": "* * * * *", "cron": "0 8 * * 1"}}"#),
            ("cron".into(), "schedule".into())
        );
        assert_eq!(
            duplicate(r#"[[{"x": {"a b": {"y": 1, "y": 2}}}]]"#),
            ("y".into(), r#"[0][0].x["a b"]"#.into())
        );
    }

    #[test]
    fn keys_equal_only_after_unescaping_are_the_same_key() {
        let (key, _) = duplicate(r#"{"action": 1, "\u0061ction": 2}"#);
        assert_eq!(key, "action");
    }

    #[test]
    fn the_same_key_in_sibling_objects_is_not_a_duplicate() {
        assert!(from_str(r#"{"a": {"k": 1}, "b": {"k": 1}, "k": [{"k": 1}, {"k": 2}]}"#).is_ok());
    }

    #[test]
    fn text_that_is_not_json_is_a_syntax_error_with_serde_jsons_message() {
        for text in ["{nope", "", "[1, 2", "{} {}", "\u{feff}{}"] {
            match from_str(text) {
                Err(StrictJsonError::Syntax(m)) => assert!(m.contains("line"), "{text}: {m}"),
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn nesting_beyond_serde_jsons_limit_is_an_error_not_a_stack_overflow() {
        let deep = "[".repeat(100_000);
        assert!(matches!(from_str(&deep), Err(StrictJsonError::Syntax(_))));
        let deep = r#"{"a":"#.repeat(100_000);
        assert!(matches!(from_str(&deep), Err(StrictJsonError::Syntax(_))));
    }
}
