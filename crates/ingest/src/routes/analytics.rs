//! `GET /analytics/metrics`: the tenant's exact counts by type and bucket, and the pipeline.
//!
//! Parameters are checked before anything is asked (400 `invalid_query` naming the parameter);
//! MongoDB or Redis not answering within [`READ_TIMEOUT`] is a 503 with `Retry-After`.

use axum::Json;
use axum::extract::{RawQuery, State};

use crate::analytics::{
    AnalyticsQuery, Consumer, Metrics, PipelineSnapshot, PipelineState, rfc3339, rollup_state, summarize,
};
use crate::auth::Viewer;
use crate::error::{ApiError, ErrorResponse};
use crate::routes::now_ms;
use crate::routes::read::{READ_TIMEOUT, bounded, bounded_from, read_slot};
use crate::routes::responses::{ReadsBusy, Unauthorized};
use crate::state::AppState;

/// The tenant's exact event counts, per type and per bucket, from the rollups.
///
/// Counts are by event `timestamp`, in UTC buckets; `from` is rounded down and `to` up to the
/// bucket. They are exact and current: the rollups hold closed stream ranges, and the events not
/// yet rolled up are counted from the stored events (`rollup` says how far the rollups reach).
/// `pipeline` holds, for a tenant key, only that tenant's own figures: its rates (events/s appended
/// and stored over the last 10 s) and its events not yet stored. With an operator key
/// (`ADMIN_KEYS`) the counts are every tenant's, and `pipeline` adds the stream length, pending
/// entries, group lag, dead letters and the consumers.
#[utoipa::path(get, path = "/analytics/metrics", tag = "analytics", params(AnalyticsQuery),
    responses(
        (status = 200, description = "Counts and pipeline", body = Metrics),
        (status = 400, description = "`invalid_query`: an unknown or repeated parameter, a bad value, \
            `from` not before `to`, or more than 10,000 buckets", body = ErrorResponse),
        (status = 503, description = "MongoDB or Redis unreachable", body = ErrorResponse,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        Unauthorized, ReadsBusy,
    ),
    security(("api_key" = [])))]
pub async fn metrics(
    State(state): State<AppState>,
    viewer: Viewer,
    RawQuery(raw): RawQuery,
) -> Result<Json<Metrics>, ApiError> {
    let window = AnalyticsQuery::parse(raw.as_deref())?.window(now_ms())?;
    let who = viewer.reader();
    let _read = read_slot(&state, &who)?;
    // In the tenant's own line first (one of its answers at a time), then for one of the
    // replica's answer slots (first come, first served): each tenant waits behind at most one
    // answer of each other tenant.
    let waited = async {
        let line = state.read_slots.analytics_line(&who);
        let _turn = line.lock_owned().await;
        state.analytics_slots.acquire().await.map(|slot| (slot, _turn))
    };
    let _slot = tokio::time::timeout(READ_TIMEOUT, waited)
        .await
        .map_err(|_| ApiError::ReadUnavailable { cause: "too many analytics answers in progress".into() })?
        .map_err(|_| ApiError::ReadUnavailable { cause: "shutting down".into() })?;
    // Where the rollups stand first; then Redis (whatever it reports was appended by then); then
    // the counts. The lag is measured against a frontier read after the progress, so it is never
    // smaller than the truth.
    let progress = bounded(state.rollups.progress(&state.pipeline.partition_numbers())).await?;
    let (frontiers, PipelineSnapshot { total: snapshot, appended }) = bounded_from("Redis", async {
        tokio::try_join!(state.pipeline.frontiers_ms(), state.pipeline.snapshot())
    })
    .await?;
    let counts = bounded(state.rollups.counts(
        match &viewer {
            Viewer::Tenant(tenant) => Some(&*tenant.0),
            Viewer::Operator(_) => None,
        },
        window.event_type.as_deref(),
        window.from_ms,
        window.to_ms,
        &progress,
        &appended,
    ))
    .await?;
    let (total, by_type, series) = summarize(&window, &counts.counts);
    let pipeline = match &viewer {
        // Only the tenant's own figures: its rates and its events not yet stored.
        Viewer::Tenant(tenant) => {
            let (ingest_rate, processing_rate) = state.rates.tenant_rates(&tenant.0);
            PipelineState {
                unstored: state.publisher.tenant_backlog(&tenant.0),
                ingest_rate,
                processing_rate,
                stream_length: None,
                pending: None,
                lag: None,
                dead_letters: None,
                consumers: None,
            }
        }
        Viewer::Operator(_) => {
            let (ingest_rate, processing_rate) = state.rates.rates();
            PipelineState {
                unstored: state.publisher.all_tenants_backlog(),
                ingest_rate,
                processing_rate,
                stream_length: Some(snapshot.length),
                pending: Some(snapshot.pending),
                lag: Some(snapshot.lag.unwrap_or(0)),
                dead_letters: Some(snapshot.dead_letters),
                consumers: Some(
                    snapshot
                        .consumers
                        .into_iter()
                        .map(|c| Consumer { name: c.name, pending: c.pending, idle_ms: c.idle_ms })
                        .collect(),
                ),
            }
        }
    };
    Ok(Json(Metrics {
        from: rfc3339(window.from_ms),
        to: rfc3339(window.to_ms),
        bucket: window.bucket.to_owned(),
        total,
        by_type,
        series,
        rollup: rollup_state(&counts.next_range, &frontiers, &appended),
        pipeline,
    }))
}
