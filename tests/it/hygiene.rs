//! Session hygiene over real sockets with a real client (tokio-postgres): idle
//! timeouts with PostgreSQL's codes (and the upstream session released, against
//! the PostgreSQL stand-in), per-user connection limits, an admin terminating
//! another session (audited), and engine settings a non-admin may not raise.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};

use crate::harness::{Gateway, GatewayConfig, error_message, rows, scalar, sqlstate};
use crate::redshift::{Options, Rig};

/// A client whose connection task is kept: an error the server sends while the
/// client waits (a FATAL on an idle session) ends that task with the error.
async fn connect_watched(
    port: u16,
    user: &str,
    password: &str,
    options: Option<&str>,
) -> Result<(Client, JoinHandle<Result<(), tokio_postgres::Error>>), tokio_postgres::Error> {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(port)
        .dbname("sluice")
        .user(user)
        .password(password)
        .ssl_mode(tokio_postgres::config::SslMode::Disable);
    if let Some(o) = options {
        config.options(o);
    }
    let (client, conn) = config.connect(NoTls).await?;
    Ok((client, tokio::spawn(conn)))
}

/// The error that ended a watched connection (within a generous bound).
async fn ended_with(conn: JoinHandle<Result<(), tokio_postgres::Error>>) -> tokio_postgres::Error {
    match tokio::time::timeout(Duration::from_secs(20), conn).await {
        Ok(Ok(Err(e))) => e,
        Ok(Ok(Ok(()))) => panic!("the connection ended without an error"),
        Ok(Err(e)) => panic!("connection task failed: {e}"),
        Err(_) => panic!("the session was not ended within 20 s"),
    }
}

const USERS: &str = r#"
[[auth.users]]
name = "demo"
password = "demo"
roles = ["analyst"]
[[auth.users]]
name = "root"
password = "root-pw"
roles = ["analyst", "ops"]
[[auth.users]]
name = "slow"
password = "slow-pw"
roles = ["txn_limited"]

[[roles]]
name = "analyst"
read = ["*"]
[[roles]]
name = "ops"
admin = true
[[roles]]
name = "txn_limited"
read = ["*"]
idle_in_transaction_session_timeout_secs = 1
"#;

const AUDIT: &str = "[audit]\n[audit.file]\npath = \"audit.jsonl\"\n";

fn gateway() -> GatewayConfig {
    GatewayConfig::demo().auth(USERS).extra(AUDIT)
}

fn audit_file(gw: &Gateway) -> PathBuf {
    gw.config_path().with_file_name("audit.jsonl")
}

fn audit_lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

async fn wait_for_event(path: &Path, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(e) = audit_lines(path).into_iter().find(&pred) {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "no {what} event in {:#?}",
            audit_lines(path)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_session_timeout_set_by_the_client_ends_the_session_with_57p05() {
    let gw = gateway().start().await;
    let (client, conn) = connect_watched(gw.port, "demo", "demo", None)
        .await
        .expect("connect");
    client
        .simple_query("SET idle_session_timeout = '1s'")
        .await
        .expect("the GUC is settable");
    assert_eq!(scalar(&client, "SHOW idle_session_timeout").await, "1000");
    // Busy sessions are not idle: statements keep it alive past the timeout.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(scalar(&client, "SELECT 1").await, "1");
    }
    let e = ended_with(conn).await;
    assert_eq!(sqlstate(&e), "57P05", "{e:?}");
    assert_eq!(
        error_message(&e),
        "terminating connection due to idle-session timeout"
    );
    assert!(client.simple_query("SELECT 1").await.is_err());
    let logoff = wait_for_event(&audit_file(&gw), "logoff", |e| {
        e["event"] == "logoff" && e["user"] == "demo"
    })
    .await;
    assert_eq!(logoff["reason"], "idle_session_timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_in_transaction_timeout_of_a_role_ends_the_session_with_25p03() {
    let gw = gateway().start().await;
    let (client, conn) = connect_watched(gw.port, "slow", "slow-pw", None)
        .await
        .expect("connect");
    // Idle outside a transaction: the role's in-transaction timeout does not apply.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    client.simple_query("BEGIN").await.expect("begin");
    assert_eq!(
        scalar(&client, "SELECT count(*) FROM nyc.zones").await,
        "265"
    );
    let started = Instant::now();
    let e = ended_with(conn).await;
    assert_eq!(sqlstate(&e), "25P03", "{e:?}");
    assert_eq!(
        error_message(&e),
        "terminating connection due to idle-in-transaction timeout"
    );
    assert!(started.elapsed() >= Duration::from_millis(900));
    // A GUC may lower the role's timeout but never raise it.
    let (client, conn) = connect_watched(gw.port, "slow", "slow-pw", None)
        .await
        .expect("connect");
    client
        .simple_query("SET idle_in_transaction_session_timeout = '1h'; BEGIN")
        .await
        .expect("set and begin");
    assert_eq!(sqlstate(&ended_with(conn).await), "25P03");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_in_transaction_in_a_forwarding_session_releases_the_upstream_session() {
    let rig = Rig::start(Options::default()).await;
    let (client, conn) = connect_watched(rig.port, "alice", "alice-pw", None)
        .await
        .expect("connect");
    let upstream_sessions = || {
        rig.pg
            .sql(
                "postgres",
                "SELECT count(*) FROM pg_stat_activity WHERE usename = 'IAM:alice'",
            )
            .expect("pg_stat_activity")
            .trim()
            .to_owned()
    };
    client
        .simple_query("SET idle_in_transaction_session_timeout = '1s'")
        .await
        .expect("a gateway setting, answered by the gateway");
    client.simple_query("BEGIN").await.expect("begin upstream");
    let n = scalar(&client, "SELECT count(*) FROM public.sales").await;
    assert_eq!(n, "1000");
    assert_eq!(upstream_sessions(), "1", "the upstream session is held");
    let state = rig
        .pg
        .sql(
            "postgres",
            "SELECT state FROM pg_stat_activity WHERE usename = 'IAM:alice'",
        )
        .expect("state");
    assert_eq!(state.trim(), "idle in transaction");
    let e = ended_with(conn).await;
    assert_eq!(sqlstate(&e), "25P03", "{e:?}");
    // The upstream session in its transaction is closed, not parked for reuse.
    let deadline = Instant::now() + Duration::from_secs(15);
    while upstream_sessions() != "0" {
        assert!(
            Instant::now() < deadline,
            "the upstream session was not released"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_connection_limit_refuses_the_extra_connection_with_53300() {
    let gw = gateway()
        .server("max_connections_per_user = 2")
        .start()
        .await;
    let (a, _ca) = connect_watched(gw.port, "demo", "demo", None)
        .await
        .expect("first");
    let (b, cb) = connect_watched(gw.port, "demo", "demo", None)
        .await
        .expect("second");
    let e = connect_watched(gw.port, "demo", "demo", None)
        .await
        .expect_err("the third is refused");
    assert_eq!(sqlstate(&e), "53300", "{e:?}");
    assert_eq!(error_message(&e), "too many connections for role \"demo\"");
    // Others keep working: the user's open sessions, and other users.
    assert_eq!(scalar(&a, "SELECT 1").await, "1");
    assert_eq!(scalar(&b, "SELECT 2").await, "2");
    let (root, _cr) = connect_watched(gw.port, "root", "root-pw", None)
        .await
        .expect("another user");
    assert_eq!(scalar(&root, "SELECT 3").await, "3");
    // The place comes back when a session ends.
    drop(b);
    let _ = cb.await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let (c, _cc) = loop {
        match connect_watched(gw.port, "demo", "demo", None).await {
            Ok(c) => break c,
            Err(e) => {
                assert_eq!(sqlstate(&e), "53300");
                assert!(Instant::now() < deadline, "the place was not given back");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(scalar(&c, "SELECT 4").await, "4");
    let refused = wait_for_event(&audit_file(&gw), "login_failed", |e| {
        e["event"] == "login_failed" && e["sqlstate"] == "53300"
    })
    .await;
    assert_eq!(refused["user"], "demo");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_terminates_another_session_and_it_is_audited() {
    let gw = gateway().start().await;
    let (victim, conn) = connect_watched(gw.port, "demo", "demo", None)
        .await
        .expect("victim");
    let pid: i32 = scalar(&victim, "SELECT pg_backend_pid()")
        .await
        .parse()
        .expect("pid");
    let (root, _cr) = connect_watched(gw.port, "root", "root-pw", None)
        .await
        .expect("admin");
    // The session list names the victim with its pid, user, state and ages.
    let sessions = rows(&root, "SHOW sluice.sessions").await;
    let row = sessions
        .iter()
        .find(|r| r[0] == pid.to_string())
        .unwrap_or_else(|| panic!("pid {pid} in {sessions:?}"));
    assert_eq!(row[1], "demo");
    assert_eq!(row[4], "idle");
    assert!(row[3].starts_with("127.0.0.1:"), "{row:?}");
    assert!(row[7].parse::<f64>().is_ok(), "{row:?}");
    // A non-admin may not, and nothing happens to the target.
    let (other, _co) = connect_watched(gw.port, "demo", "demo", None)
        .await
        .expect("other");
    let e = other
        .simple_query(&format!("SELECT pg_terminate_backend({pid})"))
        .await
        .expect_err("refused");
    assert_eq!(sqlstate(&e), "42501", "{e:?}");
    assert_eq!(scalar(&victim, "SELECT 5").await, "5");
    // An unknown pid: false, as PostgreSQL.
    assert_eq!(scalar(&root, "SELECT sluice.terminate(4194304)").await, "f");
    // The admin terminates the victim, over the extended protocol too.
    let done: bool = root
        .query_one(&format!("SELECT sluice.terminate({pid})"), &[])
        .await
        .expect("terminate")
        .get(0);
    assert!(done);
    let e = ended_with(conn).await;
    assert_eq!(sqlstate(&e), "57P01", "{e:?}");
    assert_eq!(
        error_message(&e),
        "terminating connection due to administrator command"
    );
    assert_eq!(scalar(&root, "SELECT 6").await, "6", "the admin goes on");
    let file = audit_file(&gw);
    let event = wait_for_event(&file, "terminate", |e| e["event"] == "terminate").await;
    assert_eq!(event["user"], "root");
    assert_eq!(event["target"]["session"], pid);
    assert_eq!(event["target"]["user"], "demo");
    let logoff = wait_for_event(&file, "victim's logoff", |e| {
        e["event"] == "logoff" && e["session"] == pid
    })
    .await;
    assert_eq!(logoff["reason"], "terminated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_settings_are_not_the_users_to_raise() {
    let gw = gateway().start().await;
    let (demo, _cd) = connect_watched(gw.port, "demo", "demo", None)
        .await
        .expect("demo");
    for (name, value) in [
        ("datafusion.execution.batch_size", "1"),
        ("datafusion.execution.target_partitions", "1000"),
        ("datafusion.optimizer.max_passes", "0"),
    ] {
        let e = demo
            .simple_query(&format!("SET {name} = {value}"))
            .await
            .err()
            .unwrap_or_else(|| panic!("{name} accepted"));
        assert_eq!(sqlstate(&e), "42501", "{e:?}");
        assert_eq!(
            error_message(&e),
            format!("permission denied to set parameter \"{name}\"")
        );
    }
    // Nor through set_config().
    let e = demo
        .simple_query("SELECT set_config('datafusion.execution.batch_size', '1', false)")
        .await
        .expect_err("set_config refused");
    assert_eq!(sqlstate(&e), "42501", "{e:?}");
    // Nor at startup (options=-c): the login fails with the same error.
    let e = connect_watched(
        gw.port,
        "demo",
        "demo",
        Some("-c datafusion.execution.batch_size=1"),
    )
    .await
    .expect_err("startup option refused");
    assert_eq!(sqlstate(&e), "42501", "{e:?}");
    // An allowed (display) option works, and reaches the engine.
    demo.simple_query("SET datafusion.explain.format = 'tree'")
        .await
        .expect("allowed");
    assert_eq!(
        scalar(&demo, "SHOW datafusion.explain.format").await,
        "tree"
    );
    let plan = rows(&demo, "EXPLAIN SELECT count(*) FROM nyc.zones").await;
    let text = format!("{plan:?}");
    assert!(text.contains('┌'), "tree-format EXPLAIN: {text}");
    // An admin may set anything, and queries still run with it.
    let (root, _cr) = connect_watched(gw.port, "root", "root-pw", None)
        .await
        .expect("admin");
    root.simple_query("SET datafusion.execution.batch_size = 7")
        .await
        .expect("admin may");
    assert_eq!(
        scalar(&root, "SHOW datafusion.execution.batch_size").await,
        "7"
    );
    assert_eq!(scalar(&root, "SELECT count(*) FROM nyc.zones").await, "265");
    let e = root
        .simple_query("SET datafusion.execution.batch_size = 'many'")
        .await
        .expect_err("a bad value");
    assert_eq!(sqlstate(&e), "22023", "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminating_a_busy_session_cancels_its_statement() {
    let gw = gateway().start().await;
    let (victim, conn) = connect_watched(gw.port, "demo", "demo", None)
        .await
        .expect("victim");
    let pid = scalar(&victim, "SELECT pg_backend_pid()").await;
    let (root, _cr) = connect_watched(gw.port, "root", "root-pw", None)
        .await
        .expect("admin");
    // Billions of joined rows: it runs until it is stopped.
    // (The client is handed back: dropping it would end the connection itself.)
    let running = tokio::spawn(async move {
        let r = victim
            .simple_query(
                "SELECT count(*) FROM nyc.trips a CROSS JOIN nyc.zones b CROSS JOIN nyc.zones c",
            )
            .await;
        (victim, r)
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let sessions = rows(&root, "SHOW sluice.sessions").await;
        if sessions.iter().any(|r| r[0] == pid && r[4] == "active") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the victim never ran: {sessions:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        scalar(&root, &format!("SELECT pg_terminate_backend({pid})")).await,
        "t"
    );
    let (_victim, result) = tokio::time::timeout(Duration::from_secs(20), running)
        .await
        .expect("the statement was stopped")
        .expect("task");
    // Cancelled (57014), then the FATAL on its own.
    let e = result.expect_err("the statement failed");
    assert_eq!(sqlstate(&e), "57014", "{e:?}");
    assert_eq!(sqlstate(&ended_with(conn).await), "57P01");
}
