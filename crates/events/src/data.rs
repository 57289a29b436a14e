//! What MongoDB can store exactly as sent: the rules for an event's `data`.
//!
//! `data` travels as raw JSON from the request to the worker, which turns it into BSON. Anything
//! that BSON cannot hold exactly must be refused at ingest with a 400, never accepted and lost
//! later, so the ingest checks it here and the worker runs the same check before converting (the
//! two cannot disagree). The rules:
//!
//! - numbers are integers that fit a signed 64-bit integer, or finite doubles;
//! - objects and arrays nest at most [`MAX_DEPTH`] levels (`data` itself is level 1);
//! - no object key contains a NUL character (BSON keys are NUL-terminated).
//!
//! Size needs no check of its own: `MAX_EVENT_BYTES` is capped (see [`MAX_EVENT_BYTES_CEILING`])
//! so that no accepted event can grow past MongoDB's 16 MiB document limit when encoded as BSON.
//!
//! The check walks the JSON once with a serde visitor, borrowing keys, allocating nothing unless
//! it finds a problem, whose message then names the path (`data.items[3].price`).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// Deepest nesting of objects and arrays in `data`, counting `data` itself as level 1.
pub const MAX_DEPTH: usize = 100;

/// Largest `MAX_EVENT_BYTES` allowed. JSON grows by at most about 6x when encoded as BSON (an
/// array of one-digit numbers: 2 bytes of JSON each, up to 12 of BSON), so 2 MiB of JSON stays
/// well under MongoDB's 16 MiB document limit.
pub const MAX_EVENT_BYTES_CEILING: usize = 2 * 1024 * 1024;

/// Checks that `json` (an event's `data`, already known to be valid JSON) can be stored exactly.
/// The error names the path of the first offending value and what is wrong with it.
pub fn check(json: &str) -> Result<(), String> {
    let mut de = serde_json::Deserializer::from_str(json);
    de.deserialize_any(Check { depth: 0 }).map_err(|e| format!("data{}", strip_position(&e.to_string())))
}

/// A visitor at one nesting level; `depth` counts the objects and arrays around the value.
struct Check {
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Check {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl Check {
    fn nested<E: de::Error>(&self) -> Result<Self, E> {
        if self.depth >= MAX_DEPTH {
            return Err(E::custom(format!(": nested more than {MAX_DEPTH} levels deep")));
        }
        Ok(Self { depth: self.depth + 1 })
    }
}

impl<'de> Visitor<'de> for Check {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        if i64::try_from(v).is_err() {
            return Err(E::custom(format!(": the integer {v} does not fit a signed 64-bit integer")));
        }
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        if !v.is_finite() {
            return Err(E::custom(": numbers must be finite"));
        }
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let inner = self.nested()?;
        while let Some(Key(key)) = map.next_key()? {
            if key.contains('\0') {
                return Err(de::Error::custom(format!(
                    ": the key {:?} contains a NUL character",
                    key.replace('\0', "\\u0000")
                )));
            }
            map.next_value_seed(Check { depth: inner.depth })
                .map_err(|e| de::Error::custom(format!(".{key}{}", message(&e))))?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let inner = self.nested()?;
        let mut index = 0usize;
        while seq
            .next_element_seed(Check { depth: inner.depth })
            .map_err(|e| de::Error::custom(format!("[{index}]{}", message(&e))))?
            .is_some()
        {
            index += 1;
        }
        Ok(())
    }
}

/// An object key, borrowed from the input unless it holds escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// The message of an error raised further down, without serde_json's position suffix. Messages
/// raised by this visitor start with the path separator or `:`; serde_json's own (a number out of
/// range) get a `: ` in front.
fn message(e: &impl fmt::Display) -> String {
    let s = strip_position(&e.to_string());
    if s.starts_with(['.', '[', ':']) { s } else { format!(": {s}") }
}

fn strip_position(s: &str) -> String {
    match s.rfind(" at line ") {
        Some(cut) => s[..cut].to_string(),
        None => s.to_string(),
    }
}

/// The rules as JSON Schema, for the OpenAPI document (feature `openapi`): `data` is a
/// [`StorableObject`] of [`StorableValue`]s. Nesting depth cannot be said in JSON Schema; the
/// description says it.
#[cfg(feature = "openapi")]
mod schema {
    use std::borrow::Cow;

    use utoipa::openapi::RefOr;
    use utoipa::openapi::schema::Schema;
    use utoipa::{PartialSchema, ToSchema};

    /// Any JSON value MongoDB stores exactly: a string, boolean, null, integer in the signed
    /// 64-bit range, finite number, or an array or object of such values.
    #[derive(Debug)]
    pub struct StorableValue;

    /// A JSON object of [`StorableValue`]s whose keys hold no NUL character.
    #[derive(Debug)]
    pub struct StorableObject;

    fn from_json(value: serde_json::Value) -> RefOr<Schema> {
        RefOr::T(serde_json::from_value(value).unwrap_or_default())
    }

    fn object() -> serde_json::Value {
        serde_json::json!({
            "type": "object",
            "propertyNames": {"pattern": "^[^\\x00]*$"},
            "additionalProperties": {"$ref": "#/components/schemas/StorableValue"},
        })
    }

    impl PartialSchema for StorableValue {
        fn schema() -> RefOr<Schema> {
            from_json(serde_json::json!({
                "description": "A string, boolean, null, integer that fits a signed 64-bit integer, finite \
                    number, or an array or object (keys without NUL) of such values.",
                "anyOf": [
                    {"type": "string"},
                    {"type": "boolean"},
                    {"type": "null"},
                    {"type": "integer", "minimum": i64::MIN, "maximum": i64::MAX},
                    // Any other number. JSON Schema cannot tell `1e19` (a double, stored) from
                    // `10000000000000000000` (an integer past 64 bits, refused): it says only
                    // what is always accepted, and the description says the rest.
                    {"type": "number", "not": {"type": "integer"}, "minimum": -9.2e18, "maximum": 9.2e18},
                    {"type": "array", "items": {"$ref": "#/components/schemas/StorableValue"}},
                    object(),
                ],
            }))
        }
    }

    impl ToSchema for StorableValue {
        fn name() -> Cow<'static, str> {
            Cow::Borrowed("StorableValue")
        }
    }

    impl PartialSchema for StorableObject {
        fn schema() -> RefOr<Schema> {
            from_json(object())
        }
    }

    impl ToSchema for StorableObject {
        fn name() -> Cow<'static, str> {
            Cow::Borrowed("StorableObject")
        }
        fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
            schemas.push((StorableValue::name().into_owned(), StorableValue::schema()));
        }
    }
}

#[cfg(feature = "openapi")]
pub use schema::{StorableObject, StorableValue};

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(levels: usize) -> String {
        format!("{}1{}", "{\"a\":".repeat(levels), "}".repeat(levels))
    }

    #[test]
    fn storable_data_passes() {
        for ok in [
            r#"{}"#,
            r#"{"s":"x\u0000y","n":-9223372036854775808,"m":9223372036854775807,"f":1.5e300}"#,
            r#"{"a":[1,[2,[3]],{"b":null,"c":true}],"$x":1,"a.b":2,"":3}"#,
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
        assert_eq!(check(&nested(MAX_DEPTH)), Ok(()));
    }

    #[test]
    fn each_unstorable_value_is_named_by_its_path() {
        let cases = [
            (r#"{"n":1e400}"#, "data.n: number out of range"),
            (r#"{"a":[0,{"big":9223372036854775808}]}"#, "data.a[1].big: the integer 9223372036854775808"),
            (r#"{"x":{"a\u0000b":1}}"#, r#"data.x: the key "a\\u0000b" contains a NUL character"#),
            (r#"{"deep":[-1e999]}"#, "data.deep[0]: number out of range"),
        ];
        for (json, expected) in cases {
            let message = check(json).unwrap_err();
            assert!(message.starts_with(expected), "{json}: {message}");
        }
    }

    #[test]
    fn nesting_past_the_limit_is_refused() {
        let message = check(&nested(MAX_DEPTH + 1)).unwrap_err();
        assert!(message.ends_with("nested more than 100 levels deep"), "{message}");
        assert!(message.starts_with("data.a.a.a"), "{message}");
        let arrays = format!("{{\"x\":{}{}}}", "[".repeat(150), "]".repeat(150));
        assert!(check(&arrays).unwrap_err().contains("nested more than 100"));
    }
}
