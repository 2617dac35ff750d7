//! `CALL sluice.refresh_lake(['database'])`: reload Glue metadata now.
//!
//! Naming a database needs a grant in it (the reply and its errors would otherwise
//! tell who may not see it what it contains); the whole catalog, which clears every
//! cache, needs an admin role.

use super::ViewContext;
use super::lake::LakeView;
use crate::admin::AdminView;
use crate::error::{PgError, SqlState};

/// Refreshes and returns the NOTICE text summarising what the caller now sees.
pub async fn refresh_lake(cx: &ViewContext<'_>, database: Option<&str>) -> Result<String, PgError> {
    let Some(glue) = cx.engine.glue() else {
        return Err(PgError::new(
            SqlState("55000"),
            "there is no Glue catalog to refresh ([lake.glue] is not configured)",
        ));
    };
    match database {
        Some(db) if !cx.policy.may_read_in(&db.to_lowercase()) => {
            return Err(PgError::new(
                SqlState::INSUFFICIENT_PRIVILEGE,
                format!("permission denied for lake database \"{db}\""),
            ));
        }
        None if !cx.policy.admin => {
            return Err(PgError::new(
                SqlState::INSUFFICIENT_PRIVILEGE,
                "permission denied: refreshing the whole lake catalog needs a Sluice role with admin = true",
            )
            .with_hint("refresh one database you may read: CALL sluice.refresh_lake('database')"));
        }
        _ => {}
    }
    glue.refresh(database).await?;
    let visible = LakeView.rows(cx);
    let tables: usize = visible
        .iter()
        .filter_map(|r| r[2].parse::<usize>().ok())
        .sum();
    Ok(format!(
        "lake catalog refreshed: {} database(s), {tables} table(s) visible to you",
        visible.len()
    ))
}
