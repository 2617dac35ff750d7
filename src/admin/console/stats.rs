//! `SHOW STATS`: PgBouncer's totals for the gateway's one database. Times are in
//! microseconds, as PgBouncer reports them; the `avg_*` columns are averages
//! since start (PgBouncer's are over its last stats period): counts and bytes per
//! second, times per transaction or query.

use std::sync::atomic::Ordering;

use super::super::{AdminView, ViewContext};

pub struct StatsView;

impl AdminView for StatsView {
    fn name(&self) -> &'static str {
        "stats"
    }

    fn columns(&self) -> &'static [&'static str] {
        &[
            "database",
            "total_xact_count",
            "total_query_count",
            "total_received",
            "total_sent",
            "total_xact_time",
            "total_query_time",
            "total_wait_time",
            "avg_xact_count",
            "avg_query_count",
            "avg_recv",
            "avg_sent",
            "avg_xact_time",
            "avg_query_time",
            "avg_wait_time",
        ]
    }

    fn admin_only(&self) -> bool {
        true
    }

    fn rows(&self, cx: &ViewContext<'_>) -> Vec<Vec<String>> {
        let t = &cx.observer.totals;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let (xacts, queries) = (get(&t.xacts), get(&t.queries));
        let (received, sent) = (get(&t.received), get(&t.sent));
        let (xact_time, query_time, wait_time) = (
            get(&t.xact_time_us),
            get(&t.query_time_us),
            get(&t.wait_time_us),
        );
        let secs = cx.observer.started.elapsed().as_secs().max(1);
        let per = |total: u64, n: u64| (total / n.max(1)).to_string();
        vec![vec![
            cx.database.to_owned(),
            xacts.to_string(),
            queries.to_string(),
            received.to_string(),
            sent.to_string(),
            xact_time.to_string(),
            query_time.to_string(),
            wait_time.to_string(),
            (xacts / secs).to_string(),
            (queries / secs).to_string(),
            (received / secs).to_string(),
            (sent / secs).to_string(),
            per(xact_time, xacts),
            per(query_time, queries),
            per(wait_time, queries),
        ]]
    }
}
