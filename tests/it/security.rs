//! TLS and authentication: encryption required, certificate verification, SCRAM
//! failures, and configuration errors that must stop start-up.

use std::path::Path;
use std::process::Output;

use crate::harness::{
    Gateway, GatewayConfig, connect_db, run_sluice, sluice_command, sqlstate, stderr, stdout,
    temp_certs, tls_only,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_is_refused_when_tls_is_required() {
    let gw = GatewayConfig::demo()
        .tls("[server.tls]\nallow_plaintext = \"never\"\n")
        .start()
        .await;
    let err = gw
        .try_connect()
        .await
        .expect_err("connection must be refused");
    assert_eq!(sqlstate(&err), "28000", "{err}");

    let out = gw.psql(&["-A", "-t", "-c", "SELECT 1"]).await;
    assert!(out.status.success(), "TLS login fails: {}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "1");
}

/// psql as demo over TLS with `sslmode=verify-full`, trusting `ca`.
async fn psql_verify_full(port: u16, ca: &Path, args: &[&str]) -> Output {
    let url = format!(
        "host=localhost hostaddr=127.0.0.1 port={port} dbname=sluice user=demo password=demo sslmode=verify-full sslrootcert={}",
        ca.display()
    );
    tokio::process::Command::new("psql")
        .arg(url)
        .arg("-X")
        .args(args)
        .output()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_accepts_the_configured_certificate() {
    let (_dir, certs) = temp_certs();
    let gw = GatewayConfig::demo().tls(&tls_only(&certs)).start().await;
    let out = psql_verify_full(gw.port, &certs.ca, &["-A", "-t", "-c", "SELECT 42"]).await;
    assert!(out.status.success(), "verify-full fails: {}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "42");

    // A client trusting a different CA must refuse the server.
    let (_other, other) = temp_certs();
    let out = psql_verify_full(gw.port, &other.ca, &["-c", "SELECT 1"]).await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("certificate verify failed"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_get_28p01_and_good_ones_work() {
    let gw = Gateway::start().await;
    let port = gw.port;
    let try_login = |user: &'static str, password: &'static str, db: &'static str| async move {
        connect_db(port, db, user, password).await.map(|_| ())
    };
    let e = try_login("demo", "wrong", "sluice").await.unwrap_err();
    assert_eq!(sqlstate(&e), "28P01");
    let e = try_login("nobody", "x", "sluice").await.unwrap_err();
    assert_eq!(
        sqlstate(&e),
        "28P01",
        "unknown users look exactly like wrong passwords"
    );
    let e = try_login("demo", "demo", "otherdb").await.unwrap_err();
    assert_eq!(sqlstate(&e), "3D000");
    // A stored SCRAM verifier (no plaintext in config) works.
    try_login("svc", "svc-secret", "sluice").await.unwrap();
    let e = try_login("svc", "svc-secre", "sluice").await.unwrap_err();
    assert_eq!(sqlstate(&e), "28P01");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_tls_config_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let tls = format!(
        "[server.tls]\ncert = \"{0}/missing.pem\"\nkey = \"{0}/missing.key\"\n",
        dir.path().display()
    );
    let err = GatewayConfig::bare()
        .tls(&tls)
        .try_start()
        .await
        .err()
        .expect("must not start without its certificate");
    assert!(err.contains("server.tls.cert"), "{err}");
}

#[tokio::test]
async fn check_config_names_the_offending_key() {
    let dir = tempfile::tempdir().unwrap();
    let bad = GatewayConfig::bare()
        .port(5439)
        .server("max_conections = 5\n")
        .tls("")
        .write(dir.path());
    let out = run_sluice(sluice_command(["check-config", "--config"]).arg(&bad)).await;
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("max_conections"), "{err}");

    for shipped in ["sluice.toml", "docker.toml"] {
        let good = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("conf")
            .join(shipped);
        let out = run_sluice(sluice_command(["check-config", "--config"]).arg(&good)).await;
        assert!(out.status.success(), "{shipped}: {}", stderr(&out));
    }
}
