//! `TENANT_MAX_TYPES`: distinct event types per tenant.
//!
//! Each event type costs a tenant's share of the rollups (one count document per type and minute)
//! and of every dashboard, so one tenant sending ever-new types would bloat them for all. The
//! tenant's known types are a Redis set, `<EVENTS_STREAM>:types:<tenant>`, shared by every ingest
//! replica. A replica remembers the types it has seen admitted, so the hot path asks Redis only for
//! a type it has not seen yet: one script call per request that brings new types, which adds them
//! all if they fit under the cap, else none (a batch is refused whole).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use evp_events::{EncodedEvent, Problem};
use evp_runtime::redis_conn::RedisConn;

/// Adds the types of `ARGV[2..]` to the set `KEYS[1]` if, with them, it holds at most `ARGV[1]`
/// types; returns the types not yet in the set when they do not fit (none added), else nothing.
const ADMIT_TYPES: &str = r"
local unknown = {}
for i = 2, #ARGV do
  if redis.call('SISMEMBER', KEYS[1], ARGV[i]) == 0 then table.insert(unknown, ARGV[i]) end
end
if #unknown == 0 then return {} end
if redis.call('SCARD', KEYS[1]) + #unknown > tonumber(ARGV[1]) then return unknown end
redis.call('SADD', KEYS[1], unpack(unknown))
return {}
";

/// The per-tenant type cap, with what this replica already knows to be admitted.
#[derive(Clone, Debug)]
pub struct TypeCap {
    max_types: usize,
    prefix: String,
    script: Arc<redis::Script>,
    /// Types seen admitted, per tenant: at most `max_types` each.
    known: Arc<RwLock<HashMap<Arc<str>, HashSet<String>>>>,
}

/// Why a type check could not be made.
#[derive(Debug, thiserror::Error)]
#[error("the type cap could not be checked: {0}")]
pub struct Unchecked(#[from] pub redis::RedisError);

impl TypeCap {
    pub fn new(max_types: usize, stream: &str) -> Self {
        Self {
            max_types,
            prefix: format!("{stream}:types:"),
            script: Arc::new(redis::Script::new(ADMIT_TYPES)),
            known: Arc::default(),
        }
    }

    /// `None` when every event's type is admitted for `tenant`; else the problems, one per event
    /// whose type is new past the cap (`index` set for batches).
    pub async fn check(
        &self,
        conn: &RedisConn,
        tenant: &Arc<str>,
        events: &[EncodedEvent],
        batch: bool,
    ) -> Result<Option<Vec<Problem>>, Unchecked> {
        let unseen: Vec<&str> = {
            let known = self.known.read().unwrap_or_else(|e| e.into_inner());
            let mine = known.get(tenant);
            let mut unseen: Vec<&str> = events
                .iter()
                .map(|e| e.event_type.as_str())
                .filter(|t| mine.is_none_or(|m| !m.contains(*t)))
                .collect();
            unseen.sort_unstable();
            unseen.dedup();
            unseen
        };
        if unseen.is_empty() {
            return Ok(None);
        }
        let mut invocation = self.script.key(format!("{}{tenant}", self.prefix));
        invocation.arg(self.max_types);
        for t in &unseen {
            invocation.arg(*t);
        }
        let refused: Vec<String> = invocation.invoke_async(&mut conn.clone()).await?;
        if refused.is_empty() {
            let mut known = self.known.write().unwrap_or_else(|e| e.into_inner());
            let mine = known.entry(tenant.clone()).or_default();
            if mine.len() + unseen.len() <= self.max_types {
                mine.extend(unseen.iter().map(|t| t.to_string()));
            }
            return Ok(None);
        }
        let problems = events
            .iter()
            .enumerate()
            .filter(|(_, e)| refused.contains(&e.event_type))
            .map(|(i, e)| Problem {
                index: batch.then_some(i),
                field: Some("type"),
                message: format!(
                    "type {:?} would be this tenant's type number {} or more; at most TENANT_MAX_TYPES={} \
                     distinct types are kept per tenant, and the known ones keep working",
                    e.event_type,
                    self.max_types + 1,
                    self.max_types
                ),
            })
            .collect();
        Ok(Some(problems))
    }
}
