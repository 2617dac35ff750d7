//! `sluice.query_groups` as a table the lake engine queries like any other
//! (`SELECT … FROM sluice.query_groups ORDER BY total_time DESC`). Only admin roles
//! see the `sluice` schema (`engine::system`): groups carry every user's
//! (normalised) statements. The table checks again, in case a policy's context
//! is ever built otherwise.

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::TableProvider;
use datafusion::error::Result;

use super::Observer;
use super::query_groups::GroupRow;
use crate::auth::policy::Policy;
use crate::engine::system::{AdminOnly, AdminTable, SystemTables};

/// The system tables, for [`crate::engine::Engine::set_system_tables`].
pub struct ObserverTables(pub Arc<Observer>);

impl SystemTables for ObserverTables {
    fn tables(&self, policy: &Arc<Policy>) -> Vec<(&'static str, Arc<dyn TableProvider>)> {
        vec![(
            "query_groups",
            Arc::new(AdminOnly {
                table: QueryGroupsTable(self.0.clone()),
                admin: policy.admin,
            }),
        )]
    }
}

struct QueryGroupsTable(Arc<Observer>);

fn schema() -> SchemaRef {
    let text = |n: &str| Field::new(n, DataType::Utf8, false);
    let count = |n: &str| Field::new(n, DataType::UInt64, false);
    let millis = |n: &str| Field::new(n, DataType::Float64, false);
    let time = |n: &str| {
        Field::new(
            n,
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        )
    };
    Arc::new(Schema::new(vec![
        text("fingerprint"),
        text("user_name"),
        text("application"),
        text("query_group"),
        text("route"),
        text("query"),
        count("calls"),
        millis("total_time"),
        millis("mean_time"),
        millis("min_time"),
        millis("max_time"),
        millis("p95_time"),
        millis("queue_time"),
        count("rows"),
        count("errors"),
        count("cache_hits"),
        count("rule_actions"),
        time("first_seen"),
        time("last_seen"),
    ]))
}

fn micros(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn batch(rows: &[GroupRow]) -> Result<RecordBatch> {
    let text = |f: &dyn Fn(&GroupRow) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(rows.iter().map(f)))
    };
    let count = |f: &dyn Fn(&GroupRow) -> u64| -> ArrayRef {
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(f)))
    };
    let millis = |f: &dyn Fn(&GroupRow) -> f64| -> ArrayRef {
        Arc::new(Float64Array::from_iter_values(rows.iter().map(f)))
    };
    let time = |f: &dyn Fn(&GroupRow) -> SystemTime| -> ArrayRef {
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| micros(f(r))))
                .with_timezone("UTC"),
        )
    };
    Ok(RecordBatch::try_new(
        schema(),
        vec![
            text(&|r| &r.fingerprint),
            text(&|r| &r.user),
            text(&|r| &r.application),
            text(&|r| &r.query_group),
            text(&|r| r.route),
            text(&|r| &r.query),
            count(&|r| r.calls),
            millis(&|r| r.total_time),
            millis(&|r| r.mean_time),
            millis(&|r| r.min_time),
            millis(&|r| r.max_time),
            millis(&|r| r.p95_time),
            millis(&|r| r.queue_time),
            count(&|r| r.rows),
            count(&|r| r.errors),
            count(&|r| r.cache_hits),
            count(&|r| r.rule_actions),
            time(&|r| r.first_seen),
            time(&|r| r.last_seen),
        ],
    )?)
}

#[async_trait]
impl AdminTable for QueryGroupsTable {
    fn name(&self) -> &'static str {
        "sluice.query_groups"
    }

    fn hint(&self) -> &'static str {
        "query groups show every user's statements: they need a Sluice role with admin = true"
    }

    fn schema(&self) -> SchemaRef {
        schema()
    }

    async fn batch(&self) -> Result<RecordBatch> {
        let rows = match &self.0.query_groups {
            Some(groups) => groups.rows(),
            None => Vec::new(),
        };
        batch(&rows)
    }
}
