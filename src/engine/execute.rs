//! Running a planned lake query: physical planning (where the planned scan size
//! is known, for the workload's scan rules and the choice of engine) and execution
//! on the query runtime, or as a job on the distributed cluster.

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::session_state::SessionState;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{ExecutionPlan, execute_stream};
use futures::StreamExt;
use futures::future::BoxFuture;

use super::distributed::{self, EngineChoice, NotDistributed, Placement};
use super::{Engine, QueryContext};
use crate::config::DistributedRoute;
use crate::error::{PgError, SqlState};
use crate::lake::scan_guard::ScanGuard;

/// A lake query planned down to its physical plan, not started yet.
pub struct PhysicalQuery {
    pub(super) plan: Arc<dyn ExecutionPlan>,
    /// What it was planned from, and with which state: a distributed run plans
    /// again with Ballista's settings.
    #[cfg_attr(not(feature = "distributed"), allow(dead_code))]
    pub(super) logical: LogicalPlan,
    pub(super) state: SessionState,
    pub(super) schema: SchemaRef,
    choice: EngineChoice,
    /// Who runs it, for the distributed job's name.
    #[cfg_attr(not(feature = "distributed"), allow(dead_code))]
    pub(super) label: String,
}

/// Where the batches of a running query go: the session's end of the channel.
pub type Batches = tokio::sync::mpsc::Sender<datafusion::error::Result<RecordBatch>>;

/// The work of a distributed job once submitted: wait for it, then fetch its
/// results into the channel. Dropping it (the session gave up) cancels the job.
pub type JobWork = Box<dyn FnOnce(Batches) -> BoxFuture<'static, ()> + Send>;

/// A started query: its batches, and a NOTICE for the client when it ran other
/// than the session asked (a distributed statement that ran on the gateway).
pub struct Launched {
    pub stream: SendableRecordBatchStream,
    pub notice: Option<String>,
}

impl PhysicalQuery {
    /// Whether the plan reads any file (a lake table); only those can be worth
    /// distributing.
    pub fn reads_files(&self) -> bool {
        fn walk(plan: &Arc<dyn ExecutionPlan>) -> bool {
            plan.downcast_ref::<DataSourceExec>()
                .is_some_and(|s| s.data_source().downcast_ref::<FileScanConfig>().is_some())
                || plan.children().into_iter().any(walk)
        }
        walk(&self.plan)
    }

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
            logical: plan,
            state,
            schema,
            choice: EngineChoice::of(&qc.vars),
            label: format!("sluice {} pid {}", qc.user, qc.backend_pid),
        })
    }

    /// Starts a planned query where it belongs ([`distributed::place`]): on the
    /// gateway ([`run`](Self::run)) or as a distributed job.
    pub async fn launch(
        &self,
        query: PhysicalQuery,
        route: DistributedRoute,
    ) -> Result<Launched, PgError> {
        let cluster = self.distributed.as_deref();
        let placement = distributed::place(
            cluster.map(|c| c.config()),
            query.choice,
            route,
            || query.scan_bytes(),
            || query.reads_files(),
        );
        let notice = match (placement, cluster) {
            (Placement::Local(notice), _) => notice,
            (Placement::Distributed, None) => None, // place() only says so with a cluster
            (Placement::Distributed, Some(cluster)) => {
                let Some(cpu) = self.cpu.0.as_ref() else {
                    return Err(shutting_down());
                };
                match cluster.launch(&query, cpu.handle()).await {
                    Ok(work) => {
                        let stream = self.drive(query.schema.clone(), work)?;
                        return Ok(Launched {
                            stream,
                            notice: None,
                        });
                    }
                    Err(NotDistributed::RunLocally(notice)) => Some(notice),
                    Err(NotDistributed::Fail(e)) => return Err(e),
                }
            }
        };
        Ok(Launched {
            stream: self.run(query)?,
            notice,
        })
    }

    /// Starts a planned query on the gateway's query runtime.
    pub fn run(&self, query: PhysicalQuery) -> Result<SendableRecordBatchStream, PgError> {
        let PhysicalQuery {
            plan,
            state,
            schema,
            ..
        } = query;
        let task_ctx = state.task_ctx();
        self.drive(
            schema,
            Box::new(move |tx: Batches| {
                Box::pin(async move {
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
                })
            }),
        )
    }

    /// Runs `work` on the query runtime. Batches cross to the session through a
    /// small bounded channel, so a client that stops reading stops the query
    /// (backpressure); dropping the stream aborts the work.
    fn drive(
        &self,
        schema: SchemaRef,
        work: JobWork,
    ) -> Result<SendableRecordBatchStream, PgError> {
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let Some(cpu) = self.cpu.0.as_ref() else {
            return Err(shutting_down());
        };
        let driver = cpu.spawn(work(tx));
        let batches = AbortOnDrop { rx, driver };
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, batches)))
    }

    /// Plans and starts a query of the gateway's own work (view refreshes, jobs):
    /// [`prepare`](Self::prepare), then [`launch`](Self::launch) on the
    /// `refreshes` route. A NOTICE has no client to go to: it is logged.
    pub async fn execute(
        &self,
        plan: LogicalPlan,
        qc: &QueryContext,
    ) -> Result<SendableRecordBatchStream, PgError> {
        let query = self.prepare(plan, qc, None).await?;
        let launched = self.launch(query, DistributedRoute::Refreshes).await?;
        if let Some(notice) = launched.notice {
            tracing::info!(%notice, "gateway query ran locally");
        }
        Ok(launched.stream)
    }
}

fn shutting_down() -> PgError {
    PgError::new(SqlState::ADMIN_SHUTDOWN, "the server is shutting down")
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
