//! The body rules, through the public functions.

use super::*;

const NOW: i64 = 1_700_000_000_000;

fn admission() -> Admission<'static> {
    Admission::new("acme", NOW, Limits::default())
}

fn problems(err: BodyError) -> Vec<Problem> {
    match err {
        BodyError::InvalidEvents(p) | BodyError::TooLarge { problems: p, .. } => p,
        other => panic!("expected event problems, got {other:?}"),
    }
}

#[test]
fn minimal_event_gets_uuid_v7_and_receive_time() {
    let e = admit_one(br#"{"type":"page_view"}"#, &admission()).unwrap();
    let id = uuid::Uuid::parse_str(&e.id).unwrap();
    assert_eq!(id.get_version_num(), 7);
    let stored = crate::entry::decode(&e.payload).unwrap();
    assert_eq!(stored.timestamp_ms, NOW);
    assert_eq!(stored.received_at_ms, NOW);
    assert_eq!(stored.tenant, "acme");
}

#[test]
fn client_id_and_timestamp_are_kept() {
    let body = br#"{"type":"a.b:c-d_e","id":"k-1","timestamp":"2024-05-01T12:00:00.123+02:00"}"#;
    let e = admit_one(body, &admission()).unwrap();
    assert_eq!(e.id, "k-1");
    let stored = crate::entry::decode(&e.payload).unwrap();
    assert_eq!(stored.timestamp_ms, 1_714_557_600_123);
}

#[test]
fn type_rules() {
    for bad in ["", "has space", "émoji", &"x".repeat(129)] {
        let body = serde_json::json!({ "type": bad }).to_string();
        let p = problems(admit_one(body.as_bytes(), &admission()).unwrap_err());
        assert_eq!(p[0].field, Some("type"), "{bad:?}");
    }
    let ok = serde_json::json!({ "type": "x".repeat(128) }).to_string();
    assert!(admit_one(ok.as_bytes(), &admission()).is_ok());
}

#[test]
fn every_problem_of_an_event_is_reported() {
    let body = serde_json::json!({
        "type": "ok", "id": "", "timestamp": "yesterday", "source": "s".repeat(257), "data": [1]
    })
    .to_string();
    let p = problems(admit_one(body.as_bytes(), &admission()).unwrap_err());
    let fields: Vec<_> = p.iter().filter_map(|p| p.field).collect();
    assert_eq!(fields, ["id", "timestamp", "source", "data"]);
}

#[test]
fn missing_type_and_unknown_fields_are_invalid_events() {
    let p = problems(admit_one(br#"{"data":{}}"#, &admission()).unwrap_err());
    assert!(p[0].message.contains("missing field `type`"), "{p:?}");
    let p = problems(admit_one(br#"{"type":"a","tenant":"other"}"#, &admission()).unwrap_err());
    assert!(p[0].message.contains("unknown field `tenant`"), "{p:?}");
}

#[test]
fn malformed_json_and_wrong_shapes() {
    assert!(matches!(admit_one(b"{\"type\":", &admission()), Err(BodyError::InvalidJson(_))));
    assert!(matches!(admit_one(b"[]", &admission()), Err(BodyError::InvalidJson(_))));
    assert!(matches!(admit_one(br#"{"type":"a"} {}"#, &admission()), Err(BodyError::InvalidJson(_))));
    assert!(matches!(admit_one(b"{\"type\":\"a\xff\"}", &admission()), Err(BodyError::InvalidJson(_))));
    assert!(matches!(admit_batch(b"42", &admission()), Err(BodyError::InvalidJson(_))));
    assert!(matches!(admit_batch(b"", &admission()), Err(BodyError::InvalidJson(_))));
    assert!(matches!(admit_batch(br#"{"evnts":[]}"#, &admission()), Err(BodyError::InvalidJson(_))));
    assert!(matches!(admit_batch(b"[", &admission()), Err(BodyError::InvalidJson(_))));
}

#[test]
fn batch_forms_and_per_index_problems() {
    let a = admit_batch(br#"[{"type":"a"},{"type":"b"}]"#, &admission()).unwrap();
    let b = admit_batch(br#" {"events":[{"type":"a"},{"type":"b"}]}"#, &admission()).unwrap();
    assert_eq!((a.len(), b.len()), (2, 2));

    let p =
        problems(admit_batch(br#"[{"type":"a"},{"type":"b c"},7,{"type":"d"}]"#, &admission()).unwrap_err());
    let indexes: Vec<_> = p.iter().map(|p| p.index).collect();
    assert_eq!(indexes, [Some(1), Some(2)]);
    assert!(matches!(admit_batch(b"[]", &admission()), Err(BodyError::InvalidEvents(_))));
}

#[test]
fn size_limits() {
    let limits = Limits { max_event_bytes: 200, max_batch_events: 2 };
    let adm = Admission { limits, ..admission() };
    assert!(matches!(
        admit_batch(br#"[{"type":"a"},{"type":"a"},{"type":"a"}]"#, &adm),
        Err(BodyError::TooLarge { .. })
    ));
    let big = serde_json::json!([{"type": "a"}, {"type": "b", "data": {"pad": "p".repeat(300)}}]).to_string();
    let p = problems(admit_batch(big.as_bytes(), &adm).unwrap_err());
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].index, Some(1));
    let one = serde_json::json!({"type": "b", "data": {"pad": "p".repeat(300)}}).to_string();
    let p = problems(admit_one(one.as_bytes(), &adm).unwrap_err());
    assert_eq!((p.len(), p[0].index), (1, None));
    assert!(p[0].message.contains("MAX_EVENT_BYTES"), "{p:?}");
}

#[test]
fn refused_bodies_are_counted_by_their_events() {
    assert_eq!(count_events(br#"[{"type":"a"},{"type":"b c"},7]"#, true), 3);
    assert_eq!(count_events(br#"{"events":[{"type":"a"}]}"#, true), 1);
    assert_eq!(count_events(b"[", true), 0);
    assert_eq!(count_events(br#"{"type":"bad type"}"#, false), 1);
    assert_eq!(count_events(b"nope", false), 0);
}

#[test]
fn escaped_strings_and_null_optionals() {
    let body = br#"{"type":"a","source":"line\nbreak","data":null,"aggregate_id":null}"#;
    let e = admit_one(body, &admission()).unwrap();
    let stored = crate::entry::decode(&e.payload).unwrap();
    assert_eq!(stored.source.as_deref(), Some("line\nbreak"));
    assert_eq!(stored.aggregate_id, None);
    assert!(stored.data.is_none());
}

#[test]
fn data_mongodb_cannot_store_exactly_is_an_invalid_event() {
    for (body, expected) in [
        (r#"{"type":"x","data":{"a\u0000b":1}}"#, "contains a NUL character"),
        (r#"{"type":"x","data":{"n":1e400}}"#, "number out of range"),
        (r#"{"type":"x","data":{"n":18446744073709551615}}"#, "does not fit a signed 64-bit"),
    ] {
        let p = problems(admit_one(body.as_bytes(), &admission()).unwrap_err());
        assert_eq!((p.len(), p[0].field), (1, Some("data")), "{body}: {p:?}");
        assert!(p[0].message.contains(expected), "{body}: {p:?}");
    }
    let deep =
        format!(r#"[{{"type":"ok"}},{{"type":"x","data":{}1{}}}]"#, "{\"a\":".repeat(150), "}".repeat(150));
    let p = problems(admit_batch(deep.as_bytes(), &admission()).unwrap_err());
    assert_eq!((p.len(), p[0].index, p[0].field), (1, Some(1), Some("data")), "{p:?}");
    assert!(p[0].message.contains("nested more than 100 levels"), "{p:?}");
}

#[test]
fn an_idempotency_key_derives_the_same_ids_for_the_same_request() {
    let body = br#"[{"type":"a"},{"type":"b","id":"own"},{"type":"c"}]"#;
    let keyed = |tenant, key| Admission {
        idempotency_key: Some(key),
        ..Admission::new(tenant, NOW, Limits::default())
    };
    let ids =
        |adm: &Admission<'_>| admit_batch(body, adm).unwrap().into_iter().map(|e| e.id).collect::<Vec<_>>();
    let first = ids(&keyed("acme", "req-1"));
    assert_eq!(first, ids(&keyed("acme", "req-1")), "a retry gets the same ids");
    assert_eq!(first[1], "own", "an event's own id wins");
    assert_ne!(first[0], first[2], "each index its own id");
    assert_ne!(first, ids(&keyed("acme", "req-2")));
    assert_ne!(first[0], ids(&keyed("other", "req-1"))[0], "tenants never share derived ids");
    let single = admit_one(br#"{"type":"a"}"#, &keyed("acme", "req-1")).unwrap();
    assert_eq!(single.id, first[0], "a single event is index 0");
    assert_ne!(ids(&admission()), ids(&admission()), "without a key, fresh ids each time");
}

#[test]
fn idempotency_keys_are_checked() {
    assert_eq!(check_idempotency_key(b"abc-123 x").unwrap(), "abc-123 x");
    for bad in [&b""[..], &[b'k'; 129][..], b"caf\xc3\xa9", b"tab\there"] {
        assert_eq!(check_idempotency_key(bad).unwrap_err().field, Some("Idempotency-Key"), "{bad:?}");
    }
}
