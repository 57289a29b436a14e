//! The backlog monitor: samples the streams' length and each tenant's unstored events in the
//! background for the high-water and backlog-share checks, so they add nothing to a request's
//! round trip.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::future::join_all;
use tokio_util::sync::CancellationToken;

use super::{PublishError, StreamPublisher, bounded};
use crate::metrics as m;

impl StreamPublisher {
    /// Entries in every partition's stream: acknowledged entries are trimmed by the workers, so
    /// this is the backlog of entries not yet stored.
    pub async fn stream_length(&self) -> Result<u64, PublishError> {
        let lengths = self.partitions.iter().map(|partition| {
            let mut conn = self.conn.clone();
            let xlen = redis::cmd("XLEN").arg(&partition.stream).clone();
            bounded(self.timeout, async move { xlen.query_async::<u64>(&mut conn).await })
        });
        join_all(lengths).await.into_iter().sum()
    }

    /// The last sampled backlog, for the high-water check.
    pub fn backlog(&self) -> u64 {
        self.backlog.load(Ordering::Relaxed)
    }

    /// Every tenant's events not yet stored, summed over the partitions
    /// ([`evp_runtime::unstored`]).
    pub async fn unstored_by_tenant(&self) -> Result<HashMap<String, u64>, PublishError> {
        let reads = self.counts.iter().map(|keys| {
            let conn = self.conn.clone();
            bounded(self.timeout, async move { evp_runtime::unstored::unstored(&conn, keys).await })
        });
        let mut total: HashMap<String, u64> = HashMap::new();
        for partition in join_all(reads).await {
            for (tenant, n) in partition? {
                *total.entry(tenant).or_default() += n;
            }
        }
        Ok(total)
    }

    /// `tenant`'s unstored events as last sampled, for the backlog-share check.
    pub fn tenant_backlog(&self, tenant: &str) -> u64 {
        let sample = self.tenant_backlog.read().unwrap_or_else(|p| p.into_inner()).clone();
        sample.get(tenant).copied().unwrap_or(0)
    }

    /// Samples the stream length every `every` until `shutdown`.
    pub fn spawn_backlog_monitor(&self, every: Duration, shutdown: CancellationToken) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                // The tenants' counts first, then the length: every append the counts include is
                // in the length too, so no tenant is refused its share while the stream's mark
                // reads lower than what that tenant alone has appended.
                let sampled = async {
                    Ok::<_, PublishError>((this.unstored_by_tenant().await?, this.stream_length().await?))
                };
                match sampled.await.map(|(by_tenant, len)| (len, by_tenant)) {
                    Ok((len, by_tenant)) => {
                        // The whole stream's first: a request in between meets the high-water
                        // mark (503 for everyone) before its tenant's share.
                        this.backlog.store(len, Ordering::Relaxed);
                        this.set_tenant_backlog(by_tenant);
                        metrics::gauge!(m::STREAM_BACKLOG).set(len as f64);
                        if !this.reachable.swap(true, Ordering::Relaxed) {
                            tracing::info!("Redis is reachable again");
                        }
                    }
                    Err(e) => {
                        if this.reachable.swap(false, Ordering::Relaxed) {
                            tracing::warn!(error = %e, "Redis is unreachable");
                        }
                    }
                }
            }
        });
    }

    /// Every tenant's unstored events as last sampled, added up.
    pub fn all_tenants_backlog(&self) -> u64 {
        self.tenant_backlog.read().unwrap_or_else(|p| p.into_inner()).values().sum()
    }

    /// Keeps the sample and sets the gauges (to 0 for a tenant that has nothing unstored now).
    fn set_tenant_backlog(&self, by_tenant: HashMap<String, u64>) {
        let previous = std::mem::replace(
            &mut *self.tenant_backlog.write().unwrap_or_else(|p| p.into_inner()),
            Arc::new(by_tenant.clone()),
        );
        for tenant in previous.keys().filter(|t| !by_tenant.contains_key(*t)) {
            metrics::gauge!(m::TENANT_BACKLOG, "tenant" => tenant.clone()).set(0.0);
        }
        for (tenant, n) in by_tenant {
            metrics::gauge!(m::TENANT_BACKLOG, "tenant" => tenant).set(n as f64);
        }
    }
}
