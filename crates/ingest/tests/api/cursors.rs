//! Page cursors outlive API key changes and cursor-secret rotations, on every replica.

use serde_json::{Value, json};

use crate::helpers::TestApp;
use crate::read::{ReadApp, ids};

/// Another ingest replica reading `r`'s database, with its own key list and `CURSOR_SECRET`.
async fn replica(r: &ReadApp, keys: &'static str, secret: Option<&'static str>) -> TestApp {
    let database = r.database.clone();
    TestApp::spawn_with(r.mongo.uri(), move |c| {
        c.common.mongodb_database = database;
        c.api_keys = evp_ingest::keys::ApiKeys::parse(keys).unwrap();
        c.cursor_secret = secret.map(str::to_owned);
    })
    .await
}

async fn page(app: &TestApp, key: &str, path: &str) -> (u16, Value) {
    let resp = app.http.get(app.url(path)).header("x-api-key", key).send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

async fn ten_events(r: &ReadApp) -> Vec<String> {
    let events: Vec<Value> = (0..10).map(|i| json!({"type": "c", "id": format!("c-{i}")})).collect();
    r.send("key-acme", &events).await;
    r.store_stream().await;
    ids(r.page("key-acme", "/events?limit=10").await["events"].as_array().unwrap())
}

#[tokio::test]
async fn a_cursor_opens_on_a_replica_with_other_api_keys() {
    let r = ReadApp::start().await;
    let all = ten_events(&r).await;
    let first = r.page("key-acme", "/events?limit=4").await;
    let cursor = first["next_cursor"].as_str().unwrap().to_string();

    // A replica whose API_KEYS gained a tenant (before this change, its cursors had another key).
    let other = replica(&r, "acme:key-acme,newcorp:key-new", None).await;
    let (status, second) = page(&other, "key-acme", &format!("/events?limit=4&cursor={cursor}")).await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(ids(second["events"].as_array().unwrap()), all[4..8], "the next page, from the other replica");
    // And the other way round.
    let back = second["next_cursor"].as_str().unwrap();
    let third = r.page("key-acme", &format!("/events?limit=4&cursor={back}")).await;
    assert_eq!(ids(third["events"].as_array().unwrap()), all[8..]);
}

#[tokio::test]
async fn a_cursor_outlives_the_key_it_was_read_with() {
    let r = ReadApp::start().await;
    let all = ten_events(&r).await;
    let made = r
        .app
        .http
        .post(r.app.url("/admin/keys"))
        .header("x-api-key", crate::read::OPS_KEY)
        .header("content-type", "application/json")
        .body(json!({"tenant": "acme", "name": "reader"}).to_string())
        .send()
        .await
        .unwrap();
    let made: Value = made.json().await.unwrap();
    let (id, key) = (made["id"].as_str().unwrap(), made["key"].as_str().unwrap());
    let first = r.page(key, "/events?limit=5").await;
    let cursor = first["next_cursor"].as_str().unwrap().to_string();
    let revoked = r
        .app
        .http
        .delete(r.app.url(&format!("/admin/keys/{id}")))
        .header("x-api-key", crate::read::OPS_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 204);
    assert_eq!(r.get(key, "/events?limit=5").await.status(), 401, "the key is gone");
    // The tenant's other key goes on from the same cursor.
    let rest = r.page("key-acme", &format!("/events?limit=5&cursor={cursor}")).await;
    assert_eq!(ids(rest["events"].as_array().unwrap()), all[5..]);
}

#[tokio::test]
async fn a_rotated_cursor_secret_keeps_the_previous_one_for_an_hour_on_every_replica() {
    let r = ReadApp::start().await;
    let all = ten_events(&r).await;
    let keys = "acme:key-acme";
    let old = replica(&r, keys, Some("the-first-cursor-secret")).await;
    let (_, first) = page(&old, "key-acme", "/events?limit=4").await;
    let old_cursor = first["next_cursor"].as_str().unwrap().to_string();

    // A replica deployed with a new secret rotates: the old cursor still opens there.
    let new = replica(&r, keys, Some("the-second-cursor-secret")).await;
    let (status, second) = page(&new, "key-acme", &format!("/events?limit=4&cursor={old_cursor}")).await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(ids(second["events"].as_array().unwrap()), all[4..8]);
    let new_cursor = second["next_cursor"].as_str().unwrap().to_string();

    // The replica still on the old secret learns the new one from MongoDB when a cursor names it.
    let opened = evp_testkit::eventually(std::time::Duration::from_secs(15), || async {
        page(&old, "key-acme", &format!("/events?limit=4&cursor={new_cursor}")).await.0 == 200
    })
    .await;
    assert!(opened, "the old replica never followed the rotation");

    // An hour later (moved by hand), the previous secret opens nothing on a fresh replica.
    let settings =
        r.mongo.client().await.database(&r.database).collection::<mongodb::bson::Document>("settings");
    let past = mongodb::bson::DateTime::from_millis(evp_runtime::now_ms() - 1);
    settings
        .update_one(
            mongodb::bson::doc! {"_id": "cursor_secret"},
            mongodb::bson::doc! {"$set": {"previous.until": past}},
        )
        .await
        .unwrap();
    let later = replica(&r, keys, Some("the-second-cursor-secret")).await;
    let (status, body) = page(&later, "key-acme", &format!("/events?limit=4&cursor={old_cursor}")).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_query")), "{body}");
    assert_eq!(page(&later, "key-acme", &format!("/events?limit=4&cursor={new_cursor}")).await.0, 200);
    // The secret itself is stored for the replicas, never sent in an answer.
    assert!(!body.to_string().contains("the-second-cursor-secret"));
}
