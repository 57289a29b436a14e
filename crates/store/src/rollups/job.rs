//! The rollup job's side (run by the leader): count closed ranges from the stored events' positions,
//! apply them to the count documents under the compare-and-set the module map describes, advance
//! `next`, and keep the provisional counts of the ranges not yet closed.

use std::collections::{BTreeMap, HashMap};

use futures::TryStreamExt;
use mongodb::bson::{Bson, DateTime, Document, RawDocument, doc};

use super::kept::ProvisionalCounts;
use super::{
    Contribution, MAX_BATCH_DOCS, RangeCounts, RollupError, RollupStore, applied_field, count_id, int,
    is_duplicate, minute_of, position_query, progress_id, range_of, range_start_seq,
};
use crate::DUPLICATE_KEY;
use crate::indexes::Query;
use evp_events::EntryId;

impl RollupStore {
    /// Counts the events of `partition` in ranges `[from, to)`: each document's (tenant, type,
    /// minute of `timestamp`), per range. Reads at most about [`MAX_BATCH_DOCS`] documents; the
    /// answer's `to` says how far it got (always past `from` when `from < to`).
    pub async fn count_ranges(
        &self,
        partition: i32,
        from: i64,
        to: i64,
    ) -> mongodb::error::Result<RangeCounts> {
        let mut counts = RangeCounts { partition, from, to: from, ..Default::default() };
        if from >= to {
            return Ok(counts);
        }
        let query = |hi: i64| position_query(partition, &range_start_seq(from), &range_start_seq(hi));
        let projection = position_projection();
        let mut by_doc = ByDoc::new();
        let mut read = 0_i64;
        let mut last_range = from;
        let Query { filter, sort, .. } = query(to);
        let mut cursor = self
            .positions
            .find(filter)
            .sort(sort)
            .limit(MAX_BATCH_DOCS + 1)
            .projection(projection.clone())
            .await?;
        while let Some(d) = cursor.try_next().await? {
            read += 1;
            if let Some(k) = add(&mut by_doc, &d) {
                last_range = k;
            }
        }
        let mut end = to;
        if read > MAX_BATCH_DOCS {
            // Sorted by position: only ranges before the last one read are complete.
            for ranges in by_doc.values_mut() {
                ranges.remove(&last_range);
            }
            end = last_range;
            if last_range <= from {
                // One range holds more than a batch: read it whole.
                end = from + 1;
                by_doc.clear();
                let mut whole = self.positions.find(query(end).filter).projection(projection).await?;
                while let Some(d) = whole.try_next().await? {
                    add(&mut by_doc, &d);
                }
            }
        }
        by_doc.retain(|_, ranges| !ranges.is_empty());
        counts.events = by_doc.values().flat_map(BTreeMap::values).sum::<i64>() as u64;
        counts.to = end;
        counts.contributions = by_doc
            .into_iter()
            .map(|((tenant, event_type, minute_ms), ranges)| Contribution {
                tenant,
                event_type,
                minute_ms,
                ranges,
            })
            .collect();
        Ok(counts)
    }

    /// Adds `counts` to `generation`'s count documents (step 2 above), each at most once.
    pub async fn apply(&self, generation: i64, counts: &RangeCounts, fence: i64) -> Result<(), RollupError> {
        let applied = applied_field(counts.partition);
        for chunk in counts.contributions.chunks(1_000) {
            let updates: Vec<Document> = chunk
                .iter()
                .filter_map(|c| {
                    let (first, _) = c.ranges.first_key_value()?;
                    let (last, _) = c.ranges.last_key_value()?;
                    let total: i64 = c.ranges.values().sum();
                    Some(doc! {
                        "q": {
                            "_id": count_id(generation, &c.tenant, &c.event_type, c.minute_ms),
                            "fence": { "$lte": fence },
                            // Nothing of this partition applied yet, or only ranges below these.
                            "$or": [ { &applied: { "$lt": *first } }, { &applied: { "$exists": false } } ],
                        },
                        "u": {
                            "$inc": { "count": total },
                            "$set": { &applied: *last, "fence": fence },
                            "$setOnInsert": {
                                "gen": generation, "tenant": &c.tenant, "type": &c.event_type,
                                "minute": DateTime::from_millis(c.minute_ms),
                            },
                        },
                        "upsert": true,
                    })
                })
                .collect();
            let command = doc! { "update": self.counts.name(), "updates": updates, "ordered": false };
            let reply =
                self.counts.client().database(&self.counts.namespace().db).run_command(command).await?;
            if let Ok(errors) = reply.get_array("writeErrors") {
                for error in errors.iter().filter_map(Bson::as_document) {
                    let index = error.get_i32("index").unwrap_or(-1);
                    let code = error.get_i32("code").unwrap_or(0);
                    let Some(c) = usize::try_from(index).ok().and_then(|i| chunk.get(i)) else { continue };
                    if code != DUPLICATE_KEY {
                        let message = error.get_str("errmsg").unwrap_or("write error").to_owned();
                        return Err(RollupError::Mongo(mongodb::error::Error::custom(format!(
                            "event_counts update refused: {message} (code {code})"
                        ))));
                    }
                    // The document exists and its condition failed: fenced, or part applied.
                    self.apply_rest(generation, counts.partition, c, fence).await?;
                }
            }
        }
        Ok(())
    }

    /// Compare-and-set for one count document whose fast-path condition failed: adds only the
    /// ranges above the `applied_<p>` it finds.
    async fn apply_rest(
        &self,
        generation: i64,
        partition: i32,
        c: &Contribution,
        fence: i64,
    ) -> Result<(), RollupError> {
        let id = count_id(generation, &c.tenant, &c.event_type, c.minute_ms);
        let applied = applied_field(partition);
        for _ in 0..5 {
            let Some(found) = self.counts.find_one(doc! { "_id": &id }).await? else { continue };
            let seen = int(&found, "fence").unwrap_or(0);
            if seen > fence {
                return Err(RollupError::Fenced { ours: fence, seen });
            }
            let done = int(&found, &applied);
            let rest: i64 = c.ranges.range(done.map_or(i64::MIN, |d| d + 1)..).map(|(_, n)| n).sum();
            let Some((&last, _)) = c.ranges.last_key_value() else { return Ok(()) };
            if rest == 0 {
                return Ok(());
            }
            let mut filter = doc! { "_id": &id, "fence": { "$lte": fence } };
            filter.insert(&applied, done.map_or(Bson::Document(doc! { "$exists": false }), Bson::Int64));
            let update = doc! { "$inc": { "count": rest }, "$set": { &applied: last, "fence": fence } };
            if self.counts.update_one(filter, update).await?.matched_count == 1 {
                return Ok(());
            }
        }
        Err(RollupError::Conflict { generation, partition })
    }

    /// Moves `next` of (generation, partition) from `from` to `to` (step 3), refused when a newer
    /// grant has written or the progress is not where this leader left it.
    pub async fn advance(
        &self,
        generation: i64,
        partition: i32,
        from: i64,
        to: i64,
        fence: i64,
    ) -> Result<(), RollupError> {
        let id = progress_id(generation, partition);
        if from == 0 {
            let fresh =
                doc! { "_id": &id, "gen": generation, "partition": partition, "next": 0_i64, "fence": fence };
            match self.progress.insert_one(fresh).await {
                Ok(_) => {}
                Err(e) if is_duplicate(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let filter = doc! { "_id": &id, "next": from, "fence": { "$lte": fence } };
        let result =
            self.progress.update_one(filter, doc! { "$set": { "next": to, "fence": fence } }).await?;
        if result.matched_count == 1 {
            return Ok(());
        }
        let found = self.progress.find_one(doc! { "_id": &id }).await?;
        match found.as_ref().and_then(|d| int(d, "fence")) {
            Some(seen) if seen > fence => Err(RollupError::Fenced { ours: fence, seen }),
            _ => Err(RollupError::Conflict { generation, partition }),
        }
    }

    /// Counts the acknowledged events past the closed ranges, `[range_start(next), until)`, and
    /// stores them beside `next` (the *provisional* counts, per range), so that readers need not
    /// read those events. Written only while `next` is still what the caller saw; `until` is the
    /// acknowledged frontier (every entry below it is acknowledged, so the documents counted are
    /// final). Does nothing (and returns false) when that region holds more than
    /// [`MAX_PROVISIONAL`](super::MAX_PROVISIONAL) count keys.
    ///
    /// `kept` carries the counts of the caller's last round for this partition: only what was
    /// acknowledged since is read ([`RollupStore::extend_kept`], `super::kept`).
    pub async fn write_provisional(
        &self,
        generation: i64,
        partition: i32,
        next: i64,
        until: EntryId,
        fence: i64,
        kept: &mut Option<ProvisionalCounts>,
    ) -> Result<bool, RollupError> {
        self.extend_kept(partition, next, until, kept).await?;
        let Some(counts) = kept.as_ref() else { return Ok(false) };
        let provisional = doc! { "next": next, "until": until.sortable(), "counts": counts.entries() };
        let filter =
            doc! { "_id": progress_id(generation, partition), "next": next, "fence": { "$lte": fence } };
        if let Err(e) =
            self.progress.update_one(filter, doc! { "$set": { "provisional": provisional } }).await
        {
            *kept = None;
            return Err(e.into());
        }
        Ok(true)
    }
}

/// Per (tenant, type, minute of `timestamp`): events per range.
pub(super) type ByDoc = HashMap<(String, String, i64), BTreeMap<i64, i64>>;

/// What counting an event needs, all in `rollup_position`: the counts read no document.
pub(super) fn position_projection() -> Document {
    doc! { "_id": 0, "seq": 1, "tenant": 1, "type": 1, "timestamp": 1 }
}

/// Adds one event document (seq, tenant, type, timestamp) to per-(tenant, type, minute) range
/// counts; returns its range.
pub(super) fn add(by_doc: &mut ByDoc, d: &RawDocument) -> Option<i64> {
    let (Some(k), Ok(tenant), Ok(event_type), Ok(ts)) = (
        d.get_str("seq").ok().and_then(range_of),
        d.get_str("tenant"),
        d.get_str("type"),
        d.get_datetime("timestamp"),
    ) else {
        return None;
    };
    let key = (tenant.to_owned(), event_type.to_owned(), minute_of(ts.timestamp_millis()));
    *by_doc.entry(key).or_default().entry(k).or_default() += 1;
    Some(k)
}
