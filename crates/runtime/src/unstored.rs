//! Each tenant's events not yet stored (`TENANT_BACKLOG_SHARE`), counted in Redis next to each
//! partition's stream, and each tenant's appended and stored totals (its rates).
//!
//! Per partition and consumer group ([`Keys`]): the hash `<stream>:unstored:<group>` maps a tenant
//! to its entries in the stream that the group has not acknowledged (only tenants with some are
//! present), and `<stream>:totals:<group>` holds `a:<tenant>` (entries ever appended) and
//! `s:<tenant>` (entries ever stored). Both carry the stream's hash tag, so every step below runs
//! on the one Redis node of the partition's slot.
//!
//! **Why the count is exact.** It changes only inside the atomic step (one MULTI/EXEC or one
//! script) that makes the stream change it counts, so a crash, a lost reply or a failover keeps
//! both or neither:
//! - appending: the batch's MULTI ends with `HINCRBY +n` ([`count_batch`]); single events go
//!   through [`APPEND_SCRIPT`], which counts exactly the XADDs that succeeded;
//! - acknowledging ([`ACK_SCRIPT`]): one `XACK` per tenant of the batch, and that tenant's count
//!   falls by what XACK answers, the number of its entries that were still pending. An entry
//!   acknowledged twice (redelivered after a crash, claimed by another worker, a retried ack
//!   whose reply was lost) is subtracted once;
//! - dead-lettering: the same script inside the MULTI that writes the dead letter;
//! - replaying a dead letter ([`REPLAY_SCRIPT`]): XDEL from the dead letters and, only when that
//!   removed it, XADD and `+1`;
//! - trimming removes only acknowledged entries, which are no longer counted.
//!
//! **What can still make it drift**: an entry added or removed by hand (XADD, XDEL, `XGROUP
//! SETID`), an entry whose tenant cannot be read, entries appended before a deployment counted.
//! A count that would fall below zero is removed (read as 0). [`RECONCILE_SCRIPT`] resets the
//! partition's counts when the group has nothing pending and has been delivered the stream's last
//! entry: then nothing is unstored, and the check and the reset are one script, so no append or
//! acknowledgement comes between them. A drift lasts until the partition's backlog next empties.

use std::collections::HashMap;

use redis::RedisResult;

use crate::partitions::Partition;
use crate::redis_conn::RedisConn;

/// The keys of one partition's counts for one consumer group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    pub stream: String,
    /// Tenant → entries not yet acknowledged by the group.
    pub unstored: String,
    /// `a:<tenant>` → entries ever appended, `s:<tenant>` → entries ever stored.
    pub totals: String,
}

impl Keys {
    pub fn new(partition: &Partition, group: &str) -> Self {
        Self {
            stream: partition.stream.clone(),
            unstored: format!("{}:unstored:{group}", partition.stream),
            totals: format!("{}:totals:{group}", partition.stream),
        }
    }
}

/// Appends single events, each on its own: `KEYS` stream, unstored, totals; `ARGV` pairs of
/// tenant and payload. Answers one reply per event, its entry id or its error, and counts the
/// events that were appended.
pub const APPEND_SCRIPT: &str = r"
local out, added = {}, {}
for i = 1, #ARGV, 2 do
  local id = redis.pcall('XADD', KEYS[1], '*', 'e', ARGV[i + 1])
  out[#out + 1] = id
  if type(id) ~= 'table' then added[ARGV[i]] = (added[ARGV[i]] or 0) + 1 end
end
for tenant, n in pairs(added) do
  redis.call('HINCRBY', KEYS[2], tenant, n)
  redis.call('HINCRBY', KEYS[3], 'a:' .. tenant, n)
end
return out
";

/// Acknowledges entries and uncounts them: `KEYS` stream, unstored, totals; `ARGV[1]` the group,
/// `ARGV[2]` `1` when the entries were stored (`0`: dead-lettered), then per tenant its name (empty
/// when unknown: acknowledged, not counted), how many ids follow, and the ids. Answers how many
/// entries were still pending.
pub const ACK_SCRIPT: &str = r"
local acked, i = 0, 3
while i <= #ARGV do
  local tenant, k = ARGV[i], tonumber(ARGV[i + 1])
  local n = 0
  for j = i + 2, i + 1 + k, 1000 do
    n = n + redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, j, math.min(j + 999, i + 1 + k)))
  end
  if n > 0 and tenant ~= '' then
    if redis.call('HINCRBY', KEYS[2], tenant, -n) <= 0 then redis.call('HDEL', KEYS[2], tenant) end
    if ARGV[2] == '1' then redis.call('HINCRBY', KEYS[3], 's:' .. tenant, n) end
  end
  acked = acked + n
  i = i + 2 + k
end
return acked
";

/// Moves one dead letter back to its stream: `KEYS` dead letters, stream, unstored, totals;
/// `ARGV[1]` the dead letter's id, `ARGV[2]` its tenant (empty when unknown), then the fields to
/// append. Answers 1 when moved, 0 when the dead letter was gone (replayed or purged meanwhile).
pub const REPLAY_SCRIPT: &str = r"
if redis.call('XDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('XADD', KEYS[2], '*', unpack(ARGV, 3))
if ARGV[2] ~= '' then
  redis.call('HINCRBY', KEYS[3], ARGV[2], 1)
  redis.call('HINCRBY', KEYS[4], 'a:' .. ARGV[2], 1)
end
return 1
";

/// Resets a partition's counts when nothing in it is unstored: `KEYS` stream, unstored; `ARGV[1]`
/// the group. Answers 1 when counts were reset (they had drifted), else 0.
pub const RECONCILE_SCRIPT: &str = r"
local function fields(list)
  local t = {}
  for i = 1, #list, 2 do t[list[i]] = list[i + 1] end
  return t
end
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
if redis.call('EXISTS', KEYS[1]) == 0 then return redis.call('DEL', KEYS[2]) end
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local group = fields(g)
  if group['name'] == ARGV[1] then
    if tonumber(group['pending']) ~= 0 then return 0 end
    local stream = fields(redis.call('XINFO', 'STREAM', KEYS[1]))
    if group['last-delivered-id'] ~= stream['last-generated-id'] then return 0 end
    return redis.call('DEL', KEYS[2])
  end
end
return 0
";

/// Adds the count of a batch of `n` entries of `tenant` to a MULTI that appends them.
pub fn count_batch(pipe: &mut redis::Pipeline, keys: &Keys, tenant: &str, n: usize) {
    pipe.cmd("HINCRBY").arg(&keys.unstored).arg(tenant).arg(n).ignore();
    pipe.cmd("HINCRBY").arg(&keys.totals).arg(format!("a:{tenant}")).arg(n).ignore();
}

/// Adds an acknowledgement through [`ACK_SCRIPT`] to a pipeline (`EVAL`, so it works inside a
/// MULTI): `by_tenant` holds each tenant's ids (`""` for entries whose tenant is unknown).
pub fn add_ack<'a>(
    pipe: &mut redis::Pipeline,
    keys: &Keys,
    group: &str,
    stored: bool,
    by_tenant: impl IntoIterator<Item = (&'a str, Vec<&'a str>)>,
) {
    let cmd = pipe.cmd("EVAL").arg(ACK_SCRIPT).arg(3).arg(&keys.stream).arg(&keys.unstored).arg(&keys.totals);
    cmd.arg(group).arg(if stored { "1" } else { "0" });
    for (tenant, ids) in by_tenant {
        cmd.arg(tenant).arg(ids.len()).arg(ids);
    }
}

/// Groups `(id, tenant)` pairs by tenant, keeping the order of first appearance.
pub fn by_tenant<'a>(entries: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<(&'a str, Vec<&'a str>)> {
    let mut groups: Vec<(&str, Vec<&str>)> = Vec::new();
    for (id, tenant) in entries {
        match groups.iter_mut().find(|(t, _)| *t == tenant) {
            Some((_, ids)) => ids.push(id),
            None => groups.push((tenant, vec![id])),
        }
    }
    groups
}

/// The tenant of a stream entry's payload (the `e` field), read leniently: also from an entry the
/// worker cannot otherwise decode. Empty when there is none.
pub fn tenant_of(payload: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Tenant {
        tenant: String,
    }
    serde_json::from_slice::<Tenant>(payload).map(|t| t.tenant).unwrap_or_default()
}

/// Every tenant's unstored count in one partition.
pub async fn unstored(conn: &RedisConn, keys: &Keys) -> RedisResult<HashMap<String, u64>> {
    let counts: HashMap<String, i64> =
        redis::cmd("HGETALL").arg(&keys.unstored).query_async(&mut conn.clone()).await?;
    Ok(counts.into_iter().filter(|(_, n)| *n > 0).map(|(t, n)| (t, n as u64)).collect())
}

/// Every tenant's totals in one partition: tenant → (appended, stored).
pub async fn totals(conn: &RedisConn, keys: &Keys) -> RedisResult<HashMap<String, (u64, u64)>> {
    let fields: HashMap<String, i64> =
        redis::cmd("HGETALL").arg(&keys.totals).query_async(&mut conn.clone()).await?;
    let mut out: HashMap<String, (u64, u64)> = HashMap::new();
    for (field, n) in fields {
        let n = n.max(0) as u64;
        match field.split_once(':') {
            Some(("a", tenant)) => out.entry(tenant.to_string()).or_default().0 = n,
            Some(("s", tenant)) => out.entry(tenant.to_string()).or_default().1 = n,
            _ => {}
        }
    }
    Ok(out)
}

/// Runs [`RECONCILE_SCRIPT`]: true when the partition's counts had drifted and were reset.
pub async fn reconcile(conn: &RedisConn, keys: &Keys, group: &str) -> RedisResult<bool> {
    let reset: i64 = redis::Script::new(RECONCILE_SCRIPT)
        .key(&keys.stream)
        .key(&keys.unstored)
        .arg(group)
        .invoke_async(&mut conn.clone())
        .await?;
    Ok(reset == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tenant_is_read_from_any_json_that_has_one() {
        assert_eq!(tenant_of(br#"{"v":9,"tenant":"acme","what":[1,2]}"#), "acme");
        assert_eq!(tenant_of(b"not json"), "");
        assert_eq!(tenant_of(br#"{"v":1}"#), "");
    }

    #[test]
    fn ids_are_grouped_by_tenant_in_order() {
        let groups = by_tenant([("1-0", "a"), ("2-0", "b"), ("3-0", "a")]);
        assert_eq!(groups, vec![("a", vec!["1-0", "3-0"]), ("b", vec!["2-0"])]);
    }
}
