//! From a stream entry to the MongoDB document (SPEC's "MongoDB data").

use evp_events::{StoredEvent, entry};
use mongodb::bson::{DateTime, Document, doc};

/// Fields of an entry as read from Redis.
pub type Fields = Vec<(String, Vec<u8>)>;

/// Builds the document for an entry, or says why it cannot be decoded (it then goes to the
/// dead-letter stream).
pub fn to_document(fields: &Fields) -> Result<Document, String> {
    let payload = fields
        .iter()
        .find(|(name, _)| name == entry::FIELD)
        .map(|(_, value)| value)
        .ok_or_else(|| entry::DecodeError::MissingField.to_string())?;
    let event = entry::decode(payload).map_err(|e| e.to_string())?;
    build(event)
}

fn build(event: StoredEvent) -> Result<Document, String> {
    let data: Document = match &event.data {
        None => Document::new(),
        Some(raw) => {
            serde_json::from_str(raw.get()).map_err(|e| format!("data cannot be stored as BSON: {e}"))?
        }
    };
    let mut doc = doc! {
        "tenant": event.tenant,
        "event_id": event.id,
        "type": event.event_type,
        "timestamp": DateTime::from_millis(event.timestamp_ms),
        "received_at": DateTime::from_millis(event.received_at_ms),
        "data": data,
    };
    for (name, value) in [
        ("source", event.source),
        ("aggregate_id", event.aggregate_id),
        ("correlation_id", event.correlation_id),
        ("causation_id", event.causation_id),
    ] {
        if let Some(value) = value {
            doc.insert(name, value);
        }
    }
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use evp_events::input::{Admission, Limits, admit_one};
    use mongodb::bson::Bson;

    fn fields_for(body: &str) -> Fields {
        let adm = Admission { tenant: "acme", received_at_ms: 1_000, limits: Limits::default() };
        let e = admit_one(body.as_bytes(), &adm).unwrap();
        vec![(entry::FIELD.to_string(), e.payload)]
    }

    #[test]
    fn document_has_the_contract_fields() {
        let doc = to_document(&fields_for(
            r#"{"type":"t","id":"i","timestamp":"1970-01-01T00:00:02Z","source":"s","data":{"n":1,"big":5000000000,"f":1.5,"a":[true,null],"o":{"x":"y"}}}"#,
        ))
        .unwrap();
        assert_eq!(doc.get_str("tenant").unwrap(), "acme");
        assert_eq!(doc.get_str("event_id").unwrap(), "i");
        assert_eq!(doc.get_str("type").unwrap(), "t");
        assert_eq!(doc.get_datetime("timestamp").unwrap().timestamp_millis(), 2_000);
        assert_eq!(doc.get_datetime("received_at").unwrap().timestamp_millis(), 1_000);
        assert_eq!(doc.get_str("source").unwrap(), "s");
        assert!(!doc.contains_key("aggregate_id"), "absent optionals are not stored");
        let data = doc.get_document("data").unwrap();
        assert_eq!(
            data.get("n"),
            Some(&Bson::Int32(1)),
            "small integers are int32, as the shell stores them"
        );
        assert_eq!(data.get("big"), Some(&Bson::Int64(5_000_000_000)));
        assert_eq!(data.get("f"), Some(&Bson::Double(1.5)));
        assert_eq!(data.get_document("o").unwrap().get_str("x").unwrap(), "y");
    }

    #[test]
    fn absent_data_is_an_empty_document() {
        let doc = to_document(&fields_for(r#"{"type":"t"}"#)).unwrap();
        assert!(doc.get_document("data").unwrap().is_empty());
    }

    #[test]
    fn undecodable_entries_say_why() {
        assert!(to_document(&vec![("other".into(), b"x".to_vec())]).unwrap_err().contains("no field"));
        assert!(to_document(&vec![("e".into(), b"{broken".to_vec())]).unwrap_err().contains("not a valid"));
    }
}
