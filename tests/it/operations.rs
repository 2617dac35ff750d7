//! Operations against real peers: the audit trail (file sink, verify, refuse mode),
//! `/metrics` and `/readyz` over HTTP, query groups, PgBouncer's `SHOW` views read
//! by psql, and the dashboard loaded in headless Chromium.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{
    GatewayConfig, http_get, metric, psql_command, rows, run_sluice, sluice_command, sqlstate,
    stderr, stdout,
};
use crate::idp::{Idp, Key};
use crate::postgres;
use crate::redshift::{Options, Rig};

/// Audit file, admin listener, result cache and a gateway view manager; `auditee`
/// reads upstream (as `IAM:auditee`) and manages views.
fn ops_extra(admin_port: u16, audit: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:{admin_port}"

[cache]
result_ttl_secs = 300

[materialized_views]
schemas = ["mv"]
refresh_roles = ["mv_manager"]

{audit}

[[roles]]
name = "mv_manager"
read = ["*"]
manage_materialized_views = true

[[auth.users]]
name = "auditee"
password = "auditee-pw"
roles = ["rs_reader", "mv_manager"]
"#
    )
}

const AUDIT_FILE: &str = r#"
[audit]
[audit.file]
path = "audit/sluice-audit.jsonl"
"#;

async fn ops_rig(audit: &str) -> (Rig, u16) {
    let admin = postgres::free_port().expect("port");
    let rig = Rig::start(Options {
        extra: ops_extra(admin, audit),
        ..Options::default()
    })
    .await;
    rig.pg
        .sql(
            "postgres",
            "CREATE ROLE \"IAM:auditee\" LOGIN IN ROLE iam_users",
        )
        .expect("role");
    (rig, admin)
}

/// The complete lines of an audit file (one being written may be half there).
fn audit_lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// A plaintext loopback client with an `application_name`.
async fn connect_app(port: u16, user: &str, password: &str, app: &str) -> tokio_postgres::Client {
    crate::harness::connect_app_noticed(port, user, password, app)
        .await
        .0
}

/// Waits until the audit file holds an event matching `pred`.
async fn wait_for_event(path: &Path, what: &str, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines = audit_lines(path);
        if lines.iter().any(&pred) {
            return lines;
        }
        assert!(Instant::now() < deadline, "no {what} event in {lines:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn field<'a>(e: &'a Value, name: &str) -> &'a str {
    e[name].as_str().unwrap_or("")
}

fn strings(e: &Value, name: &str) -> Vec<String> {
    e[name]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_trail_records_each_statement_once_whatever_its_route() {
    let (rig, _) = ops_rig(AUDIT_FILE).await;
    let file = rig.dir.path().join("audit/sluice-audit.jsonl");
    let client = connect_app(rig.port, "auditee", "auditee-pw", "audit-test").await;

    // lake, upstream, the same upstream read again (a cache hit), gateway view DDL,
    // a refused write, a parameterised upstream read, a password in role DDL.
    client
        .simple_query("SELECT count(*) FROM nyc.zones")
        .await
        .expect("lake");
    for _ in 0..2 {
        client
            .simple_query("SELECT count(*) FROM public.sales")
            .await
            .expect("upstream");
    }
    client
        .simple_query(
            "CREATE MATERIALIZED VIEW mv.zone_count AS SELECT count(*) AS n FROM nyc.zones",
        )
        .await
        .expect("view");
    let refused = client
        .simple_query("DELETE FROM public.sales WHERE id = 1")
        .await
        .expect_err("read-only role");
    let refused_code = sqlstate(&refused);
    client
        .query("SELECT region FROM public.sales WHERE id = $1", &[&7i32])
        .await
        .expect("parameterised");
    let password = client
        .simple_query("CREATE USER intruder PASSWORD 'hunter2-secret'")
        .await
        .expect_err("read-only role");
    let password_code = sqlstate(&password);
    drop(client);

    let lines = wait_for_event(&file, "logoff", |e| {
        field(e, "event") == "logoff" && field(e, "user") == "auditee"
    })
    .await;
    let mine: Vec<&Value> = lines
        .iter()
        .filter(|e| field(e, "user") == "auditee")
        .collect();
    let kinds: Vec<&str> = mine.iter().map(|e| field(e, "event")).collect();
    assert_eq!(
        kinds,
        [
            "login",
            "statement",
            "statement",
            "statement",
            "statement",
            "statement",
            "statement",
            "statement",
            "logoff"
        ],
        "{mine:#?}"
    );
    let login = mine[0];
    assert_eq!(field(login, "auth"), "password");
    assert_eq!(field(login, "application_name"), "audit-test");
    assert_eq!(strings(login, "roles"), ["rs_reader", "mv_manager"]);
    assert!(field(login, "client").starts_with("127.0.0.1:"));
    let session = login["session"].as_i64().expect("session id");
    assert!(mine.iter().all(|e| e["session"].as_i64() == Some(session)));

    let st: Vec<&Value> = mine[1..8].to_vec();
    let routes: Vec<&str> = st.iter().map(|e| field(e, "route")).collect();
    assert_eq!(
        routes,
        [
            "lake", "upstream", "cache", "view", "refused", "upstream", "refused"
        ],
        "{st:#?}"
    );
    let codes: Vec<&str> = st.iter().map(|e| field(e, "sqlstate")).collect();
    assert_eq!(
        codes,
        [
            "00000",
            "00000",
            "00000",
            "00000",
            refused_code.as_str(),
            "00000",
            password_code.as_str()
        ]
    );
    // Field by field, on the lake statement.
    let lake = st[0];
    assert_eq!(field(lake, "statement"), "SELECT count(*) FROM nyc.zones");
    assert_eq!(strings(lake, "tables_read"), ["nyc.zones"]);
    assert!(strings(lake, "tables_written").is_empty());
    assert_eq!(lake["rows"].as_u64(), Some(1));
    assert!(lake["bytes"].as_u64().unwrap_or(0) > 0);
    assert!(lake["duration_us"].as_u64().is_some());
    assert_eq!(field(lake, "fingerprint").len(), 16);
    assert_eq!(field(lake, "application"), "audit-test");
    // Upstream and its cache hit: one group, rows read off the relayed tag.
    assert_eq!(st[1]["rows"].as_u64(), Some(1));
    assert_eq!(field(st[1], "fingerprint"), field(st[2], "fingerprint"));
    assert_eq!(strings(st[1], "tables_read"), ["public.sales"]);
    assert_eq!(strings(st[3], "tables_written"), ["mv.zone_count"]);
    assert_eq!(strings(st[4], "tables_written"), ["public.sales"]);
    assert!(st[4]["error"].as_str().is_some());
    // Parameters are not logged by default.
    assert_eq!(
        field(st[5], "statement"),
        "SELECT region FROM public.sales WHERE id = $1"
    );
    assert!(st[5].get("parameters").is_none(), "{:#?}", st[5]);
    // The password never reaches the trail.
    let text = std::fs::read_to_string(&file).expect("audit file");
    assert!(!text.contains("hunter2"), "password logged");
    assert!(field(st[6], "statement").contains("PASSWORD '***'"));
    assert!(mine[8]["duration_us"].as_u64().is_some());

    // The chain verifies; an edited line is found.
    let verify = |path: PathBuf| async move {
        run_sluice(sluice_command(["audit", "verify"]).arg(path)).await
    };
    let ok = verify(file.clone()).await;
    assert!(ok.status.success(), "{}{}", stdout(&ok), stderr(&ok));
    let copy = rig.dir.path().join("edited.jsonl");
    let edited: Vec<String> = text
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i == 3 {
                l.replacen("\"route\":\"cache\"", "\"route\":\"lake\"", 1)
            } else {
                l.to_owned()
            }
        })
        .collect();
    assert_ne!(
        edited.join("\n"),
        text.trim_end(),
        "the edit changed something"
    );
    std::fs::write(&copy, edited.join("\n") + "\n").expect("write copy");
    let bad = verify(copy.clone()).await;
    assert!(!bad.status.success());
    assert!(
        stdout(&bad).contains("line 5") || stderr(&bad).contains("line 5"),
        "{}{}",
        stdout(&bad),
        stderr(&bad)
    );
    // A removed line is found too.
    let removed: Vec<&str> = text
        .lines()
        .enumerate()
        .filter(|(i, _)| *i != 2)
        .map(|(_, l)| l)
        .collect();
    std::fs::write(&copy, removed.join("\n") + "\n").expect("write copy");
    assert!(!verify(copy).await.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_refuse_mode_fails_statements_while_the_sink_cannot_write_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).expect("dir");
    let gw = GatewayConfig::demo()
        .extra(&format!(
            "[audit]\non_failure = \"refuse\"\nlog_parameters = true\n[audit.file]\npath = \"{}\"\n",
            logs.join("audit.jsonl").display()
        ))
        .start()
        .await;
    let client = gw.connect().await;
    // Parameters are logged when asked for.
    client
        .query(
            "SELECT zone FROM nyc.zones WHERE location_id = $1",
            &[&1i64],
        )
        .await
        .expect("statement");
    let file = logs.join("audit.jsonl");
    wait_for_event(&file, "parameterised statement", |e| {
        e["parameters"]
            .as_array()
            .is_some_and(|p| p.len() == 1 && p[0] == "1")
    })
    .await;

    let away = dir.path().join("logs-away");
    std::fs::rename(&logs, &away).expect("move the directory away");
    let mut sent = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    let refusal = loop {
        sent += 1;
        match client.simple_query("SELECT 1").await {
            Ok(_) => {}
            Err(e) => break e,
        }
        assert!(
            Instant::now() < deadline,
            "statements still run with the audit sink down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(sqlstate(&refusal), "58030");
    assert!(crate::harness::error_message(&refusal).contains("audit"));
    // More refusals while it stays down.
    for _ in 0..3 {
        sent += 1;
        let e = client.simple_query("SELECT 2").await.expect_err("refused");
        assert_eq!(sqlstate(&e), "58030");
    }
    std::fs::rename(&away, &logs).expect("move it back");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        sent += 1;
        if client.simple_query("SELECT 3").await.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "statements still refused after recovery"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every statement sent, refused ones included, is in the trail, in order, and
    // the chain verifies.
    let deadline = Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let lines = audit_lines(&file);
        let n = lines
            .iter()
            .filter(|e| field(e, "event") == "statement")
            .count();
        if n > sent || Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let statements: Vec<&Value> = lines
        .iter()
        .filter(|e| field(e, "event") == "statement")
        .collect();
    assert_eq!(statements.len(), 1 + sent, "{statements:#?}");
    let refused = statements
        .iter()
        .filter(|e| field(e, "sqlstate") == "58030")
        .count();
    assert!(refused >= 4, "{refused}");
    let out = run_sluice(sluice_command(["audit", "verify"]).arg(&file)).await;
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_change_with_traffic_and_readiness_follows_the_idp_and_upstream() {
    let key = Key::generate("k1");
    let idp = Idp::start(vec![key.jwk.clone()]).await;
    idp.up.store(false, std::sync::atomic::Ordering::SeqCst);
    let admin = postgres::free_port().expect("port");
    let oidc = format!(
        "[auth.oidc]\njwks_min_refresh_secs = 1\nallow_insecure_http = true\nallow_plaintext_loopback = true\n\
         [[auth.oidc.issuers]]\nissuer = \"{iss}\"\ndiscovery_url = \"{disc}\"\naudiences = [\"api://sluice\"]\n",
        iss = crate::idp::v1_issuer(),
        disc = idp.discovery(false),
    );
    let rig = Rig::start(Options {
        extra: format!("[admin]\nlisten = \"127.0.0.1:{admin}\"\n{oidc}"),
        ..Options::default()
    })
    .await;

    // Liveness needs nothing; readiness needs the IdP's keys.
    assert_eq!(http_get(admin, "/livez", None).await.0, 200);
    let (status, body) = http_get(admin, "/readyz", None).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("FAIL issuer"), "{body}");
    idp.up.store(true, std::sync::atomic::Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = http_get(admin, "/readyz", None).await;
        if status == 200 {
            assert!(body.contains("ok   upstream warehouse"), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "never ready: {body}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The upstream going away makes it unready, with the reason; back, ready again.
    rig.pg.stop().expect("stop PostgreSQL");
    // (An answer is reused for a second.)
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        let (status, body) = http_get(admin, "/readyz", None).await;
        if status == 503 {
            break body;
        }
        assert!(Instant::now() < deadline, "still ready: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(body.contains("FAIL upstream warehouse"), "{body}");
    rig.pg.restart().expect("start PostgreSQL");
    let deadline = Instant::now() + Duration::from_secs(15);
    while http_get(admin, "/readyz", None).await.0 != 200 {
        assert!(
            Instant::now() < deadline,
            "not ready after the upstream returned"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    let before = http_get(admin, "/metrics", None).await.1;
    let lake_ok = "sluice_statement_duration_seconds_count{outcome=\"ok\",route=\"lake\"}";
    let up_ok = "sluice_statement_duration_seconds_count{outcome=\"ok\",route=\"upstream\"}";
    let lake_err = "sluice_statement_duration_seconds_count{outcome=\"error\",route=\"lake\"}";
    let alice = rig.alice().await;
    for _ in 0..3 {
        alice
            .simple_query("SELECT count(*) FROM nyc.zones")
            .await
            .expect("lake");
    }
    alice
        .simple_query("SELECT count(*) FROM public.sales")
        .await
        .expect("upstream");
    alice
        .simple_query("SELECT no_such_column FROM nyc.zones")
        .await
        .expect_err("42703");
    let (status, after) = http_get(admin, "/metrics", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        metric(&after, lake_ok) - metric(&before, lake_ok),
        3.0,
        "{after}"
    );
    assert_eq!(metric(&after, up_ok) - metric(&before, up_ok), 1.0);
    assert_eq!(metric(&after, lake_err) - metric(&before, lake_err), 1.0);
    assert!(metric(&after, "sluice_statement_rows_total{route=\"lake\"}") >= 3.0);
    assert!(
        metric(
            &after,
            "sluice_logins_total{method=\"password\",outcome=\"ok\"}"
        ) >= 1.0
    );
    assert!(
        metric(
            &after,
            "sluice_credential_mints_total{upstream=\"warehouse\"}"
        ) >= 1.0
    );
    assert_eq!(
        metric(
            &after,
            "sluice_pools_server_active_connections{upstream=\"warehouse\"}"
        ),
        1.0
    );
    assert!(metric(&after, "sluice_client_connections{state=\"idle\"}") >= 1.0);
    assert!(metric(&after, "sluice_jwks_fetches_total{outcome=\"ok\"}") >= 1.0);
    assert!(metric(&after, "sluice_jwks_fetches_total{outcome=\"error\"}") >= 1.0);
    assert!(after.contains("# TYPE sluice_statement_duration_seconds histogram"));
    // A wrong password counts as a failed login; a bad token as a token refusal.
    assert!(
        crate::harness::connect_plain(rig.port, "alice", "wrong")
            .await
            .is_err()
    );
    let forged = key.sign(&serde_json::json!({
        "iss": "https://elsewhere.example/",
        "aud": "api://sluice",
    }));
    assert!(
        crate::harness::connect_plain(rig.port, "nobody@contoso.com", &forged)
            .await
            .is_err()
    );
    let last = http_get(admin, "/metrics", None).await.1;
    assert!(
        last.contains("sluice_token_refusals_total{reason="),
        "{last}"
    );
    assert!(
        metric(
            &last,
            "sluice_logins_total{method=\"unknown\",outcome=\"failed\"}"
        ) >= 1.0,
        "{last}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_groups_ignore_literals_list_lengths_and_aliases_and_attribute_applications() {
    let gw = GatewayConfig::demo()
        .auth(
            "[[auth.users]]\nname = \"demo\"\npassword = \"demo\"\nroles = [\"ops\"]\n\
             [[auth.users]]\nname = \"reader\"\npassword = \"reader-pw\"\nroles = [\"analyst\"]\n\
             [[roles]]\nname = \"ops\"\nread = [\"*\"]\nadmin = true\n\
             [[roles]]\nname = \"analyst\"\nread = [\"*\"]\n",
        )
        .start()
        .await;
    let c = gw.connect().await;
    c.simple_query("SET application_name = 'groups-test'")
        .await
        .expect("set");
    for sql in [
        "SELECT zone FROM nyc.zones WHERE location_id IN (1, 2, 3)",
        "SELECT zone FROM nyc.zones WHERE location_id IN (7)",
        "select z.zone from nyc.zones z where z.location_id in (4, 5)",
        "SELECT zone AS name FROM nyc.zones WHERE location_id IN (9, 10, 11, 12)",
    ] {
        c.simple_query(sql).await.expect(sql);
    }
    // sqlcommenter tags attribute the statement to an application and route.
    c.simple_query("SELECT count(*) FROM nyc.zones /*application='billing',route='%2Finvoices'*/")
        .await
        .expect("tagged");
    let groups = rows(
        &c,
        "SELECT query, application, calls, query_group FROM sluice.query_groups \
         WHERE query LIKE '%nyc.zones%' ORDER BY calls DESC, query",
    )
    .await;
    assert_eq!(groups.len(), 3, "{groups:#?}");
    assert_eq!(groups[0][1], "groups-test");
    assert_eq!(groups[0][2], "3", "{groups:#?}");
    assert!(
        !groups[0][0].contains('7'),
        "literals leak: {}",
        groups[0][0]
    );
    let tagged: Vec<&Vec<String>> = groups.iter().filter(|g| g[1] == "billing").collect();
    assert_eq!(tagged.len(), 1, "{groups:#?}");
    assert_eq!(tagged[0][3], "/invoices");
    // Ordered by total time, with the pg_stat_statements-style columns.
    let top = rows(
        &c,
        "SELECT calls, total_time >= mean_time, p95_time <= max_time + 0.001, errors \
         FROM sluice.query_groups ORDER BY total_time DESC LIMIT 1",
    )
    .await;
    assert_eq!(top[0][1], "t");
    assert_eq!(top[0][2], "t");
    // A role without admin does not see them; reset forgets them.
    let reader = crate::harness::connect_plain(gw.port, "reader", "reader-pw")
        .await
        .expect("reader");
    let denied = reader
        .simple_query("SELECT * FROM sluice.query_groups")
        .await
        .expect_err("admins only");
    assert_eq!(sqlstate(&denied), "42P01");
    let denied = reader
        .simple_query("CALL sluice.reset_query_groups()")
        .await
        .expect_err("admins only");
    assert_eq!(sqlstate(&denied), "42501");
    c.simple_query("CALL sluice.reset_query_groups()")
        .await
        .expect("reset");
    let left = rows(
        &c,
        "SELECT count(*) FROM sluice.query_groups WHERE query LIKE '%nyc.zones%'",
    )
    .await;
    assert_eq!(left[0][0], "0");
}

/// psql's `--csv` output as rows (header first).
fn csv(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .map(|l| l.split(',').map(str::to_owned).collect())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbouncer_show_views_and_the_dashboard_in_chromium() {
    let (rig, admin) = ops_rig("").await;
    let alice = connect_app(rig.port, "alice", "alice-pw", "report-builder").await;
    alice
        .simple_query("SELECT count(*) FROM public.sales")
        .await
        .expect("upstream");
    alice
        .simple_query("SELECT count(*) FROM nyc.zones")
        .await
        .expect("lake");

    let psql = |sql: &str| {
        let mut cmd = psql_command(rig.port, "sluice", "ops");
        cmd.env("PGPASSWORD", "ops-pw").args(["--csv", "-c", sql]);
        cmd
    };
    let out = psql("SHOW CLIENTS").output().await.expect("psql");
    assert!(out.status.success(), "{}", stderr(&out));
    let clients = csv(&stdout(&out));
    let col = |name: &str| {
        clients[0]
            .iter()
            .position(|c| c == name)
            .unwrap_or_else(|| panic!("{name}: {:?}", clients[0]))
    };
    for name in [
        "type",
        "user",
        "database",
        "state",
        "addr",
        "port",
        "connect_time",
        "request_time",
        "wait_us",
        "tls",
        "application_name",
    ] {
        col(name);
    }
    let row = clients
        .iter()
        .find(|r| r[col("user")] == "alice")
        .unwrap_or_else(|| panic!("{clients:?}"));
    assert_eq!(row[col("application_name")], "report-builder");
    assert_eq!(row[col("database")], "sluice");
    assert_eq!(row[col("addr")], "127.0.0.1");

    let out = psql("SHOW POOLS").output().await.expect("psql");
    let pools = csv(&stdout(&out));
    assert_eq!(
        &pools[0][..8],
        [
            "database",
            "user",
            "cl_active",
            "cl_waiting",
            "cl_active_cancel_req",
            "cl_waiting_cancel_req",
            "sv_active",
            "sv_active_cancel"
        ]
    );
    assert_eq!(pools[1][0], "warehouse");
    assert_eq!(pools[1][6], "1", "{pools:?}");

    let out = psql("SHOW SERVERS").output().await.expect("psql");
    let servers = csv(&stdout(&out));
    assert!(
        servers
            .iter()
            .any(|r| r.get(1).map(String::as_str) == Some("alice")
                && r.get(3).map(String::as_str) == Some("active")),
        "{servers:?}"
    );

    let out = psql("SHOW STATS").output().await.expect("psql");
    let stats = csv(&stdout(&out));
    assert_eq!(
        &stats[0][..3],
        ["database", "total_xact_count", "total_query_count"]
    );
    assert!(stats[1][2].parse::<u64>().expect("count") >= 2, "{stats:?}");

    // A role without admin gets 42501.
    let denied = alice
        .simple_query("SHOW POOLS")
        .await
        .expect_err("not admin");
    assert_eq!(sqlstate(&denied), "42501");

    // The dashboard: credentials required, admin role required, then the page.
    assert_eq!(http_get(admin, "/dashboard", None).await.0, 401);
    assert_eq!(
        http_get(admin, "/dashboard", Some(("alice", "alice-pw")))
            .await
            .0,
        403
    );
    assert_eq!(
        http_get(admin, "/dashboard", Some(("ops", "wrong")))
            .await
            .0,
        401
    );
    let (status, data) = http_get(admin, "/dashboard/data", Some(("ops", "ops-pw"))).await;
    assert_eq!(status, 200);
    let data: Value = serde_json::from_str(&data).expect("json");
    assert!(data["sections"].as_array().is_some_and(|s| s.len() >= 5));

    let shots = tempfile::tempdir().expect("tempdir");
    let png = shots.path().join("dashboard.png");
    let url = format!("http://ops:ops-pw@127.0.0.1:{admin}/dashboard");
    let chromium = |extra: &[&str]| {
        let mut cmd = tokio::process::Command::new("chromium");
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1400,1000",
            "--virtual-time-budget=3000",
        ])
        .arg(format!(
            "--user-data-dir={}",
            shots.path().join("profile").display()
        ))
        .args(extra)
        .arg(&url);
        cmd
    };
    let dom = tokio::time::timeout(Duration::from_secs(60), chromium(&["--dump-dom"]).output())
        .await
        .expect("chromium in time")
        .expect("chromium runs");
    let html = stdout(&dom);
    assert!(html.contains("Live sessions"), "{html}{}", stderr(&dom));
    assert!(html.contains("report-builder"));
    assert!(html.contains("Top query groups"));
    assert!(html.contains("SELECT count(*) FROM public.sales"), "{html}");
    assert!(html.contains("warehouse"));
    assert!(!html.contains("alice-pw") && !html.contains("ops-pw"));
    let shot = tokio::time::timeout(
        Duration::from_secs(60),
        chromium(&[&format!("--screenshot={}", png.display())]).output(),
    )
    .await
    .expect("chromium in time")
    .expect("chromium runs");
    let bytes = std::fs::read(&png).unwrap_or_else(|e| panic!("{e}: {}", stderr(&shot)));
    assert!(bytes.starts_with(b"\x89PNG"), "a PNG screenshot");
    assert!(
        bytes.len() > 10_000,
        "the page rendered something ({} bytes)",
        bytes.len()
    );
    if let Ok(dir) = std::env::var("SLUICE_SCREENSHOTS") {
        let _ = std::fs::copy(&png, Path::new(&dir).join("dashboard.png"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_batches_reach_s3_as_day_partitioned_json_lines() {
    let admin = postgres::free_port().expect("port");
    let audit = "[audit]\n[audit.s3]\nurl = \"s3://audit-logs/sluice\"\nendpoint = \"{aws}\"\n\
                 allow_http = true\nregion = \"us-east-1\"\nbatch_secs = 1\n";
    let rig = Rig::start(Options {
        extra: ops_extra(admin, audit),
        buckets: vec!["audit-logs"],
        ..Options::default()
    })
    .await;
    let alice = rig.alice().await;
    alice
        .simple_query("SELECT count(*) FROM nyc.zones")
        .await
        .expect("lake");
    drop(alice);
    let store = rig.moto.store("audit-logs").expect("store");
    let deadline = Instant::now() + Duration::from_secs(20);
    let lines: Vec<Value> = loop {
        use futures::TryStreamExt;
        use object_store::ObjectStoreExt;
        let objects: Vec<object_store::ObjectMeta> = store
            .list(Some(&object_store::path::Path::from("sluice")))
            .try_collect()
            .await
            .expect("list");
        let mut lines = Vec::new();
        for o in &objects {
            let key = o.location.to_string();
            assert!(key.starts_with("sluice/dt="), "{key}");
            assert!(key.ends_with(".jsonl"), "{key}");
            let body = store
                .get(&o.location)
                .await
                .expect("get")
                .bytes()
                .await
                .expect("body");
            for l in String::from_utf8_lossy(&body).lines() {
                lines.push(serde_json::from_str(l).expect("a JSON line"));
            }
        }
        if lines.iter().any(|e: &Value| field(e, "event") == "logoff") {
            break lines;
        }
        assert!(Instant::now() < deadline, "no logoff in S3: {lines:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mine: Vec<&str> = lines
        .iter()
        .filter(|e| field(e, "user") == "alice")
        .map(|e| field(e, "event"))
        .collect();
    assert_eq!(mine, ["login", "statement", "logoff"], "{lines:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_sessions_are_labelled_with_their_query_group() {
    // PostgreSQL has no query_group: the stand-in is labelled through
    // application_name, which a statement can read back.
    let rig = Rig::start(Options {
        extra: "[query_groups]\nlabel_upstream = true\n\
                label_statement = \"SET application_name TO '{label}'\"\n"
            .into(),
        ..Options::default()
    })
    .await;
    let alice = rig.alice().await;
    let simple = "SELECT current_setting('application_name') AS label";
    let label = crate::harness::scalar(&alice, simple).await;
    assert!(label.starts_with("sluice_") && label.len() == 23, "{label}");
    // The same statement again: same group, no new label; another one: relabelled.
    assert_eq!(crate::harness::scalar(&alice, simple).await, label);
    let other = crate::harness::scalar(
        &alice,
        "SELECT current_setting('application_name') AS label, 1 AS one",
    )
    .await;
    assert_ne!(other, label);
    // Prepared statements are labelled at Parse.
    let row = alice
        .query_one(
            "SELECT current_setting('application_name') AS label, $1::int AS n",
            &[&5i32],
        )
        .await
        .expect("extended");
    let prepared: String = row.get(0);
    assert!(
        prepared.starts_with("sluice_") && prepared != label,
        "{prepared}"
    );

    // The label is the group's fingerprint, as sluice.query_groups shows it.
    let ops = rig.connect("ops", "ops-pw").await;
    let groups = rows(
        &ops,
        "SELECT fingerprint FROM sluice.query_groups \
         WHERE route = 'upstream' AND query LIKE '%current_setting%'",
    )
    .await;
    for l in [&label, &other, &prepared] {
        assert!(
            groups.iter().any(|g| format!("sluice_{}", g[0]) == **l),
            "{l} not among {groups:?}"
        );
    }
}
