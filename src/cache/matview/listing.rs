//! `SHOW sluice.materialized_views`: the view list as rows.

use super::*;

/// Column names of `SHOW sluice.materialized_views`.
pub const SHOW_COLUMNS: &[&str] = &[
    "view",
    "populated",
    "rows",
    "bytes",
    "files",
    "refreshed_secs_ago",
    "last_refresh_ms",
    "schedule",
    "next_refresh_in_secs",
    "incremental_column",
    "high_water",
    "source",
    "refreshing",
    "refreshes",
    "failures",
    "last_error",
    "defined_in",
    "owner",
];

impl MatViews {
    /// Rows of `SHOW sluice.materialized_views` for views `visible` accepts; the
    /// refresh error text only when `details`.
    pub fn show_rows(
        &self,
        visible: impl Fn(&ViewName) -> bool,
        details: bool,
    ) -> Vec<Vec<String>> {
        let Ok(views) = self.views.read() else {
            return Vec::new();
        };
        let now = Utc::now();
        let ago = |t: &Option<String>| {
            t.as_deref()
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                .map(|t| {
                    (now - t.with_timezone(&Utc))
                        .num_seconds()
                        .max(0)
                        .to_string()
                })
                .unwrap_or_default()
        };
        views
            .values()
            .filter(|v| visible(&v.name))
            .map(|v| {
                let m = v.manifest();
                let s = &m.state;
                let next = v
                    .next_due
                    .lock()
                    .ok()
                    .and_then(|n| *n)
                    .map(|n| (n - now).num_seconds().max(0).to_string())
                    .unwrap_or_default();
                let error = match &s.last_error {
                    Some(e) if details => e.clone(),
                    Some(_) => "failed (details for admins and in the log)".into(),
                    None => String::new(),
                };
                vec![
                    v.name.to_string(),
                    s.populated.to_string(),
                    s.rows().to_string(),
                    s.bytes().to_string(),
                    s.files.len().to_string(),
                    ago(&s.refreshed_at),
                    s.last_duration_ms
                        .map(|d| d.to_string())
                        .unwrap_or_default(),
                    schedule_of(&m.definition)
                        .map(|s| s.describe())
                        .unwrap_or_default(),
                    next,
                    m.definition.incremental_column.clone().unwrap_or_default(),
                    s.high_water.clone().unwrap_or_default(),
                    s.source.clone().unwrap_or_default(),
                    v.refreshing.load(Ordering::Acquire).to_string(),
                    s.refreshes.to_string(),
                    s.failures.to_string(),
                    error,
                    if m.definition.declared {
                        "config"
                    } else {
                        "sql"
                    }
                    .into(),
                    m.definition.owner.clone(),
                ]
            })
            .collect()
    }
}
