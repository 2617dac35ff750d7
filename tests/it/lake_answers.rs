//! The lake query set (`tests/support/lake_queries.rs`, what `benches/lake` times)
//! answers exactly as DuckDB does on the same generated trips: from the local
//! directory catalog against DuckDB on the local files, and from a Glue table in
//! moto's S3 against DuckDB reading the same objects through its S3 reader.

use std::path::Path;

use tokio_postgres::{Client, SimpleQueryMessage};

use crate::harness::{GatewayConfig, connect_plain, spawn_sluice};
use crate::lake_queries::LAKE_QUERIES;
use crate::moto::Moto;
use crate::nyc_lake::{self, DuckSource};

/// 12 months × 20,000 trips: every query has work to do, and debug builds stay quick.
const TRIPS_PER_MONTH: usize = 20_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lake_queries_answer_as_duckdb_does_locally_and_on_s3() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("lake");
    sluice::lake::demo::ensure_sized(&data, TRIPS_PER_MONTH).expect("data generated");
    let moto = Moto::start().expect("moto starts");
    nyc_lake::load_glue(&moto, &data, "nyc_s3", None)
        .await
        .expect("trips in moto");

    let port = crate::postgres::free_port().expect("port");
    let lake = format!(
        "[lake.local]\nroot = {root}\n\n[lake.glue]\nregion = \"us-east-1\"\naws_endpoint = \"{aws}\"\n\
         databases = [\"nyc_s3\"]\n[lake.glue.s3]\nendpoint = \"{aws}\"\npath_style = true\n",
        root = toml_string(&data),
        aws = moto.endpoint(),
    );
    let config = GatewayConfig::demo()
        .port(port)
        .lake(&lake)
        .write(dir.path());
    let _sluice = spawn_sluice(&config, port, &[]).await;
    let client = connect_plain(port, "demo", "demo").await.expect("connect");

    let local = nyc_lake::duckdb(DuckSource::Local(&data), LAKE_QUERIES, 0, true)
        .expect("DuckDB on local files");
    let s3 = nyc_lake::duckdb(
        DuckSource::S3 {
            moto: &moto,
            file_cache: false,
        },
        LAKE_QUERIES,
        0,
        true,
    )
    .expect("DuckDB on S3");
    for &(name, sql) in LAKE_QUERIES {
        for (side, table, duck) in [("local", "nyc.trips", &local), ("S3", "nyc_s3.trips", &s3)] {
            let expected = duck
                .get(name)
                .and_then(|d| d.answers.clone())
                .unwrap_or_else(|| panic!("{name}: DuckDB gave no answers"));
            assert!(!expected.is_empty(), "{name}: DuckDB returned no rows");
            let got = text_rows(&client, &sql.replace("nyc.trips", table)).await;
            assert_same_rows(&format!("{name} ({side})"), &got, &expected, "DuckDB");
        }
    }
}

fn toml_string(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// The rows of a simple query, each cell as PostgreSQL text.
pub(crate) async fn text_rows(client: &Client, sql: &str) -> Vec<Vec<Option<String>>> {
    let messages = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    messages
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
            }
            _ => None,
        })
        .collect()
}

/// The same rows in the same order, cell by cell as `same_cell` compares them.
pub(crate) fn assert_same_rows(
    what: &str,
    got: &[Vec<Option<String>>],
    expected: &[Vec<Option<String>>],
    peer: &str,
) {
    assert_eq!(
        got.len(),
        expected.len(),
        "{what}: {got:?} vs {peer} {expected:?}"
    );
    for (g, e) in got.iter().zip(expected) {
        assert!(
            g.len() == e.len() && g.iter().zip(e).all(|(a, b)| same_cell(a, b)),
            "{what}: row {g:?}, {peer} {e:?}"
        );
    }
}

/// Equal text, or numbers equal to 1e-9 relative: engines sum floating-point values
/// in different orders, so averages and sums may differ in the last digits.
pub(crate) fn same_cell(a: &Option<String>, b: &Option<String>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) if a == b => true,
        (Some(a), Some(b)) => match (a.parse::<f64>(), b.parse::<f64>()) {
            (Ok(x), Ok(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
            _ => false,
        },
        _ => false,
    }
}
