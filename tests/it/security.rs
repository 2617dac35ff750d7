//! TLS and authentication: encryption required, certificate verification, SCRAM
//! failures, and configuration errors that must stop start-up.

use crate::harness::{Gateway, sqlstate, stderr, stdout};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_is_refused_when_tls_is_required() {
    let gw = Gateway::start_with("[server.tls]\nallow_plaintext = \"never\"\n", "").await;
    let err = tokio_postgres::connect(&gw.url("disable"), tokio_postgres::NoTls)
        .await
        .err()
        .expect("connection must be refused");
    assert_eq!(sqlstate(&err), "28000", "{err}");

    let out = gw.psql(&["-A", "-t", "-c", "SELECT 1"]).await;
    assert!(out.status.success(), "TLS login fails: {}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_accepts_the_configured_certificate() {
    let certs = tempfile::tempdir().unwrap();
    let crate::postgres::Certs { ca, cert, key } =
        crate::postgres::make_certs(certs.path()).expect("certificates");
    let tls = format!(
        "[server.tls]\ncert = \"{}\"\nkey = \"{}\"\nallow_plaintext = \"never\"\n",
        cert.display(),
        key.display()
    );
    let gw = Gateway::start_with(&tls, "").await;
    let url = format!(
        "host=localhost hostaddr=127.0.0.1 port={} dbname=sluice user=demo password=demo sslmode=verify-full sslrootcert={}",
        gw.port,
        ca.display()
    );
    let out = tokio::process::Command::new("psql")
        .args([url.as_str(), "-X", "-A", "-t", "-c", "SELECT 42"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "verify-full fails: {}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "42");

    // A client trusting a different CA must refuse the server.
    let other = tempfile::tempdir().unwrap();
    let other_ca = crate::postgres::make_certs(other.path())
        .expect("certificates")
        .ca;
    let url = format!(
        "host=localhost hostaddr=127.0.0.1 port={} dbname=sluice user=demo password=demo sslmode=verify-full sslrootcert={}",
        gw.port,
        other_ca.display()
    );
    let out = tokio::process::Command::new("psql")
        .args([url.as_str(), "-X", "-c", "SELECT 1"])
        .output()
        .await
        .unwrap();
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
        let url = format!(
            "host=127.0.0.1 port={port} dbname={db} user={user} password={password} sslmode=disable"
        );
        tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .map(|_| ())
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
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[server.tls]\ncert = \"{0}/missing.pem\"\nkey = \"{0}/missing.key\"\n",
        dir.path().display()
    );
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, toml).unwrap();
    let config = sluice::config::Config::load(&path).unwrap();
    let err = sluice::server::Server::bind(config)
        .await
        .err()
        .expect("must not start without its certificate");
    assert!(err.contains("server.tls.cert"), "{err}");
}

#[test]
fn check_config_names_the_offending_key() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[server]\nlisten = \"127.0.0.1:5439\"\nmax_conections = 5\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_conections"), "{err}");

    for shipped in ["sluice.toml", "docker.toml"] {
        let good = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("conf")
            .join(shipped);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["check-config", "--config"])
            .arg(&good)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{shipped}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
