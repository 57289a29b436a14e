//! API keys as data: created, listed and revoked at runtime, kept in MongoDB (collection
//! `api_keys`), and followed by every replica within `KEY_REFRESH_MS`.
//!
//! - A key's secret is `evp_<id>_<secret>`: the id (16 hex digits) finds the key in one lookup,
//!   the secret (256 random bits, hex) is shown once at creation and never stored; only its
//!   SHA-256 is, compared in constant time. (A high-entropy secret needs no slow hash: nothing can
//!   guess it from its digest.)
//! - Authentication never waits for MongoDB: each replica keeps the whole key set in memory and
//!   reloads it every `KEY_REFRESH_MS` ([`KeyStore::spawn_refresh`]). A key revoked on one replica
//!   is dropped there at once and on the others at their next reload; an expired key is refused
//!   by its `expires_at` on every replica, reload or not. While MongoDB cannot be read, the last
//!   set keeps serving and [`KeyStore::is_stale`] says so.
//! - Why MongoDB rather than Redis: keys must outlive the stream's store (a Redis that lost its
//!   data, or was replaced, must not lock every tenant out), they are few and read in bulk, and
//!   every replica already talks to MongoDB for reads.
//!
//! Keys from `API_KEYS` and `ADMIN_KEYS` keep working beside these ([`crate::keys`]).
//!
//! Here: the store, authentication and reloading; `fields`: what a key is (its role, the fields an
//! operator sees, a new key's checks).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::TryStreamExt;
use mongodb::Collection;
use mongodb::bson::{DateTime, Document, doc};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

use crate::limiters::rate::{KeyLimit, Limit, default_burst};

mod fields;

use fields::info;
pub use fields::{KeyInfo, NewKey, Role};

/// What authentication needs of one key.
#[derive(Clone)]
struct Known {
    digest: [u8; 32],
    tenant: Option<Arc<str>>,
    role: Role,
    expires_at_ms: Option<i64>,
    revoked: bool,
    limit: Option<KeyLimit>,
}

/// Who a presented secret belongs to.
#[derive(Debug, Clone, PartialEq)]
pub enum Holder {
    /// A tenant, and the key's own limit when it has one.
    Tenant(Arc<str>, Option<KeyLimit>),
    Operator {
        key_id: Arc<str>,
    },
}

/// The key set in MongoDB and this replica's copy of it.
#[derive(Clone)]
pub struct KeyStore {
    keys: Collection<Document>,
    known: Arc<RwLock<Arc<HashMap<String, Known>>>>,
    stale: Arc<AtomicBool>,
    /// A key's burst when it gives only a rate: at least this (`MAX_BATCH_EVENTS`).
    min_burst: u64,
    /// When this replica last wrote each key's `last_used_at`.
    last_used: Arc<Mutex<HashMap<String, i64>>>,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.known.read().unwrap_or_else(|p| p.into_inner()).len();
        f.debug_struct("KeyStore").field("keys", &n).finish_non_exhaustive()
    }
}

/// `last_used_at` is written at most this often per key and replica, and kept to the minute.
const TOUCH_EVERY_MS: i64 = 60_000;

/// Prefix of every secret created here.
pub const PREFIX: &str = "evp_";

/// `(id, secret)` of a presented `evp_<id>_<secret>`.
pub fn split(presented: &[u8]) -> Option<(&str, &[u8])> {
    let rest = presented.strip_prefix(PREFIX.as_bytes())?;
    let at = rest.iter().position(|&b| b == b'_')?;
    let id = std::str::from_utf8(&rest[..at]).ok()?;
    (id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some((id, &rest[at + 1..]))
}

fn digest(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn random_hex(n: usize) -> String {
    use rand::RngCore;
    let mut bytes = vec![0u8; n];
    rand::rng().fill_bytes(&mut bytes);
    hex(&bytes)
}

impl KeyStore {
    /// The keys of `db`; a key with a rate and no burst gets `default_burst(rate, min_burst)`.
    pub fn new(db: &mongodb::Database, min_burst: u64) -> Self {
        Self {
            min_burst,
            // Journaled: a key whose secret was handed out must survive a crash of the server.
            keys: db.collection_with_options(
                "api_keys",
                mongodb::options::CollectionOptions::builder()
                    .write_concern(mongodb::options::WriteConcern::builder().journal(true).build())
                    .build(),
            ),
            known: Arc::default(),
            stale: Arc::new(AtomicBool::new(true)),
            last_used: Arc::default(),
        }
    }

    /// Who `presented` belongs to: `None` when it is not a key of this store (unknown, revoked,
    /// expired, or not of the `evp_` shape).
    pub fn authenticate(&self, presented: &[u8]) -> Option<Holder> {
        let (id, secret) = split(presented)?;
        let known = self.known.read().unwrap_or_else(|p| p.into_inner()).get(id).cloned()?;
        let matches = bool::from(digest(secret).ct_eq(&known.digest));
        let expired = known.expires_at_ms.is_some_and(|at| evp_runtime::now_ms() >= at);
        if !matches || known.revoked || expired {
            return None;
        }
        self.touch(id);
        Some(match known.role {
            Role::Operator => Holder::Operator { key_id: Arc::from(id) },
            Role::Tenant => Holder::Tenant(known.tenant?, known.limit),
        })
    }

    /// Records that key `id` was used: at most once a minute per key, in the background, so a
    /// request never waits for it (and a failed write only leaves the time older).
    fn touch(&self, id: &str) {
        let now = evp_runtime::now_ms();
        {
            let mut last = self.last_used.lock().unwrap_or_else(|p| p.into_inner());
            if last.get(id).is_some_and(|&at| now - at < TOUCH_EVERY_MS) {
                return;
            }
            last.insert(id.to_owned(), now);
        }
        let (keys, id) = (self.keys.clone(), id.to_owned());
        tokio::spawn(async move {
            let set = doc! { "$set": { "last_used_at": DateTime::from_millis(now - now % TOUCH_EVERY_MS) } };
            if let Err(e) = keys.update_one(doc! { "_id": &id }, set).await {
                tracing::debug!(error = %e, key = id, "could not record when the key was last used");
            }
        });
    }

    /// Whether the last reload failed: the keys served are the last ones read.
    pub fn is_stale(&self) -> bool {
        self.stale.load(Ordering::Relaxed)
    }

    /// Creates a key; returns it and its secret (the only time the secret exists outside the
    /// caller's hands).
    pub async fn create(&self, new: NewKey) -> mongodb::error::Result<(KeyInfo, String)> {
        let id = random_hex(8);
        let secret = random_hex(32);
        let now = DateTime::now();
        let mut key = doc! {
            "_id": &id,
            "role": match new.role { Role::Tenant => "tenant", Role::Operator => "operator" },
            "digest": hex(&digest(secret.as_bytes())),
            "created_at": now,
        };
        if let Some(tenant) = &new.tenant {
            key.insert("tenant", tenant);
        }
        if let Some(name) = &new.name {
            key.insert("name", name);
        }
        if let Some(at) = new.expires_at_ms {
            key.insert("expires_at", DateTime::from_millis(at));
        }
        if let Some((rate, burst)) = new.rate_limit {
            key.insert("rate_limit", rate);
            if let Some(burst) = burst {
                key.insert("burst", burst as i64);
            }
        }
        self.keys.insert_one(&key).await?;
        // The key exists from here on: a failed reload must not lose its secret (it only means
        // this replica follows it at its next reload).
        self.refresh_or_warn().await;
        Ok((info(&key), format!("{PREFIX}{id}_{secret}")))
    }

    /// Every key created here (of `tenant` when given), oldest first.
    pub async fn list(&self, tenant: Option<&str>) -> mongodb::error::Result<Vec<KeyInfo>> {
        let filter = tenant.map_or_else(Document::new, |t| doc! { "tenant": t });
        let found: Vec<Document> =
            self.keys.find(filter).sort(doc! { "created_at": 1, "_id": 1 }).await?.try_collect().await?;
        Ok(found.iter().map(info).collect())
    }

    /// Revokes key `id` (once: a second revocation keeps the first time); `None` when there is no
    /// such key.
    pub async fn revoke(&self, id: &str) -> mongodb::error::Result<Option<KeyInfo>> {
        self.keys
            .update_one(
                doc! { "_id": id, "revoked_at": { "$exists": false } },
                doc! { "$set": { "revoked_at": DateTime::now() } },
            )
            .await?;
        let found = self.keys.find_one(doc! { "_id": id }).await?;
        self.refresh_or_warn().await;
        Ok(found.as_ref().map(info))
    }

    /// [`Self::refresh`] after a change that already happened: a failure is only logged.
    async fn refresh_or_warn(&self) {
        if let Err(e) = self.refresh().await {
            tracing::warn!(error = %e, "could not reload the API keys after a change; the next reload will");
        }
    }

    /// Reads the whole key set into memory.
    pub async fn refresh(&self) -> mongodb::error::Result<()> {
        let read = async {
            let docs: Vec<Document> = self.keys.find(doc! {}).await?.try_collect().await?;
            Ok::<_, mongodb::error::Error>(docs)
        };
        let docs = match read.await {
            Ok(docs) => docs,
            Err(e) => {
                self.stale.store(true, Ordering::Relaxed);
                return Err(e);
            }
        };
        let mut known = HashMap::with_capacity(docs.len());
        for d in &docs {
            let (Ok(id), Some(digest)) = (d.get_str("_id"), d.get_str("digest").ok().and_then(unhex)) else {
                continue;
            };
            let role = if d.get_str("role").ok() == Some("operator") { Role::Operator } else { Role::Tenant };
            known.insert(
                id.to_owned(),
                Known {
                    digest,
                    tenant: d.get_str("tenant").ok().map(Arc::from),
                    role,
                    expires_at_ms: d.get_datetime("expires_at").ok().map(|t| t.timestamp_millis()),
                    revoked: d.contains_key("revoked_at"),
                    limit: d.get_f64("rate_limit").ok().map(|rate| KeyLimit {
                        bucket: Arc::from(format!("key:{id}")),
                        limit: Limit {
                            rate,
                            burst: d
                                .get_i64("burst")
                                .ok()
                                .map_or_else(|| default_burst(rate, self.min_burst), |b| b.max(1) as u64),
                        },
                    }),
                },
            );
        }
        *self.known.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(known);
        self.stale.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// Reloads the key set every `every` until `shutdown`.
    pub fn spawn_refresh(&self, every: Duration, shutdown: CancellationToken) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failing = false;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let error =
                    match tokio::time::timeout(every.max(Duration::from_secs(2)), this.refresh()).await {
                        Ok(Ok(())) => {
                            if std::mem::take(&mut failing) {
                                tracing::info!("the API keys are read from MongoDB again");
                            }
                            continue;
                        }
                        Ok(Err(e)) => e.to_string(),
                        Err(_) => "timed out".to_owned(),
                    };
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(error, "cannot read the API keys; serving the last ones read");
                }
                this.stale.store(true, Ordering::Relaxed);
            }
        });
    }
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if s.len() != 64 {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_names_its_key() {
        assert_eq!(split(b"evp_0123456789abcdef_s3cr3t_x"), Some(("0123456789abcdef", &b"s3cr3t_x"[..])));
        for bad in
            [&b"evp_0123_s"[..], b"evp_0123456789abcdeg_s", b"0123456789abcdef_s", b"evp_", b"key-acme"]
        {
            assert_eq!(split(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(unhex(&hex(&digest(b"x"))), Some(digest(b"x")));
    }
}
