//! psycopg 3 (PyPI `psycopg`), run as a real Python client program.

use crate::harness::{Gateway, clients_dir, python, stderr, stdout};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_params_binary_pipeline_and_prepared() {
    let gw = Gateway::start().await;
    let out = tokio::process::Command::new(python())
        .arg(clients_dir().join("psycopg_check.py"))
        .arg(gw.url("require"))
        .output()
        .await
        .expect("python3 runs (tests/setup.sh installs psycopg)");
    let text = stdout(&out);
    assert!(
        out.status.success(),
        "psycopg check failed:\n{text}\n{}",
        stderr(&out)
    );
    assert!(text.contains("ALL OK"), "{text}");
}
