//! Redshift forwarding against real peers: PostgreSQL 15 (started here) stands in for
//! the cluster, `moto_server` answers DescribeClusters / GetClusterCredentials, and
//! the real `sluice` binary runs between them with AWS credentials from its
//! environment (the standard chain), as in production.
//!
//! moto's minted password cannot exist in the stand-in, so the stand-in trusts members
//! of `iam_users` over TLS: what the tests prove is that the *minted user name*
//! (`IAM:alice`, which only moto produces) is the identity used upstream.

use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use crate::harness::{
    GatewayConfig, clients_dir, connect_db, connect_plain, error_message, psql_command, python,
    scalar, spawn_sluice, sqlstate, stderr, stdout, tls_files,
};
use crate::moto::Moto;
use crate::postgres::{self, Postgres};

const CLUSTER: &str = "analytics";

/// PostgreSQL + moto + a `sluice serve` process configured to forward to them.
pub(crate) struct Rig {
    pub(crate) pg: Postgres,
    pub(crate) moto: Moto,
    sluice: tokio::process::Child,
    pub(crate) port: u16,
    pub(crate) dir: tempfile::TempDir,
}

/// A further gateway process started by [`Rig::another_gateway`]; killed on drop.
pub(crate) struct Peer {
    pub(crate) port: u16,
    _child: tokio::process::Child,
}

impl Peer {
    pub(crate) async fn connect(&self, user: &str, password: &str) -> Client {
        connect_plain(self.port, user, password)
            .await
            .expect("connect to the other gateway")
    }
}

/// A Glue lake with no database, at moto: S3 locations in the config (view and job
/// storage, `cluster.storage`) then go to moto's S3. `{aws}` is filled in by
/// `Rig::start`.
pub(crate) const MOTO_S3: &str = r#"
[lake.glue]
region = "us-east-1"
aws_endpoint = "{aws}"
databases = ["no-such-database"]
[lake.glue.s3]
endpoint = "{aws}"
path_style = true
"#;

pub(crate) struct Options {
    /// Extra keys for the `[[redshift]]` section.
    pub(crate) upstream: String,
    /// Lines for `[redshift.pool]`.
    pub(crate) pool: String,
    /// Whether to create the cluster in moto.
    pub(crate) create_cluster: bool,
    /// Host/port of the upstream; `None` = discover through DescribeClusters.
    pub(crate) host: bool,
    /// More TOML at the end (`{pgport}` = the PostgreSQL port, `{port}` the
    /// gateway's, `{aws}` moto's endpoint).
    pub(crate) extra: String,
    /// S3 buckets to create in moto before the gateway starts.
    pub(crate) buckets: Vec<&'static str>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            upstream: String::new(),
            pool: String::new(),
            create_cluster: true,
            host: true,
            extra: String::new(),
            buckets: Vec::new(),
        }
    }
}

const SETUP_SQL: &str = "\
    CREATE ROLE iam_users NOLOGIN;\
    CREATE ROLE \"IAM:alice\" LOGIN IN ROLE iam_users;\
    CREATE ROLE \"IAM:bob\" LOGIN IN ROLE iam_users;\
    CREATE ROLE \"IAM:sluice_refresh\" LOGIN IN ROLE iam_users;\
    CREATE ROLE etl LOGIN PASSWORD 'etl-secret';\
    CREATE ROLE etl_plain LOGIN PASSWORD 'etl-secret';\
    SET password_encryption = 'md5';\
    CREATE ROLE etl_md5 LOGIN PASSWORD 'etl-secret';";

/// The rig's users and roles: alice reads and bob writes upstream under their own
/// minted identities, ops administers, lakeonly has no Redshift identity.
const AUTH: &str = r#"
[[auth.users]]
name = "alice"
password = "alice-pw"
roles = ["rs_reader"]
[[auth.users]]
name = "bob"
password = "bob-pw"
roles = ["rs_writer"]
[[auth.users]]
name = "ops"
password = "ops-pw"
roles = ["admin"]
[[auth.users]]
name = "lakeonly"
password = "lake-pw"
roles = ["lake"]

[[roles]]
name = "rs_reader"
read = ["*"]
redshift_user = "{user}"
redshift_groups = ["analysts"]
[[roles]]
name = "rs_writer"
read = ["*"]
write = true
redshift_user = "{user}"
[[roles]]
name = "admin"
admin = true
[[roles]]
name = "lake"
read = ["*"]

"#;

/// Environment of the gateway process: the static upstreams' password.
const ENV: &[(&str, &str)] = &[("ETL_PASSWORD", "etl-secret")];

const DEV_SQL: &str = "\
    CREATE TABLE public.sales (id int PRIMARY KEY, region text NOT NULL, amount numeric(10,2));\
    INSERT INTO public.sales SELECT g, CASE WHEN g % 2 = 0 THEN 'east' ELSE 'west' END, g * 1.5 FROM generate_series(1, 1000) g;\
    GRANT SELECT ON public.sales TO iam_users;\
    GRANT ALL ON public.sales TO \"IAM:bob\", etl;\
    GRANT CREATE ON SCHEMA public TO \"IAM:bob\", etl;";

impl Rig {
    pub(crate) async fn start(opts: Options) -> Rig {
        let pg = Postgres::start(
            "hostssl all +iam_users 127.0.0.1/32 trust\n\
             host all etl_plain 127.0.0.1/32 password\n\
             host all etl_md5 127.0.0.1/32 md5\n\
             host all all 127.0.0.1/32 scram-sha-256",
        )
        .expect("PostgreSQL starts");
        pg.sql("postgres", SETUP_SQL).expect("roles");
        pg.sql("postgres", "CREATE DATABASE dev").expect("database");
        pg.sql("dev", DEV_SQL).expect("tables");
        let moto = Moto::start().expect("moto starts");
        for b in &opts.buckets {
            moto.bucket(b).expect("bucket");
        }
        if opts.create_cluster {
            // moto (a single-threaded Python server shared by parallel tests) now and
            // then drops a connection mid-response; the set-up retries that, the
            // tests' own requests do not.
            let mut attempt = 0;
            loop {
                let created = moto
                    .redshift()
                    .create_cluster()
                    .cluster_identifier(CLUSTER)
                    .node_type("ra3.xlplus")
                    .master_username("awsuser")
                    .master_user_password("Secret-pw-1")
                    .db_name("dev")
                    .send()
                    .await;
                match created {
                    Ok(_) => break,
                    Err(e)
                        if attempt < 3
                            && matches!(
                                e,
                                aws_sdk_redshift::error::SdkError::DispatchFailure(_)
                            ) =>
                    {
                        attempt += 1;
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    }
                    Err(e) => panic!("moto creates the cluster: {e:?}"),
                }
            }
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let port = postgres::free_port().expect("port");
        let endpoint = if opts.host {
            format!("host = \"127.0.0.1\"\nport = {}\n", pg.port)
        } else {
            String::new()
        };
        let redshift = format!(
            r#"
[[redshift]]
name = "warehouse"
cluster_identifier = "{CLUSTER}"
region = "us-east-1"
database = "dev"
{endpoint}aws_endpoint = "{aws}"
tls = "verify-full"
ca_file = "{ca}"
credentials = "get_cluster_credentials"
{upstream}
[redshift.pool]
{pool}

{extra}
"#,
            aws = moto.endpoint(),
            ca = pg.ca.display(),
            upstream = opts.upstream,
            pool = opts.pool,
            extra = opts
                .extra
                .replace("{pgport}", &pg.port.to_string())
                .replace("{port}", &port.to_string())
                .replace("{aws}", &moto.endpoint()),
        );
        let pgdir = pg.dir.path();
        let path = GatewayConfig::demo()
            .port(port)
            .tls(&tls_files(
                &pgdir.join("server.crt"),
                &pgdir.join("server.key"),
                "loopback",
            ))
            .auth(AUTH)
            .extra(&redshift)
            .write(dir.path());
        let sluice = spawn_sluice(&path, port, ENV).await;
        Rig {
            pg,
            moto,
            sluice,
            port,
            dir,
        }
    }

    /// Stops the gateway and starts it again on the same config (and storage).
    pub(crate) async fn restart(&mut self) {
        let _ = self.sluice.kill().await;
        let path = self.dir.path().join("sluice.toml");
        self.sluice = spawn_sluice(&path, self.port, ENV).await;
    }

    /// Another gateway process on the rig's config (on its own port, each `(from,
    /// to)` of `edits` applied first): it shares the rig's upstream, moto and storage.
    pub(crate) async fn another_gateway(&self, edits: &[(&str, &str)]) -> Peer {
        let port = postgres::free_port().expect("port");
        self.another_gateway_on(port, edits).await
    }

    /// [`Rig::another_gateway`] listening on `port`.
    pub(crate) async fn another_gateway_on(&self, port: u16, edits: &[(&str, &str)]) -> Peer {
        let config = std::fs::read_to_string(self.dir.path().join("sluice.toml")).expect("config");
        let mut edited = config.replace(
            &format!("listen = \"127.0.0.1:{}\"", self.port),
            &format!("listen = \"127.0.0.1:{port}\""),
        );
        for (from, to) in edits {
            assert!(edited.contains(from), "{from} is not in the config");
            edited = edited.replace(from, to);
        }
        assert_ne!(config, edited);
        // Relative paths (the demo lake, view storage) resolve as the rig's do.
        let path = self.dir.path().join(format!("sluice-{port}.toml"));
        std::fs::write(&path, edited).expect("write config");
        let child = spawn_sluice(&path, port, ENV).await;
        Peer {
            port,
            _child: child,
        }
    }

    pub(crate) async fn connect(&self, user: &str, password: &str) -> Client {
        connect_plain(self.port, user, password)
            .await
            .expect("connect")
    }

    pub(crate) async fn alice(&self) -> Client {
        self.connect("alice", "alice-pw").await
    }

    pub(crate) async fn bob(&self) -> Client {
        self.connect("bob", "bob-pw").await
    }

    /// A row of `SHOW sluice.pools` (as the admin user) as name → value.
    async fn pools(&self) -> Vec<(String, String)> {
        let ops = self.connect("ops", "ops-pw").await;
        let msgs = ops
            .simple_query("SHOW sluice.pools")
            .await
            .expect("show pools");
        let row = msgs
            .iter()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(r) => Some(r),
                _ => None,
            })
            .expect("a pool row");
        (0..row.len())
            .map(|i| {
                (
                    row.columns()[i].name().to_owned(),
                    row.get(i).unwrap_or("").to_owned(),
                )
            })
            .collect()
    }

    async fn pool_value(&self, name: &str) -> String {
        self.pools()
            .await
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
            .unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_logins_share_one_minted_identity() {
    let rig = Rig::start(Options::default()).await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let c = rig.alice().await;
        tasks.push(tokio::spawn(async move {
            let user = scalar(&c, "SELECT current_user").await;
            let rows = scalar(&c, "SELECT count(*) FROM public.sales").await;
            (user, rows, c)
        }));
    }
    let mut clients = Vec::new();
    for t in tasks {
        let (user, rows, c) = t.await.expect("task");
        // The name only GetClusterCredentials produces: moto's minted DbUser.
        assert_eq!(user, "IAM:alice");
        assert_eq!(rows, "1000");
        clients.push(c);
    }
    assert_eq!(
        rig.pool_value("credentials_minted").await,
        "1",
        "{:?}",
        rig.pools().await
    );
    assert_eq!(rig.pool_value("sessions_open").await, "8");
    // The same session still answers lake queries locally.
    assert_eq!(
        scalar(&clients[0], "SELECT count(*) FROM nyc.vendors").await,
        scalar(
            &rig.connect("lakeonly", "lake-pw").await,
            "SELECT count(*) FROM nyc.vendors"
        )
        .await
    );
    // A user whose roles grant no Redshift identity stays on the lake.
    let lake = rig.connect("lakeonly", "lake-pw").await;
    let err = lake
        .simple_query("SELECT * FROM public.sales")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "42P01", "{err}");
    // The credential cache lists the identity, never the password.
    let ops = rig.connect("ops", "ops-pw").await;
    let creds = ops
        .simple_query("SHOW sluice.credentials")
        .await
        .expect("show");
    let text = format!("{creds:?}");
    assert!(
        text.contains("IAM:alice") && text.contains("analysts"),
        "{text}"
    );
    // Non-admins may not look.
    let err = clients[0]
        .simple_query("SHOW sluice.pools")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "42501");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_near_expiry_are_minted_again_in_the_background() {
    let rig = Rig::start(Options {
        upstream: "duration_seconds = 900\nrefresh_ahead_secs = 899\n".into(),
        ..Options::default()
    })
    .await;
    let a = rig.alice().await;
    assert_eq!(scalar(&a, "SELECT current_user").await, "IAM:alice");
    assert_eq!(rig.pool_value("credentials_minted").await, "1");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Within 899 s of expiry now: the next login is served the cached credential and
    // triggers one refresh.
    let b = rig.alice().await;
    assert_eq!(scalar(&b, "SELECT current_user").await, "IAM:alice");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if rig.pool_value("credentials_minted").await == "2" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no refresh: {:?}",
            rig.pools().await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_transactions_copy_and_prepared_statements() {
    let rig = Rig::start(Options::default()).await;
    let mut bob = rig.bob().await;
    assert_eq!(scalar(&bob, "SELECT current_user").await, "IAM:bob");
    // Temp tables and settings live in the pinned upstream session.
    bob.batch_execute(
        "CREATE TEMP TABLE scratch (id int, note text); SET application_name = 'etl-job'",
    )
    .await
    .expect("temp table");
    assert_eq!(scalar(&bob, "SHOW application_name").await, "etl-job");
    // Transactions: a rolled-back insert leaves nothing.
    bob.batch_execute("BEGIN; INSERT INTO scratch VALUES (1, 'gone'); ROLLBACK")
        .await
        .expect("rollback");
    bob.batch_execute("BEGIN; INSERT INTO scratch VALUES (2, 'kept'); COMMIT")
        .await
        .expect("commit");
    assert_eq!(
        scalar(&bob, "SELECT string_agg(note, ',') FROM scratch").await,
        "kept"
    );
    // An error inside a transaction block fails the block, as on PostgreSQL.
    bob.batch_execute("BEGIN").await.expect("begin");
    let err = bob.simple_query("SELECT 1/0").await.unwrap_err();
    assert_eq!(sqlstate(&err), "22012");
    let err = bob.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&err), "25P02");
    bob.batch_execute("ROLLBACK").await.expect("rollback");

    // COPY FROM STDIN and TO STDOUT, relayed both ways.
    use futures::{SinkExt, StreamExt};
    let sink = bob
        .copy_in("COPY scratch (id, note) FROM STDIN")
        .await
        .expect("copy in");
    futures::pin_mut!(sink);
    let mut data = String::new();
    for i in 10..5010 {
        data.push_str(&format!("{i}\trow {i}\n"));
    }
    sink.send(bytes::Bytes::from(data))
        .await
        .expect("copy data");
    let copied = sink.finish().await.expect("copy done");
    assert_eq!(copied, 5000);
    let out = bob
        .copy_out("COPY (SELECT id, note FROM scratch WHERE id < 13 ORDER BY id) TO STDOUT")
        .await
        .expect("copy out");
    futures::pin_mut!(out);
    let mut text = Vec::new();
    while let Some(chunk) = out.next().await {
        text.extend_from_slice(&chunk.expect("copy chunk"));
    }
    assert_eq!(
        String::from_utf8_lossy(&text),
        "2\tkept\n10\trow 10\n11\trow 11\n12\trow 12\n"
    );

    // Prepared statements reused, with binary parameters and results.
    let stmt = bob
        .prepare("SELECT id, region, amount FROM public.sales WHERE id = $1")
        .await
        .expect("prepare");
    for id in [1i32, 2, 999] {
        let row = bob.query_one(&stmt, &[&id]).await.expect("execute");
        let got: i32 = row.get(0);
        let region: &str = row.get(1);
        assert_eq!(got, id);
        assert_eq!(region, if id % 2 == 0 { "east" } else { "west" });
    }
    // A portal read in chunks (max_rows / PortalSuspended) through a transaction.
    let tx = bob.transaction().await.expect("tx");
    let portal = tx
        .bind("SELECT id FROM public.sales ORDER BY id", &[])
        .await
        .expect("bind");
    let first = tx.query_portal(&portal, 300).await.expect("first chunk");
    let rest = tx.query_portal(&portal, 0).await.expect("rest");
    assert_eq!((first.len(), rest.len()), (300, 700));
    tx.commit().await.expect("commit");
    // Startup options Sluice does not know itself reach the upstream session.
    let (tuned, conn) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} dbname=sluice user=bob password=bob-pw sslmode=disable options='-c work_mem=7MB'",
            rig.port
        ),
        NoTls,
    )
    .await
    .expect("connect with options");
    tokio::spawn(conn);
    assert_eq!(scalar(&tuned, "SHOW work_mem").await, "7MB");
    // A lake statement failing inside an upstream transaction fails the whole block:
    // nothing before it is committed.
    bob.batch_execute("BEGIN; INSERT INTO scratch VALUES (3, 'doomed')")
        .await
        .expect("insert in block");
    let err = bob
        .simple_query("SELECT no_such_column FROM nyc.vendors")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "42703", "{err}");
    let err = bob.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&err), "25P02", "{err}");
    bob.batch_execute("COMMIT")
        .await
        .expect("commit ends the failed block");
    assert_eq!(
        scalar(&bob, "SELECT count(*) FROM scratch WHERE id = 3").await,
        "0"
    );
    // Pipelined statements for both places keep their order and answers.
    let (a, b, c) = futures::join!(
        bob.query(
            "SELECT count(*)::int4 FROM public.sales WHERE region = $1",
            &[&"east"]
        ),
        bob.query("SELECT count(*) FROM nyc.vendors", &[]),
        bob.query("SELECT max(id) FROM public.sales", &[]),
    );
    assert_eq!(a.expect("upstream 1")[0].get::<_, i32>(0), 500);
    assert!(b.expect("lake")[0].get::<_, i64>(0) > 0);
    assert_eq!(c.expect("upstream 2")[0].get::<_, i32>(0), 1000);
    // A lake cursor inside an upstream transaction.
    bob.batch_execute("BEGIN").await.expect("begin");
    bob.batch_execute("DECLARE v CURSOR FOR SELECT * FROM nyc.vendors")
        .await
        .expect("declare");
    let fetched = bob.simple_query("FETCH 1 FROM v").await.expect("fetch");
    assert!(
        fetched
            .iter()
            .any(|m| matches!(m, SimpleQueryMessage::Row(_)))
    );
    bob.batch_execute("COMMIT").await.expect("commit");
    // Errors keep the upstream's SQLSTATE and fields.
    let err = bob
        .query("SELECT nope FROM public.sales", &[])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "42703");
    // Notices are relayed.
    let msgs = bob
        .simple_query("DO $$ BEGIN RAISE NOTICE 'hello from upstream'; END $$")
        .await
        .expect("notice statement");
    assert!(!msgs.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_roles_cannot_send_writes_upstream() {
    let rig = Rig::start(Options::default()).await;
    let alice = rig.alice().await;
    for sql in [
        "INSERT INTO public.sales VALUES (5000, 'north', 1)",
        "DELETE FROM public.sales",
        "CREATE TEMP TABLE t (a int)",
        "WITH d AS (DELETE FROM public.sales RETURNING *) SELECT count(*) FROM d",
        "EXPLAIN (ANALYZE) DELETE FROM public.sales",
        // Text Sluice cannot parse cannot be proven read-only.
        "VACUUM FULL VERBOSE ANALYZE public.sales WITH NONSENSE",
    ] {
        let err = alice.simple_query(sql).await.unwrap_err();
        assert_eq!(sqlstate(&err), "42501", "{sql}: {err}");
        let err = alice.query(sql, &[]).await.unwrap_err();
        assert_eq!(sqlstate(&err), "42501", "{sql} (extended): {err}");
    }
    assert_eq!(
        rig.pg
            .sql("dev", "SELECT count(*) FROM public.sales")
            .expect("count")
            .trim(),
        "1000"
    );
    // Reads still work after the refusals, on the same session.
    assert_eq!(
        scalar(&alice, "SELECT count(*) FROM public.sales").await,
        "1000"
    );
    // Refused statements never reached the upstream.
    let seen = rig
        .pg
        .sql("postgres", "SELECT count(*) FROM pg_stat_activity WHERE query ILIKE '%DELETE FROM%' AND usename = 'IAM:alice'")
        .expect("activity");
    assert_eq!(seen.trim(), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_the_upstream_backend() {
    let rig = Rig::start(Options::default()).await;
    let alice = rig.alice().await;
    let token = alice.cancel_token();
    let started = Instant::now();
    let query = tokio::spawn(async move {
        let r = alice.simple_query("SELECT pg_sleep(60)").await;
        (r.map(|_| ()), alice)
    });
    // Wait until the upstream is running it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while rig
        .pg
        .sql("postgres", "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(60)%' AND state = 'active'")
        .expect("activity")
        .trim()
        != "1"
    {
        assert!(Instant::now() < deadline, "query never reached the upstream");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    token.cancel_query(NoTls).await.expect("cancel sent");
    let (result, alice) = query.await.expect("task");
    let err = result.unwrap_err();
    assert_eq!(sqlstate(&err), "57014", "{err}");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(scalar(&alice, "SELECT 41 + 1").await, "42");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_upstream_fails_only_its_own_session() {
    let rig = Rig::start(Options::default()).await;
    let victim = rig.alice().await;
    let bystander = rig.bob().await;
    assert_eq!(scalar(&bystander, "SELECT current_user").await, "IAM:bob");
    let query = tokio::spawn(async move {
        let r = victim.simple_query("SELECT pg_sleep(60)").await;
        (r.map(|_| ()), victim)
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let killed = rig
            .pg
            .sql("postgres", "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = 'IAM:alice' AND query LIKE 'SELECT pg_sleep%' AND state = 'active'")
            .expect("terminate");
        if killed.trim() == "1" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "query never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (result, victim) = query.await.expect("task");
    let err = result.unwrap_err();
    // PostgreSQL's own FATAL (admin shutdown) reaches the client as an ERROR: the
    // client's session with Sluice survives.
    assert_eq!(sqlstate(&err), "57P01", "{err}");
    assert!(!victim.is_closed());
    // The session heals with a new upstream session; lake queries never stopped.
    assert_eq!(scalar(&victim, "SELECT current_user").await, "IAM:alice");
    assert_ne!(
        scalar(&victim, "SELECT count(*) FROM nyc.vendors").await,
        "0"
    );
    assert_eq!(
        scalar(&bystander, "SELECT count(*) FROM public.sales").await,
        "1000"
    );

    // A whole upstream restart: the next statement gets a connection error, the one
    // after that works again.
    rig.pg.restart().expect("restart");
    let err = bystander.simple_query("SELECT 1").await.unwrap_err();
    assert!(
        ["08006", "57P01"].contains(&sqlstate(&err).as_str()),
        "{err}"
    );
    assert_eq!(
        scalar(&bystander, "SELECT count(*) FROM public.sales").await,
        "1000"
    );

    // Upstream down: a clear 08001, local queries unaffected.
    rig.pg.stop().expect("stop");
    let fresh = rig.alice().await;
    let err = fresh.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&err), "08001", "{err}");
    assert!(error_message(&err).contains("could not connect"), "{err}");
    assert_ne!(
        scalar(&fresh, "SELECT count(*) FROM nyc.vendors").await,
        "0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_limits_queue_clients_and_reuse_sessions_after_a_reset() {
    let rig = Rig::start(Options {
        pool: "max_sessions = 1\nacquire_timeout_secs = 2\n".into(),
        ..Options::default()
    })
    .await;
    let first = rig.bob().await;
    first
        .batch_execute("CREATE TEMP TABLE mine (a int); SET statement_timeout = '123s'")
        .await
        .expect("state");
    let pid = scalar(&first, "SELECT pg_backend_pid()").await;
    // The only upstream session is taken: the next client waits, then gets 53300.
    let second = rig.bob().await;
    let started = Instant::now();
    let err = second
        .simple_query("SELECT 1")
        .await
        .err()
        .unwrap_or_else(|| panic!("not queued: {:?}", futures::executor::block_on(rig.pools())));
    assert_eq!(sqlstate(&err), "53300", "{err}");
    assert!(started.elapsed() >= Duration::from_secs(2));
    // A waiting client gets the session as soon as it is free.
    let waiter = tokio::spawn(async move {
        let pid = scalar(&second, "SELECT pg_backend_pid()").await;
        let temp = scalar(
            &second,
            "SELECT count(*) FROM pg_tables WHERE tablename = 'mine'",
        )
        .await;
        let timeout = scalar(&second, "SHOW statement_timeout").await;
        (pid, temp, timeout)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(first);
    let (reused_pid, temp, timeout) = waiter.await.expect("waiter");
    // The same backend, with nothing left of the first client's state.
    assert_eq!(reused_pid, pid);
    assert_eq!(temp, "0");
    assert_eq!(timeout, "0");
    // Another identity needs its own session: bob's parked one (its client is gone)
    // is closed to make room.
    let alice = rig.alice().await;
    assert_eq!(scalar(&alice, "SELECT current_user").await, "IAM:alice");
    assert_eq!(rig.pool_value("sessions_open").await, "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_discovery_and_mint_failures_are_clear() {
    // No host configured: the endpoint comes from DescribeClusters (moto's
    // made-up address, which does not resolve here).
    let rig = Rig::start(Options {
        host: false,
        ..Options::default()
    })
    .await;
    let described = rig
        .moto
        .redshift()
        .describe_clusters()
        .cluster_identifier(CLUSTER)
        .send()
        .await
        .expect("describe");
    let address = described.clusters()[0]
        .endpoint()
        .and_then(|e| e.address())
        .expect("address")
        .to_owned();
    let alice = rig.alice().await;
    let err = alice.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&err), "08001", "{err}");
    assert!(error_message(&err).contains(&address), "{err}");
    drop(rig);

    // No such cluster: GetClusterCredentials fails with the AWS error code.
    let rig = Rig::start(Options {
        create_cluster: false,
        ..Options::default()
    })
    .await;
    let alice = rig.alice().await;
    let err = alice.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&err), "08001", "{err}");
    let text = error_message(&err);
    assert!(text.contains("ClusterNotFound"), "{text}");
    assert!(!text.contains("testing"), "AWS keys leaked: {text}");
    assert_eq!(rig.pool_value("mint_failures").await, "1");
    // The failed session keeps working for the lake.
    assert!(
        !scalar(&alice, "SELECT count(*) FROM nyc.vendors")
            .await
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_glue_database_mounted_by_a_refresh_routes_to_the_lake_in_open_sessions() {
    let rig = Rig::start(Options {
        extra: "[lake.glue]\nregion = \"us-east-1\"\naws_endpoint = \"{aws}\"\n\
                allow_local_locations = true\n"
            .into(),
        ..Options::default()
    })
    .await;
    let bob = rig.bob().await;
    // Before Glue knows `fresh`, the name is the upstream's (which has no such schema).
    let e = bob
        .simple_query("SELECT * FROM fresh.t")
        .await
        .expect_err("unknown upstream");
    assert!(
        e.as_db_error()
            .is_some_and(|d| d.message().contains("fresh")),
        "{e:?}"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("a.csv"), "1,one\n").expect("csv");
    let glue = rig.moto.glue();
    glue.create_database()
        .database_input(
            aws_sdk_glue::types::DatabaseInput::builder()
                .name("fresh")
                .build()
                .expect("input"),
        )
        .send()
        .await
        .expect("database");
    let column = |n: &str, t: &str| {
        aws_sdk_glue::types::Column::builder()
            .name(n)
            .r#type(t)
            .build()
            .expect("column")
    };
    glue.create_table()
        .database_name("fresh")
        .table_input(
            aws_sdk_glue::types::TableInput::builder()
                .name("t")
                .storage_descriptor(
                    aws_sdk_glue::types::StorageDescriptor::builder()
                        .columns(column("id", "int"))
                        .columns(column("word", "string"))
                        .location(format!("file://{}/", dir.path().display()))
                        .serde_info(
                            aws_sdk_glue::types::SerDeInfo::builder()
                                .serialization_library(
                                    "org.apache.hadoop.hive.serde2.lazy.LazySimpleSerDe",
                                )
                                .parameters("field.delim", ",")
                                .build(),
                        )
                        .build(),
                )
                .build()
                .expect("table"),
        )
        .send()
        .await
        .expect("table");
    bob.simple_query("CALL sluice.refresh_lake('fresh')")
        .await
        .expect("refresh");
    // The same open session now runs it on the lake.
    assert_eq!(scalar(&bob, "SELECT word FROM fresh.t").await, "one");
    assert_ne!(scalar(&bob, "SELECT count(*) FROM nyc.zones").await, "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_credentials_log_in_with_scram_and_psql_works_through() {
    // A second upstream in static mode (SCRAM login, TLS without verification),
    // chosen by connecting to database "etl"; three more whose logins ask for a
    // cleartext or MD5 password over that unverified TLS.
    let static_upstream = |name: &str, user: &str, more: &str| {
        format!(
            "[[redshift]]\nname = \"{name}\"\ndatabase = \"dev\"\nhost = \"127.0.0.1\"\n\
             port = {{pgport}}\ncredentials = \"static\"\nuser = \"{user}\"\n\
             password_env = \"ETL_PASSWORD\"\ntls = \"require\"\n{more}"
        )
    };
    let rig = Rig::start(Options {
        extra: [
            static_upstream("etl", "etl", ""),
            static_upstream("plain", "etl_plain", ""),
            static_upstream("md5", "etl_md5", ""),
            static_upstream("md5ok", "etl_md5", "allow_unverified_password = true\n"),
        ]
        .concat(),
        ..Options::default()
    })
    .await;
    let connect_to = |db: &'static str| async move {
        connect_db(rig.port, db, "bob", "bob-pw")
            .await
            .expect("login")
    };
    // Cleartext and MD5 passwords are not sent to an upstream nobody verified…
    for (db, how) in [("plain", "in cleartext"), ("md5", "as an MD5 hash")] {
        let client = connect_to(db).await;
        let err = client
            .simple_query("SELECT current_user")
            .await
            .expect_err("refused");
        assert_eq!(sqlstate(&err), "08001", "{err:?}");
        let db_err = err.as_db_error().expect("server error");
        assert!(
            db_err.message().contains(how) && db_err.message().contains("not verified"),
            "{}",
            db_err.message()
        );
        assert!(
            db_err
                .hint()
                .is_some_and(|h| h.contains("allow_unverified_password")),
            "{db_err:?}"
        );
        assert!(!db_err.message().contains("etl-secret"));
        // The session stays up for lake queries.
        assert_ne!(scalar(&client, "SELECT count(*) FROM nyc.zones").await, "0");
    }
    // …unless the config says the network is trusted.
    assert_eq!(
        scalar(&connect_to("md5ok").await, "SELECT current_user").await,
        "etl_md5"
    );
    let out = psql_command(rig.port, "etl", "bob")
        .env("PGPASSWORD", "bob-pw")
        .args([
            "-v",
            "ON_ERROR_STOP=1",
            "-At",
            "-c",
            "SELECT current_user",
            "-c",
            "\\dt public.*",
        ])
        .output()
        .await
        .expect("psql runs");
    let text = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(text.starts_with("etl\n"), "{text}");
    assert!(text.contains("public|sales|table|"), "{text}");
    // The default database still goes to the IAM upstream.
    assert_eq!(
        scalar(&rig.bob().await, "SELECT current_user").await,
        "IAM:bob"
    );
    // An unknown database is refused at login.
    let err = connect_db(rig.port, "nope", "bob", "bob-pw")
        .await
        .expect_err("refused");
    assert_eq!(sqlstate(&err), "3D000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_pipelines_copies_and_cursors_through_forwarding() {
    let rig = Rig::start(Options::default()).await;
    let conninfo = format!(
        "host=127.0.0.1 port={} dbname=sluice user=bob password=bob-pw sslmode=require",
        rig.port
    );
    let out = tokio::process::Command::new(python())
        .arg(clients_dir().join("psycopg_forward.py"))
        .arg(&conninfo)
        .output()
        .await
        .expect("python runs");
    let stdout = stdout(&out);
    assert!(out.status.success(), "{stdout}\n{}", stderr(&out));
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("OK ")).count(),
        11,
        "{stdout}"
    );
}
