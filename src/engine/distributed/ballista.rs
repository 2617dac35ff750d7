//! The Ballista side of a distributed lake statement: the plan made again in the
//! shape Ballista needs, checked to rebuild on a stock executor, submitted to the
//! scheduler as a physical plan; then the job waited for, its result partitions
//! fetched from the executors over Arrow Flight, and the job cancelled if the
//! session stops reading before it ends.
//!
//! Sluice drives the scheduler's gRPC API itself instead of calling
//! `ballista_core::execution_plans::execute_physical_plan`: that helper hides the
//! job id, so neither a cancel nor a statement timeout could reach the job.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ballista_core::JobId;
use ballista_core::client::BallistaClient;
use ballista_core::config::BallistaConfig;
use ballista_core::extension::{
    SessionConfigExt, ballista_aggregate_functions, ballista_scalar_functions,
    ballista_window_functions,
};
use ballista_core::serde::BallistaPhysicalExtensionCodec;
use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
use ballista_core::serde::protobuf::{
    CancelJobParams, ExecuteQueryParams, GetJobStatusParams, KeyValuePair, PartitionLocation,
    execute_query_failure_result, execute_query_params, execute_query_result, job_status,
};
use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::physical_optimizer::optimizer::PhysicalOptimizer;
use datafusion_proto::physical_plan::AsExecutionPlan;
use datafusion_proto::protobuf::PhysicalPlanNode;
use futures::StreamExt;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use super::NotDistributed;
use crate::config::{DistributedConfig, OnUnavailable};
use crate::engine::execute::{Batches, JobWork, PhysicalQuery};
use crate::error::{PgError, SqlState};
use crate::metrics::metrics;

type Scheduler = SchedulerGrpcClient<InterceptedService<Channel, Metadata>>;

/// How often a running job's status is asked for: quickly at first (short jobs),
/// then every 50 ms (as Ballista's own client does), which bounds the latency the
/// polling adds to a job.
const FIRST_POLL: Duration = Duration::from_millis(5);
const MAX_POLL: Duration = Duration::from_millis(50);
/// How long a cancel may take before it is given up (and counted unconfirmed).
const CANCEL_TIMEOUT: Duration = Duration::from_secs(10);

/// The configured gRPC metadata, added to every scheduler call.
#[derive(Clone)]
struct Metadata(Arc<Vec<(AsciiMetadataKey, AsciiMetadataValue)>>);

impl tonic::service::Interceptor for Metadata {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        for (key, value) in self.0.iter() {
            request.metadata_mut().insert(key.clone(), value.clone());
        }
        Ok(request)
    }
}

/// One gateway's connection to a Ballista cluster.
pub struct Cluster {
    config: DistributedConfig,
    scheduler: Scheduler,
    codec: BallistaPhysicalExtensionCodec,
    /// What a stock executor knows (DataFusion's and Ballista's functions): a plan
    /// that does not rebuild here would fail on the executors.
    stock: Arc<TaskContext>,
    /// The scheduler session every job of this gateway runs in.
    session_id: String,
    max_message_size: usize,
}

impl Cluster {
    /// Sets up the scheduler client; the connection itself is made on first use
    /// (and remade after a failure), so a scheduler that is down at start-up does
    /// not stop the gateway.
    pub fn connect(
        config: &DistributedConfig,
        resolve: impl Fn(&Path) -> PathBuf,
    ) -> Result<Cluster, String> {
        let invalid = |m: String| format!("engine.distributed.scheduler: {m}");
        let mut endpoint = Endpoint::from_shared(config.scheduler.clone())
            .map_err(|e| invalid(e.to_string()))?
            .connect_timeout(Duration::from_millis(config.connect_timeout_ms))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true);
        if config.scheduler.starts_with("https://") {
            let tls = match &config.ca_file {
                Some(path) => {
                    let path = resolve(path);
                    let pem = std::fs::read(&path).map_err(|e| {
                        format!(
                            "engine.distributed.ca_file: cannot read {}: {e}",
                            path.display()
                        )
                    })?;
                    ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem))
                }
                None => ClientTlsConfig::new().with_native_roots(),
            };
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| invalid(format!("TLS set-up failed: {e}")))?;
        }
        let mut metadata = Vec::new();
        for (name, value) in &config.metadata {
            let key = AsciiMetadataKey::from_bytes(name.as_bytes())
                .map_err(|e| format!("engine.distributed.metadata.{name}: {e}"))?;
            let mut value = AsciiMetadataValue::try_from(value.as_str())
                .map_err(|e| format!("engine.distributed.metadata.{name}: {e}"))?;
            value.set_sensitive(true);
            metadata.push((key, value));
        }
        let max_message_size = BallistaConfig::default().grpc_client_max_message_size();
        let scheduler = SchedulerGrpcClient::with_interceptor(
            endpoint.connect_lazy(),
            Metadata(Arc::new(metadata)),
        )
        .max_encoding_message_size(max_message_size)
        .max_decoding_message_size(max_message_size);
        let stock = SessionStateBuilder::new()
            .with_default_features()
            .with_scalar_functions(ballista_scalar_functions())
            .with_aggregate_functions(ballista_aggregate_functions())
            .with_window_functions(ballista_window_functions())
            .build()
            .task_ctx();
        Ok(Cluster {
            config: config.clone(),
            scheduler,
            codec: BallistaPhysicalExtensionCodec::default(),
            stock,
            session_id: format!("sluice-{:016x}", rand::random::<u64>()),
            max_message_size,
        })
    }

    pub fn config(&self) -> &DistributedConfig {
        &self.config
    }

    /// Plans the statement for Ballista and submits it. The returned work waits
    /// for the job and fetches its results; dropping it cancels the job.
    pub async fn launch(
        &self,
        query: &PhysicalQuery,
        runtime: &tokio::runtime::Handle,
    ) -> Result<JobWork, NotDistributed> {
        let (plan, settings) = match self.plan(query).await {
            Ok(p) => p,
            Err(reason) => {
                metrics()
                    .distributed_local_runs
                    .with_label_values(&["not_distributable"])
                    .inc();
                return Err(NotDistributed::RunLocally(format!(
                    "this statement cannot run distributed ({reason}): running it on the gateway"
                )));
            }
        };
        let job_id = self.submit(plan, settings).await?;
        count_job("submitted");
        tracing::debug!(job = %job_id, "distributed job submitted");
        let guard = JobGuard {
            scheduler: self.scheduler.clone(),
            job_id,
            runtime: runtime.clone(),
            armed: true,
        };
        let fetch = Fetcher {
            max_message_size: self.max_message_size,
            connect_timeout: Duration::from_millis(self.config.connect_timeout_ms),
            clients: HashMap::new(),
        };
        Ok(Box::new(move |tx: Batches| {
            Box::pin(run_job(guard, fetch, tx))
        }))
    }

    /// The plan again, with Ballista's settings and without the gateway's own
    /// physical nodes; refused (with the reason) when a stock executor could not
    /// rebuild it: upstream tables, gateway-only nodes or functions.
    async fn plan(&self, query: &PhysicalQuery) -> Result<(Vec<u8>, Vec<KeyValuePair>), String> {
        let state = query.state.clone();
        let mut config = state
            .config()
            .clone()
            .upgrade_for_ballista()
            .with_ballista_job_name(&query.label)
            .with_target_partitions(self.config.partitions);
        // Isolated tasks must each read only their own files (apache/datafusion
        // #23292): work stealing would make every task read the whole input.
        config
            .options_mut()
            .execution
            .enable_file_stream_work_stealing = false;
        let optimizers =
            ballista_core::optimizer::with_ballista_optimizer_rules(state.optimizers());
        let state = SessionStateBuilder::new_from_existing(state)
            .with_config(config)
            .with_optimizer_rules(optimizers)
            .with_physical_optimizer_rules(PhysicalOptimizer::new().rules)
            .build();
        let plan = state
            .create_physical_plan(&query.logical)
            .await
            .map_err(|e| first_line(&e.to_string()))?;
        let node = PhysicalPlanNode::try_from_physical_plan(plan, &self.codec)
            .map_err(|e| first_line(&e.to_string()))?;
        // The stock functions, with the gateway's object stores: decoding a file
        // scan looks its store up (executors have their own).
        let stock = TaskContext::new(
            None,
            String::new(),
            self.stock.session_config().clone(),
            self.stock.scalar_functions().clone(),
            self.stock.higher_order_functions().clone(),
            self.stock.aggregate_functions().clone(),
            self.stock.window_functions().clone(),
            state.runtime_env().clone(),
        );
        node.try_into_physical_plan(&stock, &self.codec)
            .map_err(|e| first_line(&e.to_string()))?;
        let mut bytes = Vec::new();
        node.try_encode(&mut bytes)
            .map_err(|e| first_line(&e.to_string()))?;
        let settings = state
            .config()
            .options()
            .entries()
            .into_iter()
            .map(|e| KeyValuePair {
                key: e.key,
                value: e.value,
            })
            .collect();
        Ok((bytes, settings))
    }

    async fn submit(
        &self,
        plan: Vec<u8>,
        settings: Vec<KeyValuePair>,
    ) -> Result<String, NotDistributed> {
        let mut request = tonic::Request::new(ExecuteQueryParams {
            session_id: self.session_id.clone(),
            settings,
            operation_id: format!("{:016x}", rand::random::<u64>()),
            query: Some(execute_query_params::Query::PhysicalPlan(plan)),
        });
        ballista_core::version::insert_version_header(request.metadata_mut());
        let response = match self.scheduler.clone().execute_query(request).await {
            Ok(r) => r,
            Err(status) => return Err(self.unavailable(&status_text(&status))),
        };
        let version = ballista_core::version::check_compatibility(
            Some(ballista_core::BALLISTA_VERSION),
            ballista_core::version::version_from_metadata(response.metadata()),
        );
        match response.into_inner().result {
            Some(execute_query_result::Result::Success(ok)) => {
                if let Err(mismatch) = version {
                    // An old scheduler queued it regardless.
                    drop(JobGuard {
                        scheduler: self.scheduler.clone(),
                        job_id: ok.job_id,
                        runtime: tokio::runtime::Handle::current(),
                        armed: true,
                    });
                    return Err(self.unavailable(&mismatch));
                }
                Ok(ok.job_id)
            }
            Some(execute_query_result::Result::Failure(failure)) => {
                use execute_query_failure_result::Failure;
                let why = match failure.failure {
                    Some(Failure::PlanParsingFailure(m)) => {
                        format!("it could not read the plan: {}", first_line(&m))
                    }
                    Some(Failure::SessionNotFound(m)) => {
                        format!("session not found: {}", first_line(&m))
                    }
                    Some(Failure::SqlParsingFailure(m)) => first_line(&m),
                    None => "no reason given".into(),
                };
                Err(self.unavailable(&format!(
                    "it refused the job ({})",
                    version.err().unwrap_or(why)
                )))
            }
            None => Err(self.unavailable("it answered without a result")),
        }
    }

    /// The scheduler cannot take the job: run locally, or fail, as configured.
    fn unavailable(&self, why: &str) -> NotDistributed {
        tracing::warn!(scheduler = %self.config.scheduler, %why, "Ballista scheduler unavailable");
        match self.config.on_unavailable {
            OnUnavailable::Local => {
                metrics()
                    .distributed_local_runs
                    .with_label_values(&["unavailable"])
                    .inc();
                NotDistributed::RunLocally(format!(
                    "the Ballista scheduler at {} is unavailable ({why}): running on the gateway",
                    self.config.scheduler
                ))
            }
            OnUnavailable::Error => {
                count_job("unavailable");
                NotDistributed::Fail(
                    PgError::new(
                        SqlState("08001"),
                        format!(
                            "cannot run the statement distributed: the Ballista scheduler at {} is unavailable ({why})",
                            self.config.scheduler
                        ),
                    )
                    .with_hint(
                        "Retry later, or SET sluice.engine = 'local' to run it on the gateway.",
                    ),
                )
            }
        }
    }
}

/// Cancels the job when dropped armed: the session stopped reading (cancel
/// request, statement timeout, disconnect) before the job ended.
struct JobGuard {
    scheduler: Scheduler,
    job_id: String,
    runtime: tokio::runtime::Handle,
    armed: bool,
}

impl Drop for JobGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut scheduler = self.scheduler.clone();
        let job_id = std::mem::take(&mut self.job_id);
        self.runtime.spawn(async move {
            let params = CancelJobParams {
                job_id: job_id.clone(),
            };
            let outcome = match tokio::time::timeout(CANCEL_TIMEOUT, scheduler.cancel_job(params)).await {
                Ok(Ok(r)) if r.get_ref().cancelled => "canceled",
                Ok(Ok(_)) => "cancel_unconfirmed",
                Ok(Err(e)) => {
                    tracing::warn!(job = %job_id, error = %status_text(&e), "cancelling a distributed job failed");
                    "cancel_unconfirmed"
                }
                Err(_) => "cancel_unconfirmed",
            };
            tracing::debug!(job = %job_id, outcome, "distributed job cancel");
            count_job(outcome);
        });
    }
}

/// Flight clients for the executors holding a job's results, one per executor.
struct Fetcher {
    max_message_size: usize,
    connect_timeout: Duration,
    clients: HashMap<(String, u32), BallistaClient>,
}

impl Fetcher {
    async fn fetch(
        &mut self,
        location: &PartitionLocation,
        tx: &Batches,
    ) -> Result<bool, DataFusionError> {
        let (Some(executor), Some(partition)) = (&location.executor_meta, &location.partition_id)
        else {
            return Err(job_error(
                "the scheduler sent a result location without its executor or partition",
            ));
        };
        let key = (executor.host.clone(), executor.port);
        let client = match self.clients.get_mut(&key) {
            Some(c) => c,
            None => {
                let port = u16::try_from(executor.port).map_err(|_| {
                    job_error(&format!("executor port {} is invalid", executor.port))
                })?;
                let connect = BallistaClient::try_new(
                    &executor.host,
                    port,
                    self.max_message_size,
                    false,
                    None,
                    3,
                    100,
                    0,
                    0,
                );
                let client = tokio::time::timeout(self.connect_timeout, connect)
                    .await
                    .map_err(|_| {
                        job_error(&format!(
                            "connecting to executor {}:{port} timed out",
                            executor.host
                        ))
                    })?
                    .map_err(|e| {
                        job_error(&format!(
                            "cannot reach executor {}:{port}: {e}",
                            executor.host
                        ))
                    })?;
                self.clients.entry(key).or_insert(client)
            }
        };
        let id = ballista_core::serde::scheduler::PartitionId {
            job_id: JobId::from(partition.job_id.clone()),
            stage_id: partition.stage_id as usize,
            partition_id: partition.partition_id as usize,
        };
        let mut stream = client
            .fetch_partition(&executor.id, &id, location.file_id, location.layout(), true)
            .await
            .map_err(|e| job_error(&format!("fetching a result partition failed: {e}")))?;
        while let Some(batch) = stream.next().await {
            if tx.send(batch).await.is_err() {
                return Ok(false); // the session gave up
            }
        }
        Ok(true)
    }
}

/// Waits for the job, then streams its result partitions in partition order.
async fn run_job(mut guard: JobGuard, mut fetch: Fetcher, tx: Batches) {
    let mut wait = FIRST_POLL;
    let mut locations = loop {
        let params = GetJobStatusParams {
            job_id: guard.job_id.clone(),
        };
        let status = match guard.scheduler.get_job_status(params).await {
            Ok(r) => r.into_inner().status.and_then(|s| s.status),
            Err(e) => {
                let error = PgError::new(
                    SqlState("08006"),
                    format!(
                        "lost the Ballista scheduler while distributed job {} ran: {}",
                        guard.job_id,
                        status_text(&e)
                    ),
                );
                let _ = tx
                    .send(Err(DataFusionError::External(Box::new(error))))
                    .await;
                return; // still armed: the cancel is tried when the guard drops
            }
        };
        match status {
            None | Some(job_status::Status::Queued(_)) | Some(job_status::Status::Running(_)) => {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(MAX_POLL);
            }
            Some(job_status::Status::Failed(failed)) => {
                guard.armed = false;
                count_job("failed");
                let error = job_error(&format!(
                    "distributed job {} failed: {}",
                    guard.job_id,
                    first_line(&failed.error)
                ));
                let _ = tx.send(Err(error)).await;
                return;
            }
            Some(job_status::Status::Successful(done)) => {
                guard.armed = false;
                count_job("succeeded");
                tracing::debug!(
                    job = %guard.job_id,
                    queued_ms = done.started_at.saturating_sub(done.queued_at),
                    ran_ms = done.ended_at.saturating_sub(done.started_at),
                    "distributed job finished"
                );
                break done.partition_location;
            }
        }
    };
    locations.sort_by_key(|l| {
        l.partition_id
            .as_ref()
            .map(|p| (p.stage_id, p.partition_id))
    });
    for location in &locations {
        match fetch.fetch(location, &tx).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        }
    }
}

/// One more job with this outcome (`sluice_distributed_jobs_total`).
fn count_job(outcome: &str) {
    metrics()
        .distributed_jobs
        .with_label_values(&[outcome])
        .inc();
}

/// A failure on the cluster's side: 58000 (system_error), the message passed on.
fn job_error(message: &str) -> DataFusionError {
    DataFusionError::External(Box::new(PgError::new(
        SqlState("58000"),
        message.to_string(),
    )))
}

fn status_text(status: &tonic::Status) -> String {
    let message = first_line(status.message());
    if message.is_empty() {
        format!("{:?}", status.code())
    } else {
        message
    }
}

/// Errors from Ballista and gRPC can carry whole plans; the first line says what.
fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or("").trim();
    if line.len() > 300 {
        let mut end = 300;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &line[..end])
    } else {
        line.to_string()
    }
}

#[cfg(test)]
mod tests;
