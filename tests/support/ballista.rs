//! A Ballista 55 cluster in this process for the distributed tests and the lake
//! benchmark: Ballista's own standalone scheduler and executors, on loopback gRPC
//! ports the OS picks.

use std::net::SocketAddr;

use ballista_core::serde::BallistaCodec;
use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;

/// Starts the scheduler and `executors` executors with `slots` concurrent tasks
/// each; returns the scheduler's address.
pub async fn cluster(
    executors: usize,
    slots: usize,
) -> Result<SocketAddr, Box<dyn std::error::Error>> {
    let addr = ballista_scheduler::standalone::new_standalone_scheduler().await?;
    for _ in 0..executors {
        let scheduler =
            SchedulerGrpcClient::connect(format!("http://localhost:{}", addr.port())).await?;
        ballista_executor::new_standalone_executor(scheduler, slots, BallistaCodec::default())
            .await?;
    }
    Ok(addr)
}
