//! BSON bytes written straight into one buffer: the worker's documents without building a map of
//! each first and encoding it after.
//!
//! - [`DocWriter`]: a document's elements appended in order (strings, dates, integers), nested
//!   ones included, each length patched in when its document ends.
//! - [`DocWriter::json_object`]: an event's `data` from its JSON in one pass, literally (integers
//!   that fit 32 bits as `int32`, as the shell stores them, other integers `int64`, other numbers
//!   `double`; objects as the objects they are, keys in the order sent, no Extended JSON). It
//!   refuses what [`evp_events::data::check`] refuses (a number that does not fit, nesting past
//!   its depth, a NUL in a key) without saying why: the caller asks the check for the message,
//!   so worker and ingest word a refusal the same way.

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use std::fmt;

use evp_events::data::MAX_DEPTH;

const DOUBLE: u8 = 0x01;
const STRING: u8 = 0x02;
const DOCUMENT: u8 = 0x03;
const ARRAY: u8 = 0x04;
const BOOLEAN: u8 = 0x08;
const DATETIME: u8 = 0x09;
const NULL: u8 = 0x0A;
const INT32: u8 = 0x10;
const INT64: u8 = 0x12;

/// A BSON document being written; [`DocWriter::finish`] gives its bytes.
#[derive(Debug)]
pub struct DocWriter {
    buf: Vec<u8>,
}

/// `data` is not what the ingest accepts (the check says why).
#[derive(Debug)]
pub struct Refused;

impl DocWriter {
    /// A document with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(capacity);
        buf.extend_from_slice(&[0; 4]);
        Self { buf }
    }

    pub fn str(&mut self, key: &str, value: &str) {
        self.key(STRING, key);
        write_str(&mut self.buf, value);
    }

    pub fn datetime(&mut self, key: &str, ms: i64) {
        self.key(DATETIME, key);
        self.buf.extend_from_slice(&ms.to_le_bytes());
    }

    pub fn i32(&mut self, key: &str, value: i32) {
        self.key(INT32, key);
        self.buf.extend_from_slice(&value.to_le_bytes());
    }

    /// An empty document under `key`.
    pub fn empty_document(&mut self, key: &str) {
        self.key(DOCUMENT, key);
        self.buf.extend_from_slice(&5i32.to_le_bytes());
        self.buf.push(0);
    }

    /// The JSON object `json` as the document under `key`. Anything but an object is refused.
    pub fn json_object(&mut self, key: &str, json: &str) -> Result<(), Refused> {
        let mark = self.buf.len();
        self.key(DOCUMENT, key);
        let mut de = serde_json::Deserializer::from_str(json);
        let written = de.deserialize_any(Value { buf: &mut self.buf, depth: 0 }).and_then(|t| {
            de.end()?;
            Ok(t)
        });
        match written {
            Ok(DOCUMENT) => Ok(()),
            _ => {
                self.buf.truncate(mark);
                Err(Refused)
            }
        }
    }

    /// The document's bytes, its length written in.
    pub fn finish(mut self) -> Vec<u8> {
        self.buf.push(0);
        let len = self.buf.len() as i32;
        self.buf[..4].copy_from_slice(&len.to_le_bytes());
        self.buf
    }

    fn key(&mut self, element: u8, key: &str) {
        self.buf.push(element);
        self.buf.extend_from_slice(key.as_bytes());
        self.buf.push(0);
    }
}

fn write_str(buf: &mut Vec<u8>, value: &str) {
    buf.extend_from_slice(&(value.len() as i32 + 1).to_le_bytes());
    buf.extend_from_slice(value.as_bytes());
    buf.push(0);
}

/// Writes one JSON value at the end of `buf`; answers its BSON element type, which the caller
/// writes before the key it already wrote.
struct Value<'b> {
    buf: &'b mut Vec<u8>,
    /// Objects and arrays around the value (`data` itself is at 0).
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Value<'_> {
    type Value = u8;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<u8, D::Error> {
        d.deserialize_any(self)
    }
}

impl Value<'_> {
    /// Starts a nested document or array: its length is patched in by [`close`].
    fn open<E: de::Error>(&mut self) -> Result<usize, E> {
        if self.depth >= MAX_DEPTH {
            return Err(E::custom("nested too deep"));
        }
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        Ok(start)
    }
}

fn close(buf: &mut [u8], start: usize) {
    let len = (buf.len() - start) as i32;
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

impl<'de> Visitor<'de> for Value<'_> {
    type Value = u8;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<u8, E> {
        self.buf.push(u8::from(v));
        Ok(BOOLEAN)
    }
    fn visit_i64<E>(self, v: i64) -> Result<u8, E> {
        Ok(match i32::try_from(v) {
            Ok(small) => {
                self.buf.extend_from_slice(&small.to_le_bytes());
                INT32
            }
            Err(_) => {
                self.buf.extend_from_slice(&v.to_le_bytes());
                INT64
            }
        })
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u8, E> {
        let v = i64::try_from(v).map_err(|_| E::custom("does not fit a signed 64-bit integer"))?;
        self.visit_i64(v)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<u8, E> {
        if !v.is_finite() {
            return Err(E::custom("not finite"));
        }
        self.buf.extend_from_slice(&v.to_le_bytes());
        Ok(DOUBLE)
    }
    fn visit_str<E>(self, v: &str) -> Result<u8, E> {
        write_str(self.buf, v);
        Ok(STRING)
    }
    fn visit_unit<E>(self) -> Result<u8, E> {
        Ok(NULL)
    }
    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<u8, A::Error> {
        let start = self.open()?;
        loop {
            // The element's type byte goes here once its value is written.
            let at = self.buf.len();
            if map.next_key_seed(Key { buf: self.buf })?.is_none() {
                break;
            }
            let element = map.next_value_seed(Value { buf: self.buf, depth: self.depth + 1 })?;
            self.buf[at] = element;
        }
        self.buf.push(0);
        close(self.buf, start);
        Ok(DOCUMENT)
    }
    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<u8, A::Error> {
        let start = self.open()?;
        let mut index = 0usize;
        loop {
            let at = self.buf.len();
            self.buf.push(0);
            self.buf.extend_from_slice(index.to_string().as_bytes());
            self.buf.push(0);
            match seq.next_element_seed(Value { buf: self.buf, depth: self.depth + 1 })? {
                Some(element) => self.buf[at] = element,
                None => {
                    self.buf.truncate(at);
                    break;
                }
            }
            index += 1;
        }
        self.buf.push(0);
        close(self.buf, start);
        Ok(ARRAY)
    }
}

/// Writes an object key as a placeholder type byte and the key's C string.
struct Key<'b> {
    buf: &'b mut Vec<u8>,
}

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        if v.as_bytes().contains(&0) {
            return Err(E::custom("NUL in a key"));
        }
        self.buf.push(0); // the type byte, once the value is known
        self.buf.extend_from_slice(v.as_bytes());
        self.buf.push(0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::{Bson, Document, RawDocumentBuf, doc};

    fn written(json: &str) -> Result<Document, Refused> {
        let mut w = DocWriter::with_capacity(64);
        w.json_object("data", json)?;
        let raw = RawDocumentBuf::from_bytes(w.finish()).unwrap();
        Ok(Document::try_from(raw).unwrap().get_document("data").unwrap().clone())
    }

    #[test]
    fn json_is_written_as_the_bson_the_map_would_encode_to() {
        let json = r#"{"n":1,"neg":-2147483649,"big":5000000000,"f":1.5,"s":"h\u00e9\"","t":true,"z":null,
            "a":[1,[],{},"x",[2,[3]]],"o":{"$oid":"zz","":{"k":false}},"e":{},"esc\u00e9":"v"}"#;
        let expected = doc! {
            "n": 1, "neg": Bson::Int64(-2_147_483_649), "big": Bson::Int64(5_000_000_000), "f": 1.5, "s": "hé\"",
            "t": true, "z": Bson::Null,
            "a": [1, Bson::Array(vec![]), Document::new(), "x", Bson::Array(vec![Bson::Int32(2), Bson::Array(vec![Bson::Int32(3)])])],
            "o": {"$oid": "zz", "": {"k": false}}, "e": {}, "escé": "v",
        };
        assert_eq!(written(json).unwrap(), expected);
        let keys: Vec<String> = written(r#"{"z":1,"a":2,"m":3}"#).unwrap().keys().cloned().collect();
        assert_eq!(keys, ["z", "a", "m"], "keys in the order sent");
    }

    #[test]
    fn what_the_check_refuses_is_refused() {
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        let too_deep = format!("{{\"d\":{deep}}}");
        for json in
            [r#"{"a\u0000b":1}"#, r#"{"n":18446744073709551615}"#, r#"{"n":[1e999]}"#, &too_deep, "[1]", "3"]
        {
            assert!(written(json).is_err(), "{json}");
            if json.starts_with('{') {
                assert!(evp_events::data::check(json).is_err(), "the check agrees: {json}");
            }
        }
        let deepest = format!("{{\"d\":{}{}}}", "[".repeat(MAX_DEPTH - 1), "]".repeat(MAX_DEPTH - 1));
        assert!(written(&deepest).is_ok() && evp_events::data::check(&deepest).is_ok());
    }

    #[test]
    fn a_refused_value_leaves_the_document_as_it_was() {
        let mut w = DocWriter::with_capacity(64);
        w.str("before", "x");
        assert!(w.json_object("data", r#"{"ok":1,"bad":1e999}"#).is_err());
        w.i32("after", 7);
        let doc = Document::try_from(RawDocumentBuf::from_bytes(w.finish()).unwrap()).unwrap();
        assert_eq!(doc, doc! {"before": "x", "after": 7});
    }
}
