//! Prometheus metrics: one registry for the process, served as text on the admin
//! listener's `/metrics` (`admin::http`).
//!
//! Counters and histograms are bumped where things happen (any layer may: this
//! module sits at the bottom, beside `error`, and imports nothing of Sluice's).
//! Gauges that describe current state (client connections by state, upstream
//! sessions, cache size) are set from the live parts just before each scrape
//! (`admin::http::metrics`), so no session pays to keep them current.
//!
//! Names follow pgbouncer_exporter where one exists (`…_client_connections`,
//! `…_pools_client_waiting_connections`, `…_pools_server_active_connections`),
//! with the `sluice_` prefix; the rest are Sluice's own. The README's Operations and
//! Workload sections list them all.

use std::sync::{LazyLock, OnceLock};

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Statement and view-refresh duration buckets, in seconds: half a millisecond
/// (a cache hit) to ten minutes (a warehouse report).
const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0, 600.0,
];

pub struct Metrics {
    registry: Registry,
    // Statements (the pipeline's record stage).
    pub statement_duration: HistogramVec,
    pub statement_rows: IntCounterVec,
    pub statement_bytes: IntCounterVec,
    pub statements_refused: IntCounterVec,
    // Clients and logins.
    pub client_connections: IntGaugeVec,
    pub logins: IntCounterVec,
    pub session_terminations: IntCounterVec,
    pub token_refusals: IntCounterVec,
    pub jwks_fetches: IntCounterVec,
    pub received_bytes: IntCounter,
    pub sent_bytes: IntCounter,
    // Upstream pools (set at scrape).
    pub pool_client_waiting: IntGaugeVec,
    pub pool_server_active: IntGaugeVec,
    pub pool_server_idle: IntGaugeVec,
    pub pool_wait: HistogramVec,
    pub credential_mints: IntCounterVec,
    pub credential_throttles: IntCounterVec,
    pub credential_failures: IntCounterVec,
    // Result cache.
    pub cache_hits: IntCounter,
    pub cache_misses: IntCounter,
    pub cache_evictions: IntCounter,
    pub cache_bytes: IntGauge,
    pub cache_entries: IntGauge,
    // Gateway materialized views.
    pub view_refresh_duration: HistogramVec,
    pub view_refresh_failures: IntCounterVec,
    // Scheduled jobs.
    pub job_runs: IntCounterVec,
    pub job_run_duration: HistogramVec,
    pub job_failing: IntGaugeVec,
    pub job_leases_lost: IntCounterVec,
    // Several gateways as one (`cluster`).
    pub view_leases_lost: IntCounterVec,
    pub view_changes_applied: IntCounter,
    pub cache_shared_invalidations: IntCounterVec,
    pub cluster_sync_errors: IntCounterVec,
    pub cancels_forwarded: IntCounter,
    // Distributed lake statements (`[engine.distributed]`).
    pub distributed_jobs: IntCounterVec,
    pub distributed_local_runs: IntCounterVec,
    // The lake's catalog and storage.
    pub glue_requests: IntCounterVec,
    pub s3_requests: IntCounterVec,
    // Audit trail.
    pub audit_events: IntCounter,
    pub audit_write_failures: IntCounter,
    pub audit_dropped: IntCounter,
    pub audit_pending: IntGauge,
    // Workload queues and rules.
    pub workload_wait: HistogramVec,
    pub workload_waits: IntCounterVec,
    pub workload_rule_actions: IntCounterVec,
    pub workload_running: IntGaugeVec,
    pub workload_waiting: IntGaugeVec,
    pub workload_slots: IntGaugeVec,
    // Lake query memory and spilling (set at scrape).
    pub lake_memory_limit: IntGauge,
    pub lake_memory_reserved: IntGauge,
    pub lake_memory_role_reserved: IntGaugeVec,
    pub lake_memory_role_limit: IntGaugeVec,
    pub lake_spill_bytes: IntGauge,
    pub lake_spill_limit: IntGauge,
    pub lake_spill_files: IntGauge,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric name");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric name");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric name");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric name");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

fn histogram_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(DURATION_BUCKETS.to_vec());
    let h = HistogramVec::new(opts, labels).expect("valid metric name");
    registry
        .register(Box::new(h.clone()))
        .expect("unique metric");
    h
}

impl Metrics {
    // The names and label sets below are constants: registering them cannot fail,
    // which a unit test checks on every build.
    fn new() -> Metrics {
        let r = Registry::new();
        let build = gauge_vec(&r, "sluice_build_info", "Sluice's version.", &["version"]);
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        gauge(&r, "sluice_up", "1 while Sluice serves.").set(1);
        Metrics {
            statement_duration: histogram_vec(
                &r,
                "sluice_statement_duration_seconds",
                "Statement time from admission to its end, by route and outcome (ok, error).",
                &["route", "outcome"],
            ),
            statement_rows: counter_vec(
                &r,
                "sluice_statement_rows_total",
                "Rows returned or affected, by route.",
                &["route"],
            ),
            statement_bytes: counter_vec(
                &r,
                "sluice_statement_bytes_total",
                "Bytes of answers sent to clients, by route.",
                &["route"],
            ),
            statements_refused: counter_vec(
                &r,
                "sluice_statements_refused_total",
                "Statements refused before running, by SQLSTATE.",
                &["sqlstate"],
            ),
            client_connections: gauge_vec(
                &r,
                "sluice_client_connections",
                "Client sessions by state (active, idle, idle_in_transaction, waiting).",
                &["state"],
            ),
            logins: counter_vec(
                &r,
                "sluice_logins_total",
                "Login attempts by method (password, token, ldap) and outcome (ok, failed).",
                &["method", "outcome"],
            ),
            session_terminations: counter_vec(
                &r,
                "sluice_session_terminations_total",
                "Sessions the gateway ended, by reason (idle_session_timeout, \
                 idle_in_transaction_session_timeout, max_session_age, terminated).",
                &["reason"],
            ),
            token_refusals: counter_vec(
                &r,
                "sluice_token_refusals_total",
                "Access tokens refused, by reason.",
                &["reason"],
            ),
            jwks_fetches: counter_vec(
                &r,
                "sluice_jwks_fetches_total",
                "Signing-key (JWKS) and discovery fetches, by outcome (ok, error).",
                &["outcome"],
            ),
            received_bytes: counter(
                &r,
                "sluice_received_bytes_total",
                "Bytes received from clients after startup.",
            ),
            sent_bytes: counter(&r, "sluice_sent_bytes_total", "Bytes sent to clients."),
            pool_client_waiting: gauge_vec(
                &r,
                "sluice_pools_client_waiting_connections",
                "Clients waiting for an upstream session, per upstream.",
                &["upstream"],
            ),
            pool_server_active: gauge_vec(
                &r,
                "sluice_pools_server_active_connections",
                "Upstream sessions held by clients, per upstream.",
                &["upstream"],
            ),
            pool_server_idle: gauge_vec(
                &r,
                "sluice_pools_server_idle_connections",
                "Idle pooled upstream sessions, per upstream.",
                &["upstream"],
            ),
            pool_wait: histogram_vec(
                &r,
                "sluice_pools_wait_seconds",
                "Time clients waited for an upstream session, per upstream.",
                &["upstream"],
            ),
            credential_mints: counter_vec(
                &r,
                "sluice_credential_mints_total",
                "Temporary upstream credentials minted, per upstream.",
                &["upstream"],
            ),
            credential_throttles: counter_vec(
                &r,
                "sluice_credential_throttles_total",
                "Credential requests the AWS API throttled, per upstream.",
                &["upstream"],
            ),
            credential_failures: counter_vec(
                &r,
                "sluice_credential_failures_total",
                "Credential mints that failed, per upstream.",
                &["upstream"],
            ),
            cache_hits: counter(
                &r,
                "sluice_result_cache_hits_total",
                "Statements answered from the result cache.",
            ),
            cache_misses: counter(
                &r,
                "sluice_result_cache_misses_total",
                "Cacheable statements not found in the result cache.",
            ),
            cache_evictions: counter(
                &r,
                "sluice_result_cache_evictions_total",
                "Result-cache entries removed for space, expiry or invalidation.",
            ),
            cache_bytes: gauge(
                &r,
                "sluice_result_cache_bytes",
                "Bytes held by the result cache.",
            ),
            cache_entries: gauge(
                &r,
                "sluice_result_cache_entries",
                "Entries in the result cache.",
            ),
            view_refresh_duration: histogram_vec(
                &r,
                "sluice_view_refresh_duration_seconds",
                "Gateway materialized view refresh time, per view.",
                &["view"],
            ),
            view_refresh_failures: counter_vec(
                &r,
                "sluice_view_refresh_failures_total",
                "Gateway materialized view refreshes that failed, per view.",
                &["view"],
            ),
            job_runs: counter_vec(
                &r,
                "sluice_job_runs_total",
                "Scheduled job runs (each attempt), by job and status (succeeded, failed, timed_out, skipped).",
                &["job", "status"],
            ),
            job_run_duration: histogram_vec(
                &r,
                "sluice_job_run_duration_seconds",
                "Scheduled job run time (each attempt), per job.",
                &["job"],
            ),
            job_failing: gauge_vec(
                &r,
                "sluice_job_failing",
                "1 while a job's last run (after its retries) failed or timed out, else 0.",
                &["job"],
            ),
            job_leases_lost: counter_vec(
                &r,
                "sluice_job_leases_lost_total",
                "Scheduled ticks another gateway sharing the job storage took (this one skipped them).",
                &["job"],
            ),
            view_leases_lost: counter_vec(
                &r,
                "sluice_view_leases_lost_total",
                "Scheduled view refreshes another gateway sharing the view storage took (this one skipped them).",
                &["view"],
            ),
            view_changes_applied: counter(
                &r,
                "sluice_view_changes_applied_total",
                "View changes (created, refreshed, dropped) made by other gateways and applied here.",
            ),
            cache_shared_invalidations: counter_vec(
                &r,
                "sluice_cache_shared_invalidations_total",
                "Result-cache invalidations shared with other gateways: published (writes seen here) and received.",
                &["direction"],
            ),
            cluster_sync_errors: counter_vec(
                &r,
                "sluice_cluster_sync_errors_total",
                "Failed reads or writes of the shared storage gateways coordinate through, by what (views, invalidations).",
                &["what"],
            ),
            cancels_forwarded: counter(
                &r,
                "sluice_cancels_forwarded_total",
                "Cancel requests for another gateway's session passed on to it.",
            ),
            distributed_jobs: counter_vec(
                &r,
                "sluice_distributed_jobs_total",
                "Distributed lake jobs by outcome: submitted, then succeeded, failed, canceled (the scheduler confirmed) or cancel_unconfirmed; unavailable counts statements refused because the scheduler was.",
                &["outcome"],
            ),
            distributed_local_runs: counter_vec(
                &r,
                "sluice_distributed_local_runs_total",
                "Statements placed on the distributed engine that ran on the gateway instead, by reason (not_distributable, unavailable).",
                &["reason"],
            ),
            glue_requests: counter_vec(
                &r,
                "sluice_glue_requests_total",
                "Glue catalog requests, by operation and outcome (ok, error).",
                &["operation", "outcome"],
            ),
            s3_requests: counter_vec(
                &r,
                "sluice_s3_requests_total",
                "Object-store requests for lake data, by operation and outcome (ok, error).",
                &["operation", "outcome"],
            ),
            audit_events: counter(
                &r,
                "sluice_audit_events_total",
                "Audit events written to every sink.",
            ),
            audit_write_failures: counter(
                &r,
                "sluice_audit_write_failures_total",
                "Audit sink writes that failed (and were retried).",
            ),
            audit_dropped: counter(
                &r,
                "sluice_audit_dropped_total",
                "Audit events dropped (on_failure = continue, buffer full).",
            ),
            audit_pending: gauge(
                &r,
                "sluice_audit_pending_events",
                "Audit events not yet written.",
            ),
            workload_wait: histogram_vec(
                &r,
                "sluice_workload_queue_wait_seconds",
                "Time statements that had to wait spent in line for a slot, per queue.",
                &["queue"],
            ),
            workload_waits: counter_vec(
                &r,
                "sluice_workload_queue_waits_total",
                "Statements that waited for a slot, per queue and how the wait ended (admitted, timed_out, canceled).",
                &["queue", "result"],
            ),
            workload_rule_actions: counter_vec(
                &r,
                "sluice_workload_rule_actions_total",
                "Query monitoring rules that acted, per rule and action (log, cancel, refuse).",
                &["rule", "action"],
            ),
            workload_running: gauge_vec(
                &r,
                "sluice_workload_queue_running",
                "Statements holding a slot, per queue.",
                &["queue"],
            ),
            workload_waiting: gauge_vec(
                &r,
                "sluice_workload_queue_waiting",
                "Statements waiting for a slot, per queue.",
                &["queue"],
            ),
            workload_slots: gauge_vec(
                &r,
                "sluice_workload_queue_slots",
                "Slots of each queue (-1: unlimited).",
                &["queue"],
            ),
            lake_memory_limit: gauge(
                &r,
                "sluice_lake_memory_limit_bytes",
                "The memory all lake queries together may hold (engine.memory_limit_mb; -1: unlimited).",
            ),
            lake_memory_reserved: gauge(
                &r,
                "sluice_lake_memory_reserved_bytes",
                "Memory lake query operators hold now (DataFusion's memory pool).",
            ),
            lake_memory_role_reserved: gauge_vec(
                &r,
                "sluice_lake_memory_role_reserved_bytes",
                "Memory held now by the lake queries of sessions acting under a role with a memory_share.",
                &["role"],
            ),
            lake_memory_role_limit: gauge_vec(
                &r,
                "sluice_lake_memory_role_limit_bytes",
                "A role's memory_share of engine.memory_limit_mb, in bytes.",
                &["role"],
            ),
            lake_spill_bytes: gauge(
                &r,
                "sluice_lake_spill_bytes",
                "Bytes in lake query spill files now (engine.spill_dir).",
            ),
            lake_spill_limit: gauge(
                &r,
                "sluice_lake_spill_limit_bytes",
                "The most spill files may hold together (engine.spill_max_mb).",
            ),
            lake_spill_files: gauge(
                &r,
                "sluice_lake_spill_files",
                "Lake query spill files open now.",
            ),
            registry: r,
        }
    }

    /// Everything, in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail for valid families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The routes the record stage names (`StatementEnd::route`); a route not listed
/// here is still counted, through a label lookup per statement.
const ROUTES: [&str; 8] = [
    "upstream",
    "lake",
    "cache",
    "session",
    "refused",
    "view",
    "cross_engine",
    "cursor",
];

/// One route's statement series, resolved once rather than per statement (a
/// `with_label_values` call hashes the labels and takes the vector's lock). Each
/// is made on first use, as `with_label_values` would make it, so `/metrics` shows
/// the same series as before: none for a route or outcome not seen yet.
struct RouteSeries {
    route: &'static str,
    ok: OnceLock<Histogram>,
    error: OnceLock<Histogram>,
    rows: OnceLock<IntCounter>,
    bytes: OnceLock<IntCounter>,
}

static ROUTE_SERIES: [RouteSeries; ROUTES.len()] = {
    let mut i = 0;
    let mut all = [const {
        RouteSeries {
            route: "",
            ok: OnceLock::new(),
            error: OnceLock::new(),
            rows: OnceLock::new(),
            bytes: OnceLock::new(),
        }
    }; ROUTES.len()];
    while i < ROUTES.len() {
        all[i].route = ROUTES[i];
        i += 1;
    }
    all
};

/// A finished statement's duration, rows and bytes, by route and outcome.
pub fn statement(route: &'static str, ok: bool, seconds: f64, rows: Option<u64>, bytes: u64) {
    let outcome = if ok { "ok" } else { "error" };
    let Some(series) = ROUTE_SERIES.iter().find(|r| r.route == route) else {
        let m = metrics();
        m.statement_duration
            .with_label_values(&[route, outcome])
            .observe(seconds);
        if let Some(rows) = rows {
            m.statement_rows.with_label_values(&[route]).inc_by(rows);
        }
        m.statement_bytes.with_label_values(&[route]).inc_by(bytes);
        return;
    };
    let m = metrics();
    let cell = if ok { &series.ok } else { &series.error };
    cell.get_or_init(|| m.statement_duration.with_label_values(&[route, outcome]))
        .observe(seconds);
    if let Some(rows) = rows {
        series
            .rows
            .get_or_init(|| m.statement_rows.with_label_values(&[route]))
            .inc_by(rows);
    }
    series
        .bytes
        .get_or_init(|| m.statement_bytes.with_label_values(&[route]))
        .inc_by(bytes);
}

/// `ok` or `error`, the outcome label of request counters.
pub fn outcome<T, E>(r: &Result<T, E>) -> &'static str {
    if r.is_ok() { "ok" } else { "error" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_registers_and_renders() {
        let m = metrics();
        m.statement_duration
            .with_label_values(&["lake", "ok"])
            .observe(0.002);
        m.logins.with_label_values(&["token", "ok"]).inc();
        let text = m.render();
        assert!(text.contains("sluice_up 1"), "{text}");
        assert!(
            text.contains("sluice_statement_duration_seconds_bucket{outcome=\"ok\",route=\"lake\"")
        );
        assert!(text.contains("sluice_logins_total{method=\"token\",outcome=\"ok\"}"));
        assert!(text.contains("sluice_build_info{version="));
    }

    #[test]
    fn statements_count_by_route_and_outcome() {
        let m = metrics();
        let count = |route: &str, outcome: &str| {
            m.statement_duration
                .with_label_values(&[route, outcome])
                .get_sample_count()
        };
        let bytes = |route: &str| m.statement_bytes.with_label_values(&[route]).get();
        let rows = |route: &str| m.statement_rows.with_label_values(&[route]).get();
        for route in ["cursor", "a_route_not_listed"] {
            let before = (
                count(route, "ok"),
                count(route, "error"),
                bytes(route),
                rows(route),
            );
            statement(route, true, 0.001, Some(3), 10);
            statement(route, false, 0.001, None, 5);
            statement(route, true, 0.001, Some(2), 0);
            let after = (
                count(route, "ok"),
                count(route, "error"),
                bytes(route),
                rows(route),
            );
            assert_eq!(
                after,
                (before.0 + 2, before.1 + 1, before.2 + 15, before.3 + 5),
                "{route}"
            );
        }
    }
}
