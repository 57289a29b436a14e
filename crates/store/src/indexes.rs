//! The `events` collection's indexes: which exist, what each serves, and which `GET /events`
//! filters a deployment pays for (`EVENT_INDEXES`).
//!
//! Every stored event updates one B-tree per index, so each index costs store rate
//! (docs/PERFORMANCE.md measures every set). The set:
//!
//! - `_id` (MongoDB's own): `<tenant>:<event_id>` ([`event_key`]). It carries the uniqueness of
//!   (tenant, event id) that makes redelivery harmless, and serves `GET /events/{id}`. A tenant
//!   name never holds `:`, so the key is unambiguous.
//! - `newest` (tenant, timestamp ↓, event_id ↓): the unfiltered newest-first listing, with or
//!   without `from`/`to`, in the order its keyset cursor walks.
//! - `aggregate_order` (tenant, aggregate_id, seq, partition): an aggregate's events in append
//!   order. Partial: only events with an `aggregate_id` pay for it.
//! - `rollup_position` (partition, seq, tenant, type, timestamp): the rollup job's range counts and
//!   the analytics tail, covered (no document is fetched to count it).
//! - `tenant_position` (tenant, partition, seq, type): a subscription's reads, one tenant's events
//!   of one partition in stream order. Tenant first, so a read walks only its own tenant's keys:
//!   another tenant's flood in the same partition and range costs it nothing.
//! - `newest_by_<filter>` (tenant, filter, timestamp ↓, event_id ↓), one per filter named in
//!   `EVENT_INDEXES`. Partial on the field existing for the optional fields (an equality on it
//!   implies that), so events without the field pay nothing. A filter without its index is refused with 400 by the ingest,
//!   never answered by a scan.
//!
//! Deployments from before this layout also have `tenant_event_id_unique` (tenant, event_id) and
//! documents with an ObjectId `_id`: that index stays valid and keeps enforcing uniqueness across
//! old and new documents until an operator drops it (docs/OPERATIONS.md).
//!
//! [`plan_problem`] reads an `explain` answer and names a collection scan or an in-memory sort:
//! the tests run it on every query shape evp sends.

use std::fmt;
use std::str::FromStr;

use mongodb::IndexModel;
use mongodb::bson::{Bson, Document, doc};
use mongodb::options::IndexOptions;

/// The index of stream positions: `partition, seq, tenant, type, timestamp` (the rollup job's
/// ranges and the analytics tail).
pub const POSITION_INDEX: &str = "rollup_position";

/// The index of one tenant's stream positions: `tenant, partition, seq, type` (subscriptions).
pub const TENANT_POSITION_INDEX: &str = "tenant_position";

/// The unique index of deployments from before `_id` carried (tenant, event id).
pub const LEGACY_UNIQUE_INDEX: &str = "tenant_event_id_unique";

/// The `_id` of an event's document: unique per (tenant, event id), since tenants hold no `:`.
pub fn event_key(tenant: &str, event_id: &str) -> String {
    let mut key = String::with_capacity(tenant.len() + 1 + event_id.len());
    key.push_str(tenant);
    key.push(':');
    key.push_str(event_id);
    key
}

/// A filter of the newest-first listing that an index can serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ListingFilter {
    Type,
    Source,
    AggregateId,
    CorrelationId,
}

impl ListingFilter {
    pub const ALL: [Self; 4] = [Self::Type, Self::Source, Self::AggregateId, Self::CorrelationId];

    /// The query parameter, as named in `GET /events` and `EVENT_INDEXES`.
    pub fn parameter(self) -> &'static str {
        match self {
            Self::Type => "type",
            Self::Source => "source",
            Self::AggregateId => "aggregate_id",
            Self::CorrelationId => "correlation_id",
        }
    }

    /// The stored document's field (the same names).
    pub fn field(self) -> &'static str {
        self.parameter()
    }

    /// Its index's name.
    pub fn index_name(self) -> String {
        format!("newest_by_{}", self.parameter())
    }
}

/// `EVENT_INDEXES`: the listing filters served by an index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventIndexes(Vec<ListingFilter>);

impl EventIndexes {
    /// The measured default (docs/PERFORMANCE.md, "The index set"): `type`, the filter the
    /// dashboard's users reach for; each further filter costs store rate for every event that
    /// carries its field.
    pub const DEFAULT: &'static str = "type";

    pub fn new(filters: impl IntoIterator<Item = ListingFilter>) -> Self {
        let mut filters: Vec<ListingFilter> = filters.into_iter().collect();
        filters.sort();
        filters.dedup();
        Self(filters)
    }

    /// Every filter indexed.
    pub fn all() -> Self {
        Self::new(ListingFilter::ALL)
    }

    pub fn contains(&self, filter: ListingFilter) -> bool {
        self.0.contains(&filter)
    }

    pub fn filters(&self) -> &[ListingFilter] {
        &self.0
    }

    /// Every index of the `events` collection for this set (`_id` is MongoDB's own).
    pub fn models(&self) -> Vec<IndexModel> {
        let mut models = vec![
            newest(None),
            model(
                doc! { "tenant": 1, "aggregate_id": 1, "seq": 1, "partition": 1 },
                "aggregate_order",
                Some("aggregate_id"),
            ),
            model(
                doc! { "partition": 1, "seq": 1, "tenant": 1, "type": 1, "timestamp": 1 },
                POSITION_INDEX,
                None,
            ),
            model(doc! { "tenant": 1, "partition": 1, "seq": 1, "type": 1 }, TENANT_POSITION_INDEX, None),
        ];
        models.extend(self.0.iter().map(|&f| newest(Some(f))));
        models
    }
}

impl Default for EventIndexes {
    fn default() -> Self {
        Self::DEFAULT.parse().unwrap_or_else(|_| Self::new([]))
    }
}

impl FromStr for EventIndexes {
    type Err = String;

    /// A comma-separated subset of `type,source,aggregate_id,correlation_id`; `none` (or nothing)
    /// for no filter index.
    fn from_str(raw: &str) -> Result<Self, String> {
        let mut filters = Vec::new();
        for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty() && *s != "none") {
            let filter = ListingFilter::ALL.into_iter().find(|f| f.parameter() == item).ok_or_else(|| {
                format!("{item:?} is not a filter; expected a comma-separated subset of type,source,aggregate_id,correlation_id")
            })?;
            filters.push(filter);
        }
        Ok(Self::new(filters))
    }
}

impl fmt::Display for EventIndexes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.0.iter().map(|f| f.parameter()).collect();
        f.write_str(if names.is_empty() { "none" } else { "" })?;
        f.write_str(&names.join(","))
    }
}

fn model(keys: Document, name: &str, partial_on: Option<&str>) -> IndexModel {
    let options = IndexOptions::builder()
        .name(name.to_string())
        .partial_filter_expression(partial_on.map(|field| doc! { field: { "$exists": true } }))
        .build();
    IndexModel::builder().keys(keys).options(options).build()
}

/// A newest-first listing index, alone or by one filter, ending in the keyset cursor's order.
fn newest(filter: Option<ListingFilter>) -> IndexModel {
    let mut keys = doc! { "tenant": 1 };
    if let Some(filter) = filter {
        keys.insert(filter.field(), 1);
    }
    keys.insert("timestamp", -1);
    keys.insert("event_id", -1);
    match filter {
        None => model(keys, "newest", None),
        // `type` is on every event: a partial index on it would hold them all anyway.
        Some(ListingFilter::Type) => model(keys, &ListingFilter::Type.index_name(), None),
        Some(filter) => model(keys, &filter.index_name(), Some(filter.field())),
    }
}

/// A query evp sends: its filter, its sort (empty: none), and the index it names when the
/// planner's own choice would be worse.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub filter: Document,
    pub sort: Document,
    pub hint: Option<&'static str>,
}

/// The server's plan (`explain` of a `find`, queryPlanner verbosity) for `query` on `collection`,
/// for [`plan_problem`].
pub async fn explain(
    db: &mongodb::Database,
    collection: &str,
    query: &Query,
    limit: Option<i64>,
) -> mongodb::error::Result<Document> {
    let mut find = doc! { "find": collection, "filter": query.filter.clone() };
    if !query.sort.is_empty() {
        find.insert("sort", query.sort.clone());
    }
    if let Some(limit) = limit {
        find.insert("limit", limit);
    }
    if let Some(hint) = query.hint {
        find.insert("hint", hint);
    }
    db.run_command(doc! { "explain": find, "verbosity": "queryPlanner" }).await
}

/// What is wrong with a query plan (the answer of `explain`): a collection scan, an in-memory
/// sort, or no index at all. `None` for a plan served by indexes alone.
pub fn plan_problem(explain: &Document) -> Option<String> {
    let Some(plan) = explain
        .get_document("queryPlanner")
        .ok()
        .and_then(|q| q.get("winningPlan"))
        .or_else(|| explain.get("stages"))
    else {
        return Some(format!("no queryPlanner.winningPlan in the explain answer: {explain}"));
    };
    let mut stages = Vec::new();
    collect_stages(plan, &mut stages);
    if stages.is_empty() {
        return Some(format!("no stages in the plan: {plan}"));
    }
    if stages.iter().any(|s| s == "COLLSCAN") {
        return Some(format!("a collection scan: {stages:?}"));
    }
    if stages.iter().any(|s| s == "SORT") {
        return Some(format!("an in-memory sort: {stages:?}"));
    }
    let indexed = ["IXSCAN", "IDHACK", "EXPRESS_IXSCAN", "EXPRESS_CLUSTERED_IXSCAN", "COUNT_SCAN"];
    if !stages.iter().any(|s| indexed.contains(&s.as_str())) {
        return Some(format!("no index scan: {stages:?}"));
    }
    None
}

/// Every `stage` name in a plan tree, whatever nests it (`inputStage`, `inputStages`, `queryPlan`).
fn collect_stages(value: &Bson, out: &mut Vec<String>) {
    match value {
        Bson::Document(d) => {
            for (key, value) in d {
                match (key.as_str(), value) {
                    ("stage", Bson::String(s)) => out.push(s.clone()),
                    _ => collect_stages(value, out),
                }
            }
        }
        Bson::Array(items) => items.iter().for_each(|v| collect_stages(v, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_indexes_parse_a_subset_and_refuse_the_rest() {
        let all: EventIndexes = "correlation_id, type,source,aggregate_id,type".parse().unwrap();
        assert_eq!(all, EventIndexes::all());
        assert_eq!(all.to_string(), "type,source,aggregate_id,correlation_id");
        assert_eq!("none".parse::<EventIndexes>().unwrap().filters(), &[]);
        assert_eq!(EventIndexes::default().filters(), &[ListingFilter::Type]);
        let bad = "type,timestamp".parse::<EventIndexes>().unwrap_err();
        assert!(bad.contains("\"timestamp\""), "{bad}");
    }

    #[test]
    fn the_models_are_the_fixed_ones_plus_one_per_filter() {
        let names = |set: &EventIndexes| -> Vec<String> {
            set.models().iter().filter_map(|m| m.options.as_ref()?.name.clone()).collect()
        };
        let fixed = ["newest", "aggregate_order", "rollup_position", "tenant_position"];
        assert_eq!(names(&EventIndexes::new([])), fixed);
        assert_eq!(
            names(&EventIndexes::new([ListingFilter::Source])),
            [&fixed[..], &["newest_by_source"]].concat()
        );
    }

    #[test]
    fn event_keys_join_tenant_and_id() {
        assert_eq!(event_key("acme", "a:b"), "acme:a:b");
        // Ambiguous only if a tenant held ':', which no tenant may (the worker refuses one).
        assert_eq!(event_key("a", "b:c"), event_key("a:b", "c"));
    }

    #[test]
    fn plans_with_a_scan_or_a_sort_are_named() {
        let plan = |winning: Document| doc! { "queryPlanner": { "winningPlan": winning } };
        let ixscan = doc! { "stage": "LIMIT", "inputStage": { "stage": "FETCH", "inputStage": { "stage": "IXSCAN" } } };
        assert_eq!(plan_problem(&plan(ixscan.clone())), None);
        let or = doc! { "stage": "FETCH", "inputStage": { "stage": "OR", "inputStages": [ { "stage": "IXSCAN" }, { "stage": "IXSCAN" } ] } };
        assert_eq!(plan_problem(&plan(or)), None);
        assert!(plan_problem(&plan(doc! { "stage": "COLLSCAN" })).unwrap().contains("collection scan"));
        let sort = doc! { "stage": "SORT", "inputStage": ixscan };
        assert!(plan_problem(&plan(sort)).unwrap().contains("in-memory sort"));
        assert!(plan_problem(&doc! {}).unwrap().contains("no queryPlanner"), "an uninformative answer fails");
    }
}
