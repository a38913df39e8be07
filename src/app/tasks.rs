//! The background tasks: eviction (every `evictionInterval`, and at once
//! when a publish takes the store over its cap), scrub (every
//! `extensions.scrub.interval`, the shared tier too), the pins (at start,
//! then every shortest `tagTTL`: see `pins.rs`) and, with a shared
//! tier, its size cap and leftover uploads (every `sharedCheckInterval`).
//! Local file work runs on the blocking pool. The server's wiring starts
//! them and aborts them at shutdown.

use std::sync::Arc;
use std::time::Duration;

use super::App;
use crate::lifecycle::scrub::{scrub, ScrubOptions};
use crate::lifecycle::{EvictionReport, ScrubReport};

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
    if !app.config.lifecycle.pins.is_empty() {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let every = super::pins::interval(&app.config);
            loop {
                app.refresh_pins().await;
                tokio::time::sleep(every).await;
            }
        }));
    }
    if let Some(shared) = app.coordinator.shared().cloned() {
        let app = app.clone();
        let every = app
            .coordinator
            .lifecycle()
            .config
            .shared_check_interval
            .max(Duration::from_secs(1));
        tasks.push(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                shared_upkeep(&app, &shared).await;
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

/// Multipart uploads older than this are a dead replica's leftovers.
const LEFTOVER_AGE: Duration = Duration::from_secs(24 * 3600);

/// The shared tier's cap and leftover uploads.
pub async fn shared_upkeep(app: &Arc<App>, shared: &crate::shared::Shared) {
    use crate::shared::maintenance;
    if let Some(max) = app.coordinator.lifecycle().config.shared_max_size {
        let coordinator = app.coordinator.clone();
        match maintenance::enforce_cap(shared, max, |d| coordinator.is_in_flight(d)).await {
            Ok(r) if !r.deleted.is_empty() => {
                tracing::info!(
                    deleted = r.deleted.len(),
                    freed = r.freed,
                    total = r.total,
                    store = shared.describe(),
                    "shared tier over its cap: oldest blobs deleted"
                );
                app.metrics.evictions.inc_by(r.deleted.len() as u64);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "shared tier cap check failed"),
        }
    }
    match maintenance::clean_uploads(shared, LEFTOVER_AGE).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(aborted = n, "leftover shared uploads aborted"),
        Err(e) => tracing::warn!(error = %e, "cannot list leftover shared uploads"),
    }
}

/// One eviction pass, off the async runtime.
pub async fn evict_now(app: &Arc<App>) -> EvictionReport {
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
pub async fn scrub_now(app: &Arc<App>, options: ScrubOptions) -> ScrubReport {
    let coordinator = app.coordinator.clone();
    let report = tokio::task::spawn_blocking(move || {
        // A damaged blob leaves the index and the memory cache with its
        // file (the store's removal listener), so nothing keeps serving
        // what the store no longer holds.
        scrub(coordinator.store(), options, &|_, _| {})
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
    if let Some(shared) = app.coordinator.shared() {
        let r = crate::shared::maintenance::scrub(shared, options.rate).await;
        tracing::info!(
            blobs = r.blobs_checked,
            bytes = r.bytes_checked,
            damaged = r.damaged.len(),
            errors = r.errors.len(),
            store = shared.describe(),
            "shared tier scrub done"
        );
    }
    app.metrics.scrub_runs.inc();
    *app.coordinator
        .lifecycle()
        .last_scrub
        .lock()
        .expect("scrub lock") = Some(report.clone());
    report
}
