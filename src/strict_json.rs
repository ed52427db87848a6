//! JSON as serde_json reads it, except that an object with the same key twice is an error.
//!
//! serde_json keeps the last of two equal keys without a word, so a config.json with two
//! `"port"` lines (one left over from an edit) would silently listen on the second. tinylb
//! refuses it instead, with the position of the repeated key, as it refuses a misspelled key.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Parses `text` like `serde_json::from_str::<Value>`, refusing repeated keys at any depth.
pub fn parse(text: &str) -> serde_json::Result<Value> {
    serde_json::from_str::<Strict>(text).map(|Strict(value)| value)
}

/// A `Value` whose objects were checked for repeated keys.
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Strict, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_str<E>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_string()))
    }

    fn visit_string<E>(self, value: String) -> Result<Value, E> {
        Ok(Value::String(value))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Value, A::Error> {
        let mut values = Vec::new();
        while let Some(Strict(value)) = items.next_element()? {
            values.push(value);
        }
        Ok(Value::Array(values))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut entries: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        while let Some(key) = entries.next_key::<String>()? {
            if map.contains_key(&key) {
                return Err(de::Error::custom(format!("the key {key:?} appears twice")));
            }
            let Strict(value) = entries.next_value()?;
            map.insert(key, value);
        }
        Ok(Value::Object(map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_serde_json_reads() {
        let text = r#"{"a": [1, -2, 3.5, "x", true, null, {"b": {}}], "c": 18446744073709551615}"#;
        assert_eq!(
            parse(text).unwrap(),
            serde_json::from_str::<Value>(text).unwrap()
        );
    }

    #[test]
    fn a_repeated_key_is_an_error_at_any_depth() {
        let top = parse(r#"{"port": ":8080", "port": ":9090"}"#).unwrap_err();
        assert!(
            top.to_string().contains(r#"the key "port" appears twice"#),
            "{top}"
        );
        assert_eq!((top.line(), top.column()), (1, 24));
        let nested = parse(r#"{"servers": [{"url": "http://a:1", "weight": 1, "weight": 2}]}"#);
        assert!(nested.is_err());
        // The same key in two different objects is fine.
        assert!(parse(r#"[{"url": "a"}, {"url": "b"}]"#).is_ok());
    }

    /// `Strict` reads from any deserializer: serde_json's `Value` hands out owned strings
    /// (`visit_string`), unlike the text parser.
    #[test]
    fn reads_a_value_as_it_is() {
        let value = serde_json::json!({"a": [1, -2, 3.5, "x", true, null, {"b": {}}]});
        let Strict(copy) = Strict::deserialize(value.clone()).unwrap();
        assert_eq!(copy, value);
    }

    #[test]
    fn a_type_json_lacks_is_refused_as_not_json() {
        let bytes = de::value::BytesDeserializer::<de::value::Error>::new(b"\x00");
        let Err(error) = Strict::deserialize(bytes) else {
            panic!("bytes were read as JSON");
        };
        assert_eq!(
            error.to_string(),
            "invalid type: byte array, expected any JSON value"
        );
    }
}
