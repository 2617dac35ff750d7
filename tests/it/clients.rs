//! Real client libraries against Sluice on the demo lake over verified TLS (the
//! gateway refuses plaintext): asyncpg, SQLAlchemy 2.1 on psycopg 3 and on asyncpg,
//! and node-postgres. Each runs its program in tests/clients/, which checks every
//! answer itself (`ok …` lines, then `ALL OK`) and prints the key values as
//! `RESULT <name> <json>` lines, asserted here as well.
//!
//! The scripts' `gaps` modes reproduce, by hand, PostgreSQL behaviour Sluice lacks
//! so far (README "Limits"); they are not part of the suite.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{
    ClientRun, Gateway, GatewayConfig, PASSWORD, USER, clients_dir, python, result_line,
    run_client, temp_certs, tls_only,
};

/// A gateway view for reflection to find next to the lake tables.
const VIEW: &str = r#"
[materialized_views]
schemas = ["mv"]
refresh_roles = ["analyst"]

[[materialized_views.views]]
name = "mv.trips_by_vendor"
query = "SELECT vendor_id, count(*) AS trips FROM nyc.trips GROUP BY vendor_id"
"#;

/// A gateway with a CA-signed certificate for localhost / 127.0.0.1: the clients
/// verify the chain and the host name.
struct Rig {
    gw: Gateway,
    ca: PathBuf,
    _certs: tempfile::TempDir,
}

impl Rig {
    async fn start(extra: &str) -> Rig {
        let (dir, certs) = temp_certs();
        let gw = GatewayConfig::demo()
            .tls(&tls_only(&certs))
            .extra(extra)
            .start()
            .await;
        Rig {
            gw,
            ca: certs.ca,
            _certs: dir,
        }
    }

    /// `tests/clients/asyncpg_check.py MODE …` (modes in its docstring).
    async fn asyncpg(&self, mode: &str, limit: Duration) -> ClientRun {
        let port = self.gw.port.to_string();
        run_client(
            tokio::process::Command::new(python())
                .arg(clients_dir().join("asyncpg_check.py"))
                .args([mode, "localhost", &port, USER, PASSWORD, "sluice"])
                .arg(&self.ca),
            limit,
        )
        .await
    }

    /// `tests/clients/sqlalchemy_check.py MODE URL` with `driver` (`psycopg` or
    /// `asyncpg`) in verify-full mode; both take the CA from PGSSLROOTCERT.
    async fn sqlalchemy(&self, mode: &str, driver: &str) -> ClientRun {
        let tls = if driver == "asyncpg" {
            "ssl"
        } else {
            "sslmode"
        };
        let url = format!(
            "postgresql+{driver}://{USER}:{PASSWORD}@localhost:{}/sluice?{tls}=verify-full",
            self.gw.port
        );
        run_client(
            tokio::process::Command::new(python())
                .arg(clients_dir().join("sqlalchemy_check.py"))
                .args([mode, &url])
                .env("PGSSLROOTCERT", &self.ca),
            Duration::from_secs(120),
        )
        .await
    }

    /// `tests/clients/node_pg_check.js MODE …` on the `pg` that `npm ci` installed.
    async fn node_pg(&self, mode: &str) -> ClientRun {
        assert!(
            clients_dir().join("node_modules/pg").is_dir(),
            "node-postgres missing: run tests/setup.sh"
        );
        let port = self.gw.port.to_string();
        run_client(
            tokio::process::Command::new("node")
                .current_dir(clients_dir())
                .arg("node_pg_check.js")
                .args([mode, "localhost", &port, USER, PASSWORD, "sluice"])
                .arg(&self.ca),
            Duration::from_secs(60),
        )
        .await
    }
}

fn assert_all_ok(run: &ClientRun) {
    assert!(run.ok && run.text.contains("ALL OK"), "{}", run.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_defaults_binary_types_prepared_statements_introspection() {
    let rig = Rig::start("").await;
    let run = rig.asyncpg("features", Duration::from_secs(120)).await;
    assert_all_ok(&run);
    let text = &run.text;
    // asyncpg's startup sends client_encoding 'utf-8' (quoted); the server settles
    // on UTF8 and answers in it.
    assert_eq!(
        result_line(text, "basics"),
        json!({
            "client_encoding": "UTF8",
            "boroughs": [["Bronx", 44], ["Brooklyn", 45], ["EWR", 44], ["Manhattan", 44],
                         ["Queens", 44], ["Staten Island", 44]],
            "vendor_2": [2, "VeriFone Inc.", true],
        })
    );
    // Every value decoded from the binary format into its Python type.
    assert_eq!(
        result_line(text, "binary"),
        json!({
            "i8": ["int", 7], "i2": ["int", 3], "i4": ["int", 5], "f8": ["float", 1.25],
            "f4": ["float", 4.0], "t": ["str", "txt"], "b": ["bool", true],
            "d": ["date", "2024-05-06"], "ts": ["datetime", "2024-05-06 07:08:09.250000"],
            "n": ["Decimal", "12.34"], "nn": ["Decimal", "-0.500"], "nul": ["NoneType", null],
            "by": ["bytes", "b'x'"], "iv": ["timedelta", "1 day, 0:00:00"],
        })
    );
    assert_eq!(
        result_line(text, "prepared"),
        json!({"parameters": ["int8"], "row_3": ["Bronx Zone 3", 3]})
    );
    // int2[], int4[], int8[] and float8[] were looked up in pg_type (once each) and
    // then decoded.
    assert_eq!(
        result_line(text, "introspected"),
        json!({"oids": [1005, 1007, 1016, 1022], "int8[]": [1, 2, 3], "int4[] param": [1, null, 3]})
    );
    for check in [
        "ok tls",
        "ok cursor rows",
        // Cursor.forward sends MOVE on the protocol-level portal.
        "ok cursor forward count",
        "ok cursor after forward",
        "ok fetch timeout raises",
        "ok usable after timeout",
        "ok undefined table (simple) sqlstate",
        "ok direct tls own context query",
    ] {
        assert!(text.lines().any(|l| l == check), "no `{check}` in:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_1000_tls_connections_none_lost() {
    let rig = Rig::start("").await;
    let started = Instant::now();
    let run = rig.asyncpg("connections", Duration::from_secs(240)).await;
    println!("1000 asyncpg connections: {:?}", started.elapsed());
    assert_all_ok(&run);
    let mut got = result_line(&run.text, "connections");
    got.as_object_mut().expect("an object").remove("seconds");
    assert_eq!(
        got,
        json!({"opened": 1000, "failed": 0, "peak_connecting": 50, "distinct_pids": 1000, "queried": 1000}),
        "{}",
        run.text
    );
}

/// asyncpg sends Parse, Describe and Flush, and waits for the answer before it
/// sends Sync: an error raised at Parse must be flushed at once, as PostgreSQL does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_parse_errors_arrive_without_sync() {
    let rig = Rig::start("").await;
    let run = rig.asyncpg("errors", Duration::from_secs(90)).await;
    assert_all_ok(&run);
    assert_eq!(
        result_line(&run.text, "errors"),
        json!({
            "raised": [
                ["SELECT * FROM nope", "UndefinedTableError", "42P01"],
                ["SELECT nope FROM nyc.zones", "UndefinedColumnError", "42703"],
                ["SELEC 1", "PostgresSyntaxError", "42601"],
            ],
            "then": "Brooklyn Zone 7",
        })
    );
}

/// What SQLAlchemy's Inspector reports for the demo lake and the gateway view: both
/// dialects must see exactly this.
fn expected_reflection() -> Value {
    let double = "DOUBLE_PRECISION";
    let trips: Vec<Value> = [
        ("vendor_id", "INTEGER"),
        ("pickup_datetime", "TIMESTAMP"),
        ("dropoff_datetime", "TIMESTAMP"),
        ("passenger_count", "INTEGER"),
        ("trip_distance", double),
        ("pickup_location_id", "INTEGER"),
        ("payment_type", "INTEGER"),
        ("fare_amount", double),
        ("extra", double),
        ("mta_tax", double),
        ("tip_amount", double),
        ("tolls_amount", double),
        ("improvement_surcharge", double),
        ("total_amount", double),
        ("pickup_longitude", double),
        ("pickup_latitude", double),
        ("trip_id", "BIGINT"),
        ("month", "TEXT"),
    ]
    .iter()
    // Parquet columns are declared NOT NULL; CSV, JSON and view columns are not.
    .map(|(name, ty)| json!([name, ty, false]))
    .collect();
    let none =
        json!({"nyc.trips": [], "nyc.vendors": [], "nyc.zones": [], "mv.trips_by_vendor": []});
    json!({
        // SQLAlchemy leaves out pg_* schemas; PostgreSQL lists information_schema too.
        "schemas": ["information_schema", "mv", "nyc", "public"],
        "relations": {"mv": ["trips_by_vendor"], "nyc": ["trips", "vendors", "zones"], "public": []},
        "views": {"mv": [], "nyc": [], "public": []},
        "columns": {
            "nyc.trips": trips,
            // JSON lines: columns in name order, as inferred.
            "nyc.vendors": [["active", "BOOLEAN", true], ["name", "TEXT", true], ["vendor_id", "BIGINT", true]],
            "nyc.zones": [["location_id", "BIGINT", true], ["borough", "TEXT", true],
                          ["zone", "TEXT", true], ["service_zone", "TEXT", true]],
            "mv.trips_by_vendor": [["vendor_id", "INTEGER", true], ["trips", "BIGINT", true]],
        },
        // Lake files declare no keys.
        "primary_keys": none,
        "foreign_keys": none,
    })
}

async fn sqlalchemy_end_to_end(driver: &str) -> String {
    let rig = Rig::start(VIEW).await;
    let run = rig.sqlalchemy("features", driver).await;
    assert_all_ok(&run);
    let text = &run.text;
    assert_eq!(result_line(text, "reflection"), expected_reflection());
    assert_eq!(
        result_line(text, "core"),
        json!({"ewr_after_200": [[263, "EWR Zone 263"], [257, "EWR Zone 257"], [251, "EWR Zone 251"]]})
    );
    assert_eq!(result_line(text, "view"), json!([[1, 600598], [2, 599402]]));
    assert_eq!(
        result_line(text, "orm"),
        json!([
            [2, "Queens Zone 2", "Boro Zone"],
            [8, "Queens Zone 8", "Boro Zone"],
            [14, "Queens Zone 14", "Boro Zone"]
        ])
    );
    assert!(text.lines().any(|l| l == "ok tls"), "{text}");
    run.text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlalchemy_psycopg_reflection_core_and_orm() {
    sqlalchemy_end_to_end("psycopg").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlalchemy_asyncpg_reflection_core_and_orm() {
    let text = sqlalchemy_end_to_end("asyncpg").await;
    // The async dialect also ran AsyncSession queries.
    assert!(
        text.lines().any(|l| l == "ok async session stream"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_pg_simple_parameterized_and_errors_over_tls() {
    let rig = Rig::start("").await;
    let run = rig.node_pg("features").await;
    assert_all_ok(&run);
    let text = &run.text;
    // int8 counts arrive as strings: node-postgres leaves 64-bit integers unparsed.
    let boroughs: Vec<Value> = [
        ("Bronx", "44"),
        ("Brooklyn", "45"),
        ("EWR", "44"),
        ("Manhattan", "44"),
        ("Queens", "44"),
        ("Staten Island", "44"),
    ]
    .iter()
    .map(|(b, n)| json!({"borough": b, "n": n}))
    .collect();
    assert_eq!(
        result_line(text, "simple"),
        json!({"tls": true, "command": "SELECT", "rows": boroughs})
    );
    assert_eq!(
        result_line(text, "parameterized"),
        json!([{"zone": "Manhattan Zone 12"}])
    );
    assert_eq!(
        result_line(text, "error"),
        json!({
            "code": "42P01",
            "severity": "ERROR",
            "message": "relation \"nope\" does not exist",
            "then": [{"zone": "Brooklyn Zone 7"}],
        })
    );
    for check in [
        "ok undefined table (extended) code",
        "ok usable after extended error",
        "ok named prepared second",
        "ok pool 20 concurrent queries",
        "ok channel binding login",
    ] {
        assert!(text.lines().any(|l| l == check), "no `{check}` in:\n{text}");
    }
}
