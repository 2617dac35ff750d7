//! `/metrics`: state gauges are set from the live parts at each scrape (nothing on
//! the statement path keeps them current), then the whole registry is rendered.

use hyper::{Response, StatusCode};

use super::{Body, Shared, respond};
use crate::metrics::metrics;

pub(super) fn scrape(shared: &Shared) -> Response<Body> {
    let m = metrics();
    for (state, count) in shared.observer.board.counts() {
        m.client_connections
            .with_label_values(&[state.name()])
            .set(count as i64);
    }
    for u in shared.upstreams.all() {
        let stats = u.pool.stats();
        let name = [u.name()];
        m.pool_client_waiting
            .with_label_values(&name)
            .set(stats.waiting as i64);
        m.pool_server_active
            .with_label_values(&name)
            .set(stats.open.saturating_sub(stats.idle) as i64);
        m.pool_server_idle
            .with_label_values(&name)
            .set(stats.idle as i64);
    }
    if let Some(cache) = &shared.results {
        let s = cache.stats();
        m.cache_bytes.set(s.bytes as i64);
        m.cache_entries.set(s.entries as i64);
    }
    if let Some(workload) = &shared.workload {
        for (i, q) in workload.queues() {
            let (running, waiting, slots) = workload.usage(i);
            let name = [&*q.name];
            m.workload_running
                .with_label_values(&name)
                .set(running as i64);
            m.workload_waiting
                .with_label_values(&name)
                .set(waiting as i64);
            let slots = if slots == usize::MAX {
                -1
            } else {
                slots as i64
            };
            m.workload_slots.with_label_values(&name).set(slots);
        }
    }
    lake_memory(&shared.engine);
    if let Some(audit) = &shared.observer.audit {
        m.audit_pending.set(audit.stats().pending as i64);
    }
    respond(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        m.render(),
    )
}

/// The lake engine's memory pool, role budgets and spill directory.
fn lake_memory(engine: &crate::engine::Engine) {
    let m = metrics();
    let memory = engine.memory().stats();
    m.lake_memory_limit
        .set(memory.limit.map_or(-1, |l| l as i64));
    m.lake_memory_reserved.set(memory.reserved as i64);
    for (role, used, limit) in &memory.roles {
        m.lake_memory_role_reserved
            .with_label_values(&[role])
            .set(*used as i64);
        m.lake_memory_role_limit
            .with_label_values(&[role])
            .set(*limit as i64);
    }
    let disk = &engine.runtime().disk_manager;
    m.lake_spill_bytes.set(disk.used_disk_space() as i64);
    m.lake_spill_limit
        .set(disk.max_temp_directory_size() as i64);
    m.lake_spill_files
        .set(disk.spilling_progress().active_files_count as i64);
}
