//! The Prometheus recorder behind the `metrics` facade.
//!
//! `main` installs it once with [`install`]; the returned [`Handle`] renders `/metrics`. Tests
//! never install a global recorder: they run the real binaries when they assert on metrics.
//!
//! Two registries sit behind one [`Router`](metrics_util::layers::Router):
//! - the kept one, for every metric whose label values the deployment bounds (routes, reasons,
//!   tenants made by operators);
//! - the forgetting one, for the name prefix given to [`install`]: series whose label values
//!   users choose and discard (a subscription's name). A series there that is not updated for
//!   the given time leaves the registry, so deleting and creating names cannot grow the process
//!   or the scrape without bound. Whoever records there must refresh every series that should
//!   stay (an increment by 0 will do) well within that time.

use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;
use metrics_util::layers::RouterBuilder;

/// Histogram buckets for latencies in seconds: 100 µs to 10 s.
const LATENCY_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Histogram buckets for sizes (events per batch).
const SIZE_BUCKETS: &[f64] = &[1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, 5000.0];

/// Renders `/metrics`: the kept series, then the forgetting registry's (when there is one).
#[derive(Debug, Clone)]
pub struct Handle {
    kept: PrometheusHandle,
    forgetting: Option<PrometheusHandle>,
}

impl Handle {
    /// The Prometheus text format of both registries. Rendering is also what lets the
    /// forgetting registry drop its idle series.
    pub fn render(&self) -> String {
        let mut text = self.kept.render();
        if let Some(forgetting) = &self.forgetting {
            text.push_str(&forgetting.render());
        }
        text
    }

    fn run_upkeep(&self) {
        self.kept.run_upkeep();
        if let Some(forgetting) = &self.forgetting {
            forgetting.run_upkeep();
        }
    }
}

/// What goes to the forgetting registry: metric names starting with `prefix`, forgotten once not
/// updated for `after`.
#[derive(Debug, Clone, Copy)]
pub struct Forgetting {
    pub prefix: &'static str,
    pub after: Duration,
}

/// The two registries and the router in front of them, not yet installed.
fn build(forgetting: Option<Forgetting>) -> anyhow::Result<(metrics_util::layers::Router, Handle)> {
    let kept = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Suffix("_events".into()), SIZE_BUCKETS)?
        .build_recorder();
    let mut handle = Handle { kept: kept.handle(), forgetting: None };
    let mut router = RouterBuilder::from_recorder(kept);
    if let Some(Forgetting { prefix, after }) = forgetting {
        let forgetful =
            PrometheusBuilder::new().idle_timeout(MetricKindMask::ALL, Some(after)).build_recorder();
        handle.forgetting = Some(forgetful.handle());
        router.add_route(MetricKindMask::ALL, prefix, forgetful);
    }
    Ok((router.build(), handle))
}

/// Installs the global recorder and returns the handle that renders the text format.
pub fn install(forgetting: Option<Forgetting>) -> anyhow::Result<Handle> {
    let (router, handle) = build(forgetting)?;
    metrics::set_global_recorder(router).map_err(|e| anyhow::anyhow!("{e}"))?;
    let upkeep = handle.clone();
    // Drains histogram buffers so memory stays flat between scrapes, and renders now and then so
    // that idle series are forgotten even when nothing scrapes.
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        let mut round = 0_u64;
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
            round += 1;
            if round.is_multiple_of(12)
                && let Some(forgetting) = &upkeep.forgetting
            {
                let _ = forgetting.render();
            }
        }
    });
    Ok(handle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_series_of_the_forgetting_prefix_leaves_and_a_refreshed_one_stays() {
        let after = Duration::from_secs(1);
        let (router, handle) = build(Some(Forgetting { prefix: "test_sub_", after })).expect("recorders");
        let touch = |name: &'static str, sub: &'static str| {
            metrics::with_local_recorder(&router, || {
                metrics::counter!(name, "subscription" => sub).increment(0)
            });
        };
        touch("test_sub_delivered_total", "kept");
        touch("test_sub_delivered_total", "deleted");
        touch("test_other_total", "deleted");
        let before = handle.render();
        assert!(before.contains(r#"test_sub_delivered_total{subscription="deleted"} 0"#), "{before}");
        // Twice the idle time, refreshing one series (and rendering) every 50 ms.
        let until = std::time::Instant::now() + 2 * after;
        while std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
            touch("test_sub_delivered_total", "kept");
            let _ = handle.render();
        }
        let text = handle.render();
        assert!(text.contains(r#"test_sub_delivered_total{subscription="kept"} 0"#), "{text}");
        assert!(!text.contains(r#"test_sub_delivered_total{subscription="deleted"}"#), "{text}");
        // The kept registry forgets nothing, however idle.
        assert!(text.contains(r#"test_other_total{subscription="deleted"} 0"#), "{text}");
    }
}
