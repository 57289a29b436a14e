//! A projection of your own: active users per plan, kept in a MongoDB collection of yours from
//! the subscription `active-users` (types `signed_up`, `plan_changed`, `cancelled`; the user is the
//! event's `aggregate_id`, the plan `data.plan`).
//!
//! Idempotent, as at-least-once delivery needs: each user's document is written only by an event
//! later in the user's stream than the one it holds (`seq`), so a batch delivered twice changes
//! nothing the second time. Run it against `scripts/up.sh`:
//!
//! ```sh
//! EVP_URL=http://127.0.0.1:3000 EVP_API_KEY=demo-key MONGODB_URI=mongodb://127.0.0.1:27017 \
//!   cargo run -p evp-client --example active_users
//! curl -s -X POST $EVP_URL/events/batch -H "x-api-key: $EVP_API_KEY" -H 'content-type: application/json' \
//!   -d '[{"type":"signed_up","aggregate_id":"u-1","data":{"plan":"pro"}},
//!        {"type":"signed_up","aggregate_id":"u-2","data":{"plan":"free"}},
//!        {"type":"plan_changed","aggregate_id":"u-2","data":{"plan":"pro"}}]'
//! ```
//!
//! It prints the active users per plan after each batch; Ctrl-C stops it after the batch in hand.
//! Against `scripts/up.sh` the three events above print
//! `active users per plan: [{"_id": "pro", "users": 2}]` (u-2 moved from free to pro). Then, with
//! the projector stopped, a reset to the beginning (`POST /subscriptions/active-users/reset`
//! `{"to":"beginning"}`) and `cancelled` for u-1, `page_view` for u-3 and `signed_up` (free) for
//! u-4 sent, the restarted projector is given the five events of its types again from the start
//! and prints `[{"_id": "pro", "users": 1}, {"_id": "free", "users": 1}]`: the three it had
//! already applied changed nothing, the page view was never delivered.

use evp_client::{Client, Delivered, Subscriber, SubscriberConfig};
use mongodb::bson::{Document, doc};

/// `<ms>-<n>` as a pair that compares in stream order.
fn position(seq: &str) -> (i64, i64) {
    let (ms, n) = seq.split_once('-').unwrap_or(("0", "0"));
    (ms.parse().unwrap_or(0), n.parse().unwrap_or(0))
}

async fn apply(users: &mongodb::Collection<Document>, event: &Delivered) -> mongodb::error::Result<()> {
    let Some(user) = &event.aggregate_id else { return Ok(()) };
    let (ms, n) = position(&event.seq);
    let state = match event.event_type.as_str() {
        "cancelled" => doc! { "active": false },
        _ => doc! { "active": true, "plan": event.data["plan"].as_str().unwrap_or("unknown") },
    };
    let mut set = state;
    set.insert("ms", ms);
    set.insert("n", n);
    set.insert("event_id", &event.id);
    // Only a later event of this user's stream writes; an older or the same one finds no document
    // to update and its upsert collides with the user's `_id` (duplicate key): already applied.
    let newer = doc! { "_id": user, "$or": [{ "ms": { "$lt": ms } }, { "ms": ms, "n": { "$lt": n } }] };
    match users.update_one(newer, doc! { "$set": set }).upsert(true).await {
        Err(e) if duplicate_id(&e) => Ok(()),
        other => other.map(|_| ()),
    }
}

/// The upsert's insert met the user's existing `_id` (code 11000 on the `_id` index): this event
/// is not newer than the one the document holds.
fn duplicate_id(e: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    matches!(&*e.kind, ErrorKind::Write(WriteFailure::WriteError(w)) if w.code == 11000)
}

async fn print_counts(users: &mongodb::Collection<Document>) -> mongodb::error::Result<()> {
    use futures::TryStreamExt;
    let pipeline = [
        doc! { "$match": { "active": true } },
        doc! { "$group": { "_id": "$plan", "users": { "$sum": 1 } } },
    ];
    let counts: Vec<Document> = users.aggregate(pipeline).await?.try_collect().await?;
    println!("active users per plan: {counts:?}");
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("EVP_URL").unwrap_or_else(|_| "http://127.0.0.1:3000".into());
    let key = std::env::var("EVP_API_KEY").unwrap_or_else(|_| "demo-key".into());
    let mongo_uri = std::env::var("MONGODB_URI").unwrap_or_else(|_| "mongodb://127.0.0.1:27017".into());
    let users =
        mongodb::Client::with_uri_str(&mongo_uri).await?.database("projections").collection("active_users");

    let mut config = SubscriberConfig::new("active-users-1");
    config.types = vec!["signed_up".into(), "plan_changed".into(), "cancelled".into()];
    let subscriber = Subscriber::new(Client::new(url, key)?, "active-users", config);
    let stop = subscriber.stop_handle();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.stop();
    });
    let stats = subscriber
        .run(|batch: Vec<Delivered>| {
            let users = users.clone();
            async move {
                for event in &batch {
                    apply(&users, event).await?;
                }
                print_counts(&users).await
            }
        })
        .await?;
    println!("stopped: {stats:?}");
    Ok(())
}
