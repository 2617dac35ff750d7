//! A Ballista 55 cluster in this process for the distributed tests and the lake
//! benchmark: Ballista's own standalone scheduler and executors, on loopback gRPC
//! ports the OS picks.

use std::net::SocketAddr;
use std::sync::Arc;

use ballista_core::RuntimeProducer;
use ballista_core::extension::{
    ballista_aggregate_functions, ballista_scalar_functions, ballista_window_functions,
};
use ballista_core::serde::BallistaCodec;
use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
use ballista_core::utils::{default_config_producer, default_session_builder};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;

/// An object store the executors read (their own S3 configuration, as a real
/// executor has from its environment), under the URL plans name it by.
pub type ExecutorStore = (url::Url, Arc<dyn object_store::ObjectStore>);

/// Starts the scheduler and `executors` executors with `slots` concurrent tasks
/// each; returns the scheduler's address.
pub async fn cluster(
    executors: usize,
    slots: usize,
    stores: Vec<ExecutorStore>,
) -> Result<SocketAddr, Box<dyn std::error::Error>> {
    let runtime = RuntimeEnvBuilder::new().build_arc()?;
    for (url, store) in stores {
        runtime.register_object_store(&url, store);
    }
    // The scheduler reads the plans it is sent, file scans' stores included: the
    // same stores (a real scheduler has them from its environment too).
    let scheduler_runtime = runtime.clone();
    let addr = ballista_scheduler::standalone::new_standalone_scheduler_with_builder(
        Arc::new(move |config| {
            let state = default_session_builder(config)?;
            Ok(SessionStateBuilder::new_from_existing(state)
                .with_runtime_env(scheduler_runtime.clone())
                .build())
        }),
        Arc::new(default_config_producer),
        BallistaCodec::default(),
    )
    .await?;
    let state = SessionStateBuilder::new()
        .with_default_features()
        .with_scalar_functions(ballista_scalar_functions())
        .with_aggregate_functions(ballista_aggregate_functions())
        .with_window_functions(ballista_window_functions())
        .build();
    for _ in 0..executors {
        let scheduler =
            SchedulerGrpcClient::connect(format!("http://localhost:{}", addr.port())).await?;
        let runtime = runtime.clone();
        let runtime_producer: RuntimeProducer = Arc::new(move |_| Ok(runtime.clone()));
        ballista_executor::new_standalone_executor_from_builder(
            scheduler,
            slots,
            Arc::new(default_config_producer),
            runtime_producer,
            BallistaCodec::default(),
            (&state).into(),
        )
        .await?;
    }
    Ok(addr)
}
