//! `sluice.job_runs`: the run history as a table in the engine's `sluice` schema
//! (admin roles only, like `sluice.query_groups`), in the shape of pg_cron's
//! `cron.job_run_details` (`runid`, `job` for `jobid`, `username`, `command`,
//! `status`, `return_message`, `start_time`, `end_time`) plus `rows`, `sqlstate`,
//! `attempt`, `trigger` and `gateway`. Each scan first reads runs other gateways
//! sharing the storage have written.

use std::sync::{Arc, Weak};

use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::TableProvider;
use datafusion::error::Result;

use super::Jobs;
use super::store::Run;
use crate::auth::policy::Policy;
use crate::engine::system::{AdminOnly, AdminTable, SystemTables};

/// The jobs' system tables, for [`crate::engine::Engine::set_system_tables`]
/// (weak: the engine outlives nothing it holds, and the jobs hold the engine).
pub struct JobTables(pub Weak<Jobs>);

impl SystemTables for JobTables {
    fn tables(&self, policy: &Arc<Policy>) -> Vec<(&'static str, Arc<dyn TableProvider>)> {
        vec![(
            "job_runs",
            Arc::new(AdminOnly {
                table: JobRunsTable(self.0.clone()),
                admin: policy.admin,
            }),
        )]
    }
}

struct JobRunsTable(Weak<Jobs>);

fn schema() -> SchemaRef {
    let text = |n: &str, null: bool| Field::new(n, DataType::Utf8, null);
    let time = |n: &str, null: bool| {
        Field::new(
            n,
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            null,
        )
    };
    Arc::new(Schema::new(vec![
        Field::new("runid", DataType::Int64, false),
        text("job", false),
        text("username", false),
        text("command", false),
        text("status", false),
        text("return_message", false),
        time("start_time", false),
        time("end_time", true),
        Field::new("rows", DataType::UInt64, false),
        text("sqlstate", true),
        Field::new("attempt", DataType::UInt64, false),
        text("trigger", false),
        text("gateway", false),
    ]))
}

fn batch(runs: &[Run]) -> Result<RecordBatch> {
    let text = |f: &dyn Fn(&Run) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(runs.iter().map(f)))
    };
    let time = |f: &dyn Fn(&Run) -> Option<i64>| -> ArrayRef {
        Arc::new(TimestampMicrosecondArray::from_iter(runs.iter().map(f)).with_timezone("UTC"))
    };
    Ok(RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int64Array::from_iter_values(runs.iter().map(|r| r.runid))),
            text(&|r| &r.job),
            text(&|r| &r.username),
            text(&|r| &r.command),
            text(&|r| r.status.as_str()),
            text(&|r| &r.return_message),
            time(&|r| Some(r.start_time.timestamp_micros())),
            time(&|r| r.end_time.map(|t| t.timestamp_micros())),
            Arc::new(UInt64Array::from_iter_values(runs.iter().map(|r| r.rows))),
            Arc::new(StringArray::from_iter(
                runs.iter().map(|r| r.sqlstate.as_deref()),
            )),
            Arc::new(UInt64Array::from_iter_values(
                runs.iter().map(|r| u64::from(r.attempt)),
            )),
            text(&|r| &r.trigger),
            text(&|r| &r.gateway),
        ],
    )?)
}

#[async_trait]
impl AdminTable for JobRunsTable {
    fn name(&self) -> &'static str {
        "sluice.job_runs"
    }

    fn hint(&self) -> &'static str {
        "job runs need a Sluice role with admin = true"
    }

    fn schema(&self) -> SchemaRef {
        schema()
    }

    async fn batch(&self) -> Result<RecordBatch> {
        let runs = match self.0.upgrade() {
            Some(jobs) => {
                if let Err(e) = jobs.sync().await {
                    // The runs already known still show.
                    tracing::warn!(error = %e.message, "cannot read job runs from the storage");
                }
                jobs.runs()
            }
            None => Vec::new(),
        };
        batch(&runs)
    }
}
