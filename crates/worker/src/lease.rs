//! A named lease in Redis: at most one holder at a time, each grant with a fencing number.
//!
//! The hot/cold daemon pattern: every replica runs [`hold`]; the one that gets the lease is the
//! leader and does the work, the others poll and take over within the lease's TTL when it dies,
//! hangs or loses Redis.
//!
//! - **Acquire**: `SET <key> <token> NX PX <ttl>` with a random token, and in the same script
//!   `INCR` of the lease's fencing counter: every grant gets a number larger than any before it.
//! - **Renew**: every TTL/3, a compare-and-extend script (`PEXPIRE` only while the key still holds
//!   our token). The holder considers itself leader only until `sent + 0.9 × TTL` of its last
//!   successful acquire or renewal (measured from when the request was *sent*, on this process's
//!   monotonic clock), so it stops before Redis could hand the lease to another.
//! - **Release** on shutdown: `DEL` only while it holds our token, so a standby takes over at once.
//!
//! A process can still be paused after checking that it leads (GC, SIGSTOP, a slow disk): that is
//! what the fencing number is for. Whatever the leader writes carries it, and the store refuses a
//! number older than the newest it has seen (`evp_store::rollups` does).
//!
//! Keys, sharing one Redis Cluster hash slot: `{<stream>:lease:<name>}` (the token) and
//! `{<stream>:lease:<name>}:fence` (the counter).

use std::sync::Arc;
use std::time::{Duration, Instant};

use evp_runtime::redis_conn::RedisConn;
use redis::RedisResult;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics as m;
use crate::stream_reader::sleep_unless_cancelled;

const ACQUIRE: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
return false
";
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// One grant of the lease, as its holder sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// The fencing number of this grant: larger than every earlier grant's.
    pub fence: i64,
    /// Until when this process may act as the holder (see the module doc).
    pub valid_until: Instant,
}

impl Grant {
    pub fn is_valid(&self) -> bool {
        Instant::now() < self.valid_until
    }
}

/// A named lease for one process (its token names the process, for the logs of the others).
#[derive(Clone)]
pub struct Lease {
    conn: RedisConn,
    name: Arc<str>,
    key: String,
    fence_key: String,
    token: String,
    ttl: Duration,
    scripts: Arc<[redis::Script; 3]>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("key", &self.key).field("ttl", &self.ttl).finish()
    }
}

impl Lease {
    pub fn new(conn: RedisConn, stream: &str, name: &str, holder: &str, ttl: Duration) -> Self {
        let key = format!("{{{stream}:lease:{name}}}");
        Self {
            conn,
            name: Arc::from(name),
            fence_key: format!("{key}:fence"),
            key,
            token: format!("{holder}/{}", uuid::Uuid::new_v4().simple()),
            ttl,
            scripts: Arc::new([ACQUIRE, RENEW, RELEASE].map(redis::Script::new)),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn ttl_ms(&self) -> u64 {
        self.ttl.as_millis() as u64
    }

    /// The grant's fencing number when the lease was free, else `None`.
    pub async fn try_acquire(&self) -> RedisResult<Option<i64>> {
        self.scripts[0]
            .key(&self.key)
            .key(&self.fence_key)
            .arg(&self.token)
            .arg(self.ttl_ms())
            .invoke_async(&mut self.conn.clone())
            .await
    }

    /// Extends the lease while we still hold it; false when it is another's or expired.
    pub async fn renew(&self) -> RedisResult<bool> {
        let extended: i64 = self.scripts[1]
            .key(&self.key)
            .arg(&self.token)
            .arg(self.ttl_ms())
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(extended == 1)
    }

    /// Gives the lease up if we hold it.
    pub async fn release(&self) -> RedisResult<bool> {
        let deleted: i64 =
            self.scripts[2].key(&self.key).arg(&self.token).invoke_async(&mut self.conn.clone()).await?;
        Ok(deleted == 1)
    }

    /// Who holds the lease now (the holder part of its token), for the logs.
    pub async fn holder(&self) -> RedisResult<Option<String>> {
        let token: Option<String> =
            redis::cmd("GET").arg(&self.key).query_async(&mut self.conn.clone()).await?;
        Ok(token.map(|t| t.rsplit_once('/').map_or(t.clone(), |(holder, _)| holder.to_owned())))
    }

    fn valid_until(&self, sent: Instant) -> Instant {
        sent + self.ttl.mul_f64(0.9)
    }
}

/// Competes for `lease` until `shutdown`, publishing the current grant (or `None`) on `grants`.
/// Logs every acquisition, loss and release, and each new reason for a denial.
pub async fn hold(lease: Lease, grants: watch::Sender<Option<Grant>>, shutdown: CancellationToken) {
    let name = lease.name().to_owned();
    let poll = (lease.ttl / 10).max(Duration::from_millis(20));
    let renew_every = lease.ttl / 3;
    let mut grant: Option<Grant> = None;
    let mut last_denial = String::new();
    let set_leader =
        |on: bool| metrics::gauge!(m::LEADER, "lease" => name.clone()).set(f64::from(u8::from(on)));
    set_leader(false);
    while !shutdown.is_cancelled() {
        match grant {
            None => {
                let sent = Instant::now();
                match lease.try_acquire().await {
                    Ok(Some(fence)) => {
                        let g = Grant { fence, valid_until: lease.valid_until(sent) };
                        grant = Some(g);
                        grants.send_replace(Some(g));
                        set_leader(true);
                        last_denial.clear();
                        metrics::counter!(m::LEASE_CHANGES, "lease" => name.clone(), "change" => "acquired")
                            .increment(1);
                        tracing::info!(lease = name, fence, "lease acquired: this worker leads");
                    }
                    Ok(None) => {
                        let holder =
                            lease.holder().await.ok().flatten().unwrap_or_else(|| "(just expired)".into());
                        let denial = format!("held by {holder}");
                        if denial != last_denial {
                            tracing::info!(lease = name, reason = denial, "lease denied: standing by");
                            last_denial = denial;
                        }
                    }
                    Err(e) => {
                        let denial = format!("cannot reach Redis: {e}");
                        if denial != last_denial {
                            tracing::warn!(lease = name, reason = denial, "lease denied: standing by");
                            last_denial = denial;
                        }
                    }
                }
                if grant.is_none() {
                    sleep_unless_cancelled(poll, &shutdown).await;
                }
            }
            Some(mut g) => {
                sleep_unless_cancelled(
                    renew_every.min(g.valid_until.saturating_duration_since(Instant::now())),
                    &shutdown,
                )
                .await;
                if shutdown.is_cancelled() {
                    break;
                }
                let sent = Instant::now();
                let lost = match lease.renew().await {
                    Ok(true) => {
                        g.valid_until = lease.valid_until(sent);
                        grant = Some(g);
                        grants.send_replace(Some(g));
                        None
                    }
                    Ok(false) => Some("the lease expired or another worker holds it".to_owned()),
                    Err(e) if !g.is_valid() => Some(format!("cannot renew it in time: {e}")),
                    Err(e) => {
                        tracing::warn!(lease = name, error = %e, "lease renewal failed; retrying before it expires");
                        None
                    }
                };
                if let Some(reason) = lost {
                    grant = None;
                    grants.send_replace(None);
                    set_leader(false);
                    metrics::counter!(m::LEASE_CHANGES, "lease" => name.clone(), "change" => "lost")
                        .increment(1);
                    tracing::warn!(lease = name, fence = g.fence, reason, "lease lost: standing by");
                }
            }
        }
    }
    if let Some(g) = grant {
        grants.send_replace(None);
        set_leader(false);
        match lease.release().await {
            Ok(_) => {
                metrics::counter!(m::LEASE_CHANGES, "lease" => name.clone(), "change" => "released")
                    .increment(1);
                tracing::info!(lease = name, fence = g.fence, "lease released at shutdown");
            }
            Err(e) => {
                tracing::warn!(lease = name, error = %e, "could not release the lease; it expires by itself")
            }
        }
    }
}
