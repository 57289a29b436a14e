//! From a stream entry to the MongoDB document (SPEC's "MongoDB data"), encoded as BSON here.
//!
//! `data` is written from its JSON by [`crate::bson_writer`] rather than by the `bson` crate's
//! deserializer, which reads MongoDB Extended JSON: through it `{"$numberLong": "5"}` would be
//! stored as the number 5 and `{"$oid": "zz"}` would fail. Here every object is stored as the
//! object it is, keys in the order sent. The writer refuses what the ingest's own check
//! ([`evp_events::data::check`]) refuses, and the check then words the refusal, so an entry the
//! ingest would refuse (written to the stream by something else) is refused here with the same
//! message.
//!
//! Each document is encoded on its own, so one that cannot be encoded, or is larger than MongoDB
//! stores, is refused alone (and dead-lettered) instead of failing its whole batch.

use std::fmt;

use evp_events::{EntryId, entry};

use crate::indexes::event_key;
use mongodb::bson::RawDocumentBuf;
use serde_json::value::RawValue;

use crate::bson_writer::DocWriter;

/// Fields of an entry as read from Redis.
pub type Fields = Vec<(String, Vec<u8>)>;

/// Largest document MongoDB stores (`maxBsonObjectSize`), less room for the `_id` the driver adds.
pub const MAX_DOCUMENT_BYTES: usize = 16 * 1024 * 1024 - 64;

/// Why an entry cannot become a document. It goes to the dead-letter stream with this reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unusable {
    /// The dead-letter reason label: `undecodable` (not an entry this build can read) or
    /// `unstorable` (an event MongoDB cannot store exactly as sent).
    pub kind: &'static str,
    pub reason: String,
}

impl Unusable {
    fn undecodable(reason: impl fmt::Display) -> Self {
        Self { kind: "undecodable", reason: format!("undecodable: {reason}") }
    }
    fn unstorable(reason: impl fmt::Display) -> Self {
        Self { kind: "unstorable", reason: format!("unstorable: {reason}") }
    }
}

/// Where an entry sat in the stream: its partition (0 for the single stream) and its entry id.
#[derive(Debug, Clone, Copy)]
pub struct Position<'a> {
    pub partition: i32,
    /// The stream entry id, `<ms>-<seq>`.
    pub entry_id: &'a str,
}

/// Builds and encodes the document for an entry at `position`, written straight as BSON
/// ([`crate::bson_writer`]) in the layout of SPEC's "MongoDB data".
pub fn to_document(fields: &Fields, position: Position<'_>) -> Result<RawDocumentBuf, Unusable> {
    let payload = fields
        .iter()
        .find(|(name, _)| name == entry::FIELD)
        .map(|(_, value)| value)
        .ok_or_else(|| Unusable::undecodable(entry::DecodeError::MissingField))?;
    let event = entry::decode(payload).map_err(Unusable::undecodable)?;
    let seq = EntryId::parse(position.entry_id)
        .map(EntryId::sortable)
        .ok_or_else(|| Unusable::undecodable(format!("{:?} is not a stream entry id", position.entry_id)))?;
    if event.tenant.contains(':') {
        // `_id` joins tenant and id with ':'; no tenant the ingest accepts holds one.
        return Err(Unusable::unstorable(format!("tenant {:?} holds ':'", event.tenant)));
    }
    let mut doc = DocWriter::with_capacity(payload.len() + 256);
    doc.str("_id", &event_key(&event.tenant, &event.id));
    doc.str("tenant", &event.tenant);
    doc.str("event_id", &event.id);
    doc.str("type", &event.event_type);
    doc.datetime("timestamp", event.timestamp_ms);
    doc.datetime("received_at", event.received_at_ms);
    match event.data.as_deref().map(RawValue::get) {
        None | Some("null") => doc.empty_document("data"),
        Some(json) => doc.json_object("data", json).map_err(|_| {
            // The check words the refusal as the ingest does; anything it lets through that is
            // still not an object is said plainly.
            Unusable::unstorable(
                evp_events::data::check(json).err().unwrap_or_else(|| "data is not a JSON object".into()),
            )
        })?,
    }
    for (name, value) in [
        ("source", &event.source),
        ("aggregate_id", &event.aggregate_id),
        ("correlation_id", &event.correlation_id),
        ("causation_id", &event.causation_id),
    ] {
        if let Some(value) = value {
            doc.str(name, value);
        }
    }
    doc.i32("partition", position.partition);
    doc.str("seq", &seq);
    let bytes = doc.finish();
    if bytes.len() > MAX_DOCUMENT_BYTES {
        return Err(Unusable::unstorable(format!(
            "the document is {} bytes of BSON; MongoDB stores at most {MAX_DOCUMENT_BYTES}",
            bytes.len()
        )));
    }
    RawDocumentBuf::from_bytes(bytes).map_err(Unusable::unstorable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use evp_events::input::{Admission, Limits, admit_one};
    use mongodb::bson::{Bson, Document};

    fn fields_for(body: &str) -> Fields {
        let e = admit_one(body.as_bytes(), &Admission::new("acme", 1_000, Limits::default())).unwrap();
        vec![(entry::FIELD.to_string(), e.payload)]
    }

    const AT: Position<'static> = Position { partition: 0, entry_id: "1700000000000-7" };

    fn document(fields: &Fields) -> Document {
        Document::try_from(to_document(fields, AT).unwrap()).unwrap()
    }

    /// An entry as something other than the ingest might write it, with `data` as given.
    fn raw_entry(data: &str) -> Fields {
        let payload = format!(r#"{{"v":1,"tenant":"t","id":"i","type":"x","ts":1,"rcv":1,"data":{data}}}"#);
        vec![(entry::FIELD.to_string(), payload.into_bytes())]
    }

    #[test]
    fn document_has_the_contract_fields() {
        let doc = document(&fields_for(
            r#"{"type":"t","id":"i","timestamp":"1970-01-01T00:00:02Z","source":"s","data":{"n":1,"big":5000000000,"f":1.5,"a":[true,null],"o":{"x":"y"}}}"#,
        ));
        assert_eq!(doc.get_str("_id").unwrap(), "acme:i", "_id carries (tenant, id)");
        assert_eq!(doc.keys().next().unwrap(), "_id");
        assert_eq!(doc.get_str("tenant").unwrap(), "acme");
        assert_eq!(doc.get_str("event_id").unwrap(), "i");
        assert_eq!(doc.get_str("type").unwrap(), "t");
        assert_eq!(doc.get_datetime("timestamp").unwrap().timestamp_millis(), 2_000);
        assert_eq!(doc.get_datetime("received_at").unwrap().timestamp_millis(), 1_000);
        assert_eq!(doc.get_str("source").unwrap(), "s");
        assert!(!doc.contains_key("aggregate_id"), "absent optionals are not stored");
        assert_eq!(doc.get_i32("partition").unwrap(), 0);
        assert_eq!(doc.get_str("seq").unwrap(), "00000001700000000000-00000000000000000007");
        let data = doc.get_document("data").unwrap();
        assert_eq!(
            data.get("n"),
            Some(&Bson::Int32(1)),
            "small integers are int32, as the shell stores them"
        );
        assert_eq!(data.get("big"), Some(&Bson::Int64(5_000_000_000)));
        assert_eq!(data.get("f"), Some(&Bson::Double(1.5)));
        assert_eq!(data.get("a"), Some(&Bson::Array(vec![Bson::Boolean(true), Bson::Null])));
        assert_eq!(data.get_document("o").unwrap().get_str("x").unwrap(), "y");
    }

    #[test]
    fn data_is_stored_literally_in_the_order_sent() {
        let doc = document(&fields_for(
            r#"{"type":"t","data":{"z":1,"$numberLong":"5","id":{"$oid":"zz"},"d":{"$date":1},"a.b":2,"":3}}"#,
        ));
        let data = doc.get_document("data").unwrap();
        let keys: Vec<&str> = data.keys().map(String::as_str).collect();
        assert_eq!(keys, ["z", "$numberLong", "id", "d", "a.b", ""]);
        assert_eq!(data.get_str("$numberLong").unwrap(), "5", "no Extended JSON reinterpretation");
        assert_eq!(data.get_document("id").unwrap().get_str("$oid").unwrap(), "zz");
        assert_eq!(data.get_document("d").unwrap().get_i32("$date").unwrap(), 1);
    }

    #[test]
    fn absent_and_null_data_are_an_empty_document() {
        assert!(document(&fields_for(r#"{"type":"t"}"#)).get_document("data").unwrap().is_empty());
        assert!(
            document(&fields_for(r#"{"type":"t","data":null}"#)).get_document("data").unwrap().is_empty()
        );
    }

    #[test]
    fn undecodable_entries_say_why() {
        let missing = to_document(&vec![("other".into(), b"x".to_vec())], AT).unwrap_err();
        assert_eq!(missing.kind, "undecodable");
        assert!(missing.reason.contains("no field"), "{missing:?}");
        let broken = to_document(&vec![("e".into(), b"{broken".to_vec())], AT).unwrap_err();
        assert!(broken.reason.contains("not a valid"), "{broken:?}");
    }

    #[test]
    fn data_the_ingest_would_refuse_is_unstorable_with_the_same_message() {
        for data in [r#"{"a\u0000b":1}"#, r#"{"n":18446744073709551615}"#, r#"{"n":[1e999]}"#] {
            let refused = to_document(&raw_entry(data), AT).unwrap_err();
            assert_eq!(refused.kind, "unstorable", "{data}");
            let expected = evp_events::data::check(data).unwrap_err();
            assert_eq!(refused.reason, format!("unstorable: {expected}"));
        }
    }

    #[test]
    fn a_tenant_holding_a_colon_is_unstorable() {
        let payload = br#"{"v":1,"tenant":"a:b","id":"c","type":"x","ts":1,"rcv":1}"#.to_vec();
        let refused = to_document(&vec![(entry::FIELD.to_string(), payload)], AT).unwrap_err();
        assert_eq!(refused.kind, "unstorable");
        assert!(refused.reason.contains("holds ':'"), "{refused:?}");
    }

    #[test]
    fn a_document_over_16_mib_is_unstorable() {
        let data = format!(r#"{{"pad":"{}"}}"#, "p".repeat(MAX_DOCUMENT_BYTES));
        let refused = to_document(&raw_entry(&data), AT).unwrap_err();
        assert_eq!(refused.kind, "unstorable");
        assert!(refused.reason.contains("MongoDB stores at most"), "{refused:?}");
    }
}
