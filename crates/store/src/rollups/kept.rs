//! What the leader keeps between rounds: the counts of one partition's acknowledged events past
//! its closed ranges ([`ProvisionalCounts`]), extended each round by reading only what was
//! acknowledged since ([`RollupStore::extend_kept`]). The round writes them as the provisional
//! counts and closes ranges from them ([`ProvisionalCounts::take_closed`]) without reading those
//! events again. Exact because every document below an acknowledged frontier is final: counted
//! once, its count never changes.

use std::collections::BTreeMap;

use futures::TryStreamExt;
use mongodb::bson::{Document, doc};

use super::job::ByDoc;
use super::{
    Contribution, MAX_PROVISIONAL, RANGE_MS, RangeCounts, RollupStore, position_query, range_start_seq,
};
use evp_events::EntryId;

/// Per (tenant, type, minute), the events of each range of `[range_start(next), until)` of one
/// partition, as counted from the stored documents.
#[derive(Debug, Clone)]
pub struct ProvisionalCounts {
    next: i64,
    until: EntryId,
    by_doc: ByDoc,
}

impl ProvisionalCounts {
    /// Where the counts start (the first range they hold).
    pub fn next(&self) -> i64 {
        self.next
    }

    /// Where they end (exclusive): the frontier they were last extended to.
    pub fn until(&self) -> EntryId {
        self.until
    }

    /// Takes the counts of the ranges below `closed` out, as [`RangeCounts`] of `[next, closed)`,
    /// when these counts reach the end of those ranges (`until` at or past `range_start(closed)`);
    /// what stays starts at `closed`. `None` (and nothing taken) otherwise.
    pub fn take_closed(&mut self, partition: i32, closed: i64) -> Option<RangeCounts> {
        if closed <= self.next || (self.until.ms as i64) < closed.saturating_mul(RANGE_MS) {
            return None;
        }
        let mut contributions = Vec::new();
        let mut events = 0_u64;
        for ((tenant, event_type, minute_ms), ranges) in &mut self.by_doc {
            let open = ranges.split_off(&closed);
            let done = std::mem::replace(ranges, open);
            if done.is_empty() {
                continue;
            }
            events += done.values().sum::<i64>() as u64;
            contributions.push(Contribution {
                tenant: tenant.clone(),
                event_type: event_type.clone(),
                minute_ms: *minute_ms,
                ranges: done,
            });
        }
        self.by_doc.retain(|_, ranges| !ranges.is_empty());
        let from = std::mem::replace(&mut self.next, closed);
        Some(RangeCounts { partition, from, to: closed, contributions, events })
    }

    /// Count keys (tenant, type, minute, range) held.
    fn len(&self) -> usize {
        self.by_doc.values().map(BTreeMap::len).sum()
    }

    /// As stored beside `next`: one `{t, y, m, k, n}` per count key.
    pub(super) fn entries(&self) -> Vec<Document> {
        self.by_doc
            .iter()
            .flat_map(|((t, y, m), ranges)| {
                ranges
                    .iter()
                    .map(move |(k, n)| doc! { "t": t.as_str(), "y": y.as_str(), "m": *m, "k": *k, "n": *n })
            })
            .collect()
    }
}

impl RollupStore {
    /// Makes `kept` the counts of `[range_start(next), until)` of `partition`: from what it holds
    /// when it starts at or before `next` and ends at or before `until` (ranges below `next`
    /// dropped, only `[kept.until, until)` read), else read whole. Leaves `None` when the read
    /// fails or the counts pass [`MAX_PROVISIONAL`] keys (memory stays bounded; the caller reads
    /// the ranges instead).
    pub async fn extend_kept(
        &self,
        partition: i32,
        next: i64,
        until: EntryId,
        kept: &mut Option<ProvisionalCounts>,
    ) -> mongodb::error::Result<()> {
        let start_seq = range_start_seq(next);
        // Taken: a failed read leaves nothing half-added behind.
        let (mut by_doc, from_seq) = match kept.take() {
            Some(p) if p.next <= next && p.until <= until => {
                let mut by_doc = p.by_doc;
                for ranges in by_doc.values_mut() {
                    *ranges = ranges.split_off(&next);
                }
                by_doc.retain(|_, ranges| !ranges.is_empty());
                (by_doc, p.until.sortable().max(start_seq))
            }
            _ => (ByDoc::new(), start_seq),
        };
        let until_seq = until.sortable();
        if from_seq < until_seq {
            let query = position_query(partition, &from_seq, &until_seq);
            let mut cursor =
                self.positions.find(query.filter).projection(super::job::position_projection()).await?;
            while let Some(d) = cursor.try_next().await? {
                super::job::add(&mut by_doc, &d);
            }
        }
        let counts = ProvisionalCounts { next, until, by_doc };
        if counts.len() <= MAX_PROVISIONAL {
            *kept = Some(counts);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_ranges_are_taken_only_when_the_counts_reach_their_end() {
        let key = |t: &str| (t.to_owned(), "signup".to_owned(), 60_000);
        let mut kept = ProvisionalCounts {
            next: 5,
            until: EntryId::new(7 * RANGE_MS as u64 + 10, 0),
            by_doc: ByDoc::from([
                (key("a"), BTreeMap::from([(5, 2), (6, 3), (7, 1)])),
                (key("b"), BTreeMap::from([(7, 4)])),
            ]),
        };
        assert!(kept.take_closed(0, 8).is_none(), "range 7 is not counted to its end");
        assert!(kept.take_closed(0, 5).is_none(), "nothing below next");
        let taken = kept.take_closed(0, 7).expect("ranges 5 and 6");
        assert_eq!((taken.partition, taken.from, taken.to, taken.events), (0, 5, 7, 5));
        assert_eq!(taken.contributions.len(), 1);
        assert_eq!(taken.contributions[0].tenant, "a");
        assert_eq!(taken.contributions[0].ranges, BTreeMap::from([(5, 2), (6, 3)]));
        assert_eq!(kept.next(), 7);
        assert_eq!(kept.by_doc[&key("a")], BTreeMap::from([(7, 1)]));
        assert_eq!(kept.by_doc[&key("b")], BTreeMap::from([(7, 4)]));
        assert_eq!(kept.len(), 2);
    }
}
