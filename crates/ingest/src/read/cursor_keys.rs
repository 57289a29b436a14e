//! The page cursors' signing secret, apart from the API keys (`CURSOR_SECRET`), and its rotation.
//!
//! The secret lives in MongoDB (collection `settings`, document `cursor_secret`), where every
//! replica finds it, since every read that takes a cursor reads MongoDB anyway:
//! - without `CURSOR_SECRET`, the first replica generates one (256 random bits) and inserts it; any
//!   other replica that raced it reads the one that was inserted;
//! - with `CURSOR_SECRET`, a replica whose secret is not the stored one makes it current and keeps
//!   the old one as `previous` for [`PREVIOUS_VALID_MS`], so cursors issued before a rotation keep
//!   opening for an hour. A replica still on the previous secret (a rolling deploy) signs with it
//!   and rotates nothing back.
//!
//! Each secret has a one-byte id, carried in every cursor's tag ([`super::cursor`]), so a cursor is
//! checked with the secret it was signed with. A cursor naming an id this replica does not know
//! makes it reload the secrets (at most once every [`RELOAD_EVERY_MS`]), so a rotation made by
//! another replica is followed. API keys play no part: creating, revoking or rotating them never
//! invalidates a cursor.

use std::sync::{Arc, Mutex, RwLock};

use mongodb::Collection;
use mongodb::bson::{DateTime, Document, doc};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::cursor::{CursorSigner, key_id};

/// How long the previous secret keeps opening cursors after a rotation.
pub const PREVIOUS_VALID_MS: i64 = 3_600_000;
/// Least time between two reloads prompted by unknown key ids.
const RELOAD_EVERY_MS: i64 = 5_000;
const DOC_ID: &str = "cursor_secret";

/// The signing secrets every replica shares.
#[derive(Clone)]
pub struct CursorKeys {
    settings: Collection<Document>,
    /// `CURSOR_SECRET`, when set.
    configured: Option<Arc<str>>,
    ring: Arc<RwLock<Option<Arc<Ring>>>>,
    last_reload_ms: Arc<Mutex<i64>>,
}

impl std::fmt::Debug for CursorKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CursorKeys").field("configured", &self.configured.is_some()).finish_non_exhaustive()
    }
}

/// The secrets known now: the one this replica signs with, and every one it accepts.
struct Ring {
    signer: CursorSigner,
    accepted: Vec<(CursorSigner, Option<i64>)>,
}

/// One stored secret.
struct Secret {
    id: u8,
    secret: String,
    /// For the previous secret: until when it opens cursors.
    until_ms: Option<i64>,
}

/// The secrets cannot be read (MongoDB unreachable): reads that need them answer 503.
#[derive(Debug, thiserror::Error)]
#[error("the cursor secret cannot be read: {0}")]
pub struct Unavailable(String);

impl CursorKeys {
    pub fn new(db: &mongodb::Database, configured: Option<&str>) -> Self {
        Self {
            // Journaled, like the keys: a secret that signed cursors must survive a crash.
            settings: db.collection_with_options(
                "settings",
                mongodb::options::CollectionOptions::builder()
                    .write_concern(mongodb::options::WriteConcern::builder().journal(true).build())
                    .build(),
            ),
            configured: configured.map(Arc::from),
            ring: Arc::default(),
            last_reload_ms: Arc::default(),
        }
    }

    /// The secrets, loaded first when they are not yet (the first read after start-up).
    pub async fn ready(&self) -> Result<Cursors<'_>, Unavailable> {
        if let Some(ring) = self.ring.read().unwrap_or_else(|p| p.into_inner()).clone() {
            return Ok(Cursors { ring, keys: self });
        }
        self.load().await?;
        let ring = self.ring.read().unwrap_or_else(|p| p.into_inner()).clone();
        ring.map(|ring| Cursors { ring, keys: self }).ok_or_else(|| Unavailable("not loaded".into()))
    }

    fn reload_soon(&self) {
        let now = evp_runtime::now_ms();
        {
            let mut last = self.last_reload_ms.lock().unwrap_or_else(|p| p.into_inner());
            if now - *last < RELOAD_EVERY_MS {
                return;
            }
            *last = now;
        }
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(e) = this.load().await {
                tracing::warn!(error = %e, "could not reload the cursor secrets");
            }
        });
    }

    /// Reads the stored secrets (creating or rotating them as the module map says) and keeps them.
    pub async fn load(&self) -> Result<(), Unavailable> {
        let failed = |e: mongodb::error::Error| Unavailable(e.to_string());
        for _ in 0..5 {
            let stored = self.settings.find_one(doc! { "_id": DOC_ID }).await.map_err(failed)?;
            let Some(stored) = stored else {
                let secret = match &self.configured {
                    Some(s) => s.to_string(),
                    None => generated(),
                };
                let fresh = doc! { "_id": DOC_ID, "current": { "id": 0, "secret": secret } };
                match self.settings.insert_one(fresh).await {
                    Ok(_) => continue,
                    Err(e) if evp_store::is_duplicate(&e) => continue,
                    Err(e) => return Err(failed(e)),
                }
            };
            let (current, previous) = secrets(&stored);
            let Some(current) = current else {
                return Err(Unavailable("settings.cursor_secret has no readable current secret".into()));
            };
            let now = evp_runtime::now_ms();
            let previous = previous.filter(|p| p.until_ms.is_some_and(|until| now < until));
            if let Some(configured) = self.configured.as_deref()
                && configured != current.secret
                && previous.as_ref().is_none_or(|p| p.secret != configured)
            {
                // A new secret: it becomes current, the current one previous for an hour.
                let rotated = self
                    .settings
                    .update_one(
                        doc! { "_id": DOC_ID, "current.secret": &current.secret },
                        doc! { "$set": {
                            "current": { "id": i32::from(current.id.wrapping_add(1)), "secret": configured },
                            "previous": { "id": i32::from(current.id), "secret": &current.secret,
                                          "until": DateTime::from_millis(now + PREVIOUS_VALID_MS) },
                        } },
                    )
                    .await
                    .map_err(failed)?;
                if rotated.modified_count == 1 {
                    tracing::info!(
                        "CURSOR_SECRET changed: cursors signed with the previous secret open for an hour"
                    );
                }
                continue; // read what is stored now
            }
            let signing = match self.configured.as_deref() {
                Some(configured) if previous.as_ref().is_some_and(|p| p.secret == configured) => {
                    previous.as_ref().unwrap_or(&current)
                }
                _ => &current,
            };
            let ring = Ring {
                signer: CursorSigner::new(signing.id, signing.secret.as_bytes()),
                accepted: [Some(&current), previous.as_ref()]
                    .into_iter()
                    .flatten()
                    .map(|s| (CursorSigner::new(s.id, s.secret.as_bytes()), s.until_ms))
                    .collect(),
            };
            *self.ring.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(ring));
            return Ok(());
        }
        Err(Unavailable("the cursor secret kept changing while it was read".into()))
    }
}

/// The secrets as one request sees them.
pub struct Cursors<'a> {
    ring: Arc<Ring>,
    keys: &'a CursorKeys,
}

impl std::fmt::Debug for Cursors<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cursors").field("signing", &self.ring.signer.id()).finish_non_exhaustive()
    }
}

impl Cursors<'_> {
    /// The cursor for `position` within `scope`, signed with this replica's secret.
    pub fn issue<T: Serialize>(&self, scope: &str, position: &T) -> String {
        self.ring.signer.issue(scope, position)
    }

    /// The position in `cursor`, if one of the accepted secrets signed it for `scope`. A cursor
    /// naming an unknown secret prompts a reload in the background.
    pub fn open<T: DeserializeOwned>(&self, scope: &str, cursor: &str) -> Result<T, &'static str> {
        let id = key_id(cursor).ok_or(super::cursor::BAD)?;
        let now = evp_runtime::now_ms();
        let known = self
            .ring
            .accepted
            .iter()
            .find(|(signer, until)| signer.id() == id && until.is_none_or(|until| now < until));
        match known {
            Some((signer, _)) => signer.open(scope, cursor),
            None => {
                self.keys.reload_soon();
                Err(super::cursor::BAD)
            }
        }
    }
}

fn secrets(stored: &Document) -> (Option<Secret>, Option<Secret>) {
    let read = |name: &str| {
        let d = stored.get_document(name).ok()?;
        Some(Secret {
            id: u8::try_from(d.get_i32("id").ok()?).ok()?,
            secret: d.get_str("secret").ok()?.to_owned(),
            until_ms: d.get_datetime("until").ok().map(|t| t.timestamp_millis()),
        })
    };
    (read("current"), read("previous"))
}

fn generated() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
