//! `SHOW sluice.materialized_views`: the gateway views this session may read (all
//! of them for view managers and admins), their size and refreshes; refresh errors
//! in full for admins only.

use super::{AdminView, ViewContext};

pub struct MaterializedViewsView;

impl AdminView for MaterializedViewsView {
    fn name(&self) -> &'static str {
        "sluice.materialized_views"
    }

    fn columns(&self) -> &'static [&'static str] {
        crate::cache::matview::SHOW_COLUMNS
    }

    fn rows(&self, cx: &ViewContext<'_>) -> Vec<Vec<String>> {
        let Some(mv) = cx.matviews else {
            return Vec::new();
        };
        let all = cx.policy.admin || cx.policy.manage_materialized_views;
        mv.show_rows(
            |v| all || cx.policy.can_read(&v.schema, &v.name),
            cx.policy.admin,
        )
    }
}
