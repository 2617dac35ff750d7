//! pgjdbc (Debian `libpostgresql-jdbc-java`), the driver DBeaver and SQL Workbench/J
//! use: a small Java program walks DatabaseMetaData the way those tools do.

use crate::harness::{Gateway, db_meta_walk, stderr, stdout};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgjdbc_walks_database_metadata_like_dbeaver() {
    let gw = Gateway::start().await;
    let out = db_meta_walk(&gw, "demo", "demo").await;
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
