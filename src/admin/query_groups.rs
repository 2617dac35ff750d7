//! `SHOW sluice.query_groups_info` (admins): how many groups are kept, the limit,
//! how often the least-used were dropped, and when they were last reset (like
//! pg_stat_statements_info). The groups themselves are a table:
//! `SELECT … FROM sluice.query_groups`.

use super::{AdminView, ViewContext};

pub struct QueryGroupsInfoView;

impl AdminView for QueryGroupsInfoView {
    fn name(&self) -> &'static str {
        "sluice.query_groups_info"
    }

    fn columns(&self) -> &'static [&'static str] {
        &["enabled", "groups", "deallocations", "reset_at"]
    }

    fn admin_only(&self) -> bool {
        true
    }

    fn rows(&self, cx: &ViewContext<'_>) -> Vec<Vec<String>> {
        let Some(groups) = &cx.observer.query_groups else {
            return vec![vec!["off".into(), "0".into(), "0".into(), String::new()]];
        };
        vec![vec![
            "on".into(),
            groups.len().to_string(),
            groups.deallocations().to_string(),
            super::console::timestamp(groups.reset_at()),
        ]]
    }
}
