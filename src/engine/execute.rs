//! Running a planned lake query: physical planning (where the planned scan size
//! is known, for the workload's scan rules) and execution on the query runtime.

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{ExecutionPlan, execute_stream};
use futures::StreamExt;

use super::{Engine, QueryContext};
use crate::error::{PgError, SqlState};
use crate::lake::scan_guard::ScanGuard;

/// A lake query planned down to its physical plan, not started yet.
pub struct PhysicalQuery {
    plan: Arc<dyn ExecutionPlan>,
    task_ctx: Arc<TaskContext>,
    schema: SchemaRef,
}

impl PhysicalQuery {
    /// Bytes of the files the plan reads, after partition pruning (whole files:
    /// projection and row-group pruning only make the real read smaller). Tables
    /// that are not files (cross-engine Redshift tables, system tables) count 0.
    pub fn scan_bytes(&self) -> u64 {
        fn walk(plan: &Arc<dyn ExecutionPlan>, total: &mut u64) {
            if let Some(source) = plan.downcast_ref::<DataSourceExec>()
                && let Some(files) = source.data_source().downcast_ref::<FileScanConfig>()
            {
                for group in &files.file_groups {
                    for file in group.files() {
                        *total += match &file.range {
                            Some(r) => r.end.saturating_sub(r.start) as u64,
                            None => file.object_meta.size,
                        };
                    }
                }
            }
            for child in plan.children() {
                walk(child, total);
            }
        }
        let mut total = 0;
        walk(&self.plan, &mut total);
        total
    }
}

impl Engine {
    /// Plans a query down to its physical plan (listing files and pruning
    /// partitions, reading no data).
    /// `guard`: the statement's scan-size limit, checked by the table providers
    /// as they list files.
    pub async fn prepare(
        &self,
        plan: LogicalPlan,
        qc: &QueryContext,
        guard: Option<Arc<ScanGuard>>,
    ) -> Result<PhysicalQuery, PgError> {
        let mut state = self.state_for(qc).await?;
        if let Some(guard) = guard {
            state.config_mut().set_extension(guard);
        }
        let schema = Arc::new(plan.schema().as_arrow().clone());
        let physical = state.create_physical_plan(&plan).await?;
        Ok(PhysicalQuery {
            plan: physical,
            task_ctx: state.task_ctx(),
            schema,
        })
    }

    /// Starts a planned query on the query runtime. Batches cross to the session
    /// through a small bounded channel, so a client that stops reading stops the
    /// query (backpressure); dropping the stream aborts the query.
    pub fn run(&self, query: PhysicalQuery) -> Result<SendableRecordBatchStream, PgError> {
        let PhysicalQuery {
            plan,
            task_ctx,
            schema,
        } = query;
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let Some(cpu) = self.cpu.0.as_ref() else {
            return Err(PgError::new(
                SqlState::ADMIN_SHUTDOWN,
                "the server is shutting down",
            ));
        };
        let driver = cpu.spawn(async move {
            let mut stream = match execute_stream(plan, task_ctx) {
                Ok(s) => s,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            while let Some(batch) = stream.next().await {
                if tx.send(batch).await.is_err() {
                    break; // the session went away or gave up
                }
            }
        });
        let batches = AbortOnDrop { rx, driver };
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, batches)))
    }

    /// Plans and starts a query ([`prepare`](Self::prepare), then [`run`](Self::run)).
    pub async fn execute(
        &self,
        plan: LogicalPlan,
        qc: &QueryContext,
    ) -> Result<SendableRecordBatchStream, PgError> {
        let query = self.prepare(plan, qc, None).await?;
        self.run(query)
    }
}

/// The session's end of a running query; dropping it cancels the query.
struct AbortOnDrop {
    rx: tokio::sync::mpsc::Receiver<
        datafusion::error::Result<datafusion::arrow::record_batch::RecordBatch>,
    >,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl futures::Stream for AbortOnDrop {
    type Item = datafusion::error::Result<datafusion::arrow::record_batch::RecordBatch>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        match self.rx.poll_recv(cx) {
            Poll::Ready(None) => {
                // The driver is gone: a normal end, or a panic that must not pass
                // for a complete (but short) result.
                match std::pin::Pin::new(&mut self.driver).poll(cx) {
                    Poll::Ready(Err(e)) if e.is_panic() => {
                        Poll::Ready(Some(Err(datafusion::error::DataFusionError::Execution(
                            "the query failed with an internal error (see the gateway log)".into(),
                        ))))
                    }
                    Poll::Ready(_) => Poll::Ready(None),
                    Poll::Pending => Poll::Pending,
                }
            }
            other => other,
        }
    }
}
