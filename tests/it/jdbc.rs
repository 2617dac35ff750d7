//! pgjdbc (Debian `libpostgresql-jdbc-java`), the driver DBeaver and SQL Workbench/J
//! use: a small Java program walks DatabaseMetaData the way those tools do.

use std::path::PathBuf;

use crate::harness::{Gateway, clients_dir, stderr, stdout};

fn pgjdbc_jar() -> PathBuf {
    let jar = PathBuf::from(
        std::env::var("PGJDBC_JAR").unwrap_or_else(|_| "/usr/share/java/postgresql.jar".into()),
    );
    assert!(
        jar.exists(),
        "{} missing: run tests/setup.sh",
        jar.display()
    );
    jar
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgjdbc_walks_database_metadata_like_dbeaver() {
    let gw = Gateway::start().await;
    let jar = pgjdbc_jar();
    let classes = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new("javac")
        .arg("-d")
        .arg(classes.path())
        .arg("-cp")
        .arg(&jar)
        .arg(clients_dir().join("DbMetaWalk.java"))
        .output()
        .await
        .expect("javac runs");
    assert!(out.status.success(), "javac failed: {}", stderr(&out));
    let cp = format!("{}:{}", classes.path().display(), jar.display());
    let url = format!(
        "jdbc:postgresql://127.0.0.1:{}/sluice?sslmode=require",
        gw.port
    );
    let out = tokio::process::Command::new("java")
        .args(["-cp", &cp, "DbMetaWalk", &url, "demo", "demo"])
        .output()
        .await
        .expect("java runs");
    let text = stdout(&out);
    assert!(
        out.status.success(),
        "DbMetaWalk reported failures:\n{text}\n{}",
        stderr(&out)
    );
    for want in [
        "schema=nyc",
        "table=nyc.trips",
        "column=trips.fare_amount",
        "count=1200000",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(want)),
            "missing `{want}` in:\n{text}"
        );
    }
}
