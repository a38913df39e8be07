//! The background tasks: eviction (every `evictionInterval`, and at once
//! when a publish takes the store over its cap) and scrub (every
//! `extensions.scrub.interval`). Both run their file work on the blocking
//! pool and end when the server shuts down.

use std::sync::Arc;
use std::time::Duration;

use super::scrub::{scrub, ScrubOptions};
use crate::http::App;

pub fn spawn(app: &Arc<App>) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    let lc = app.coordinator.lifecycle().clone();
    if lc.config.max_size.is_some() || lc.config.max_idle.is_some() {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let every = lc.config.eviction_interval.max(Duration::from_millis(100));
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = lc.pressure.notified() => {}
                }
                evict_now(&app).await;
            }
        }));
    }
    if let Some(sc) = app.coordinator.lifecycle().config.scrub {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(sc.interval.max(Duration::from_secs(1)));
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await; // the first tick is immediate: scrub after one interval
            loop {
                ticks.tick().await;
                scrub_now(
                    &app,
                    ScrubOptions {
                        rate: sc.rate,
                        quarantine: sc.quarantine,
                    },
                )
                .await;
            }
        }));
    }
    tasks
}

/// One eviction pass, off the async runtime.
pub async fn evict_now(app: &Arc<App>) -> super::EvictionReport {
    let coordinator = app.coordinator.clone();
    let now = app.clock.now_ms();
    tokio::task::spawn_blocking(move || {
        let lc = coordinator.lifecycle();
        lc.evict(coordinator.store(), now, |d| coordinator.is_in_flight(d))
    })
    .await
    .unwrap_or_default()
}

/// One scrub pass, off the async runtime; the report is kept.
pub async fn scrub_now(app: &Arc<App>, options: ScrubOptions) -> super::ScrubReport {
    let coordinator = app.coordinator.clone();
    let report = tokio::task::spawn_blocking(move || {
        let lc = coordinator.lifecycle();
        scrub(coordinator.store().root(), options, &|_, _| {}, &|d| {
            lc.index.remove(d)
        })
    })
    .await
    .unwrap_or_default();
    tracing::info!(
        blobs = report.blobs_checked,
        manifests = report.manifests_checked,
        damaged = report.damaged.len(),
        errors = report.errors.len(),
        "scrub pass done"
    );
    app.metrics.scrub_runs.inc();
    *app.coordinator
        .lifecycle()
        .last_scrub
        .lock()
        .expect("scrub lock") = Some(report.clone());
    report
}
