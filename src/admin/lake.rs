//! `SHOW sluice.lake`: the Glue databases this session's roles may see, with the
//! last catalog refresh and request counts.

use super::{AdminView, ViewContext};

pub struct LakeView;

impl AdminView for LakeView {
    fn name(&self) -> &'static str {
        "sluice.lake"
    }

    fn columns(&self) -> &'static [&'static str] {
        &[
            "database",
            "source",
            "tables",
            "refreshed_secs_ago",
            "refresh_error",
            "glue_requests",
            "partitions_fetched",
            "listings",
        ]
    }

    fn rows(&self, cx: &ViewContext<'_>) -> Vec<Vec<String>> {
        let Some(glue) = cx.engine.glue() else {
            return Vec::new();
        };
        let (age, error) = match glue.last_refresh() {
            Some((age, result)) => (age.as_secs().to_string(), result.err().unwrap_or_default()),
            None => (String::new(), String::new()),
        };
        // Refresh errors may name other databases or the gateway's AWS identity.
        let error = if cx.policy.admin || error.is_empty() {
            error
        } else {
            "failed (details for admins and in the log)".to_owned()
        };
        glue.mounted()
            .into_iter()
            .filter(|(db, _)| cx.policy.may_read_in(db))
            .map(|(db, _)| {
                let tables = cx
                    .engine
                    .lake_table_names(&db)
                    .iter()
                    .filter(|t| cx.policy.can_read(&db, t))
                    .count();
                let stats = glue.shared().stats(&db);
                vec![
                    db,
                    "glue".into(),
                    tables.to_string(),
                    age.clone(),
                    error.clone(),
                    stats.glue_requests.to_string(),
                    stats.partitions_fetched.to_string(),
                    stats.listings.to_string(),
                ]
            })
            .collect()
    }
}
