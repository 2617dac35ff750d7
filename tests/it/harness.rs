//! Starts real Sluice gateways on loopback for the tests, and finds the real clients
//! (psql, python3 + psycopg, java + pgjdbc) that talk to them.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use sluice::config::Config;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio_postgres::config::SslMode;
use tokio_postgres::{AsyncMessage, Client, NoTls, SimpleQueryMessage};

pub const USER: &str = "demo";
pub const PASSWORD: &str = "demo";

/// The demo lake, generated once per test run and shared (read-only) by every test.
pub fn demo_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("demo-data");
        sluice::lake::demo::ensure(&dir).expect("generate demo data");
        dir
    })
    .clone()
}

/// The `[server.tls]` section most tests use: generated certificate, plaintext on loopback.
pub const LOOPBACK_PLAINTEXT: &str = "[server.tls]\nallow_plaintext = \"loopback\"\n";

/// A `[server.tls]` section serving `cert` and `key`, with `allow_plaintext` as given
/// (`"never"`, `"loopback"`).
pub fn tls_files(cert: &Path, key: &Path, allow_plaintext: &str) -> String {
    format!(
        "[server.tls]\ncert = \"{}\"\nkey = \"{}\"\nallow_plaintext = \"{allow_plaintext}\"\n",
        cert.display(),
        key.display()
    )
}

/// A `[server.tls]` section serving `certs` and refusing plaintext, so every client
/// that gets in has negotiated TLS.
pub fn tls_only(certs: &crate::postgres::Certs) -> String {
    tls_files(&certs.cert, &certs.key, "never")
}

/// A throwaway CA and a server certificate for localhost / 127.0.0.1 signed by it,
/// in a temporary directory that must outlive their use.
pub fn temp_certs() -> (tempfile::TempDir, crate::postgres::Certs) {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = crate::postgres::make_certs(dir.path()).expect("openssl makes certificates");
    (dir, certs)
}

/// A gateway's `sluice.toml`, built from the parts tests vary. In order: `[server]`
/// (listening on 127.0.0.1:`port`, plus `server` keys), the `[server.tls]` section,
/// the users and roles (`auth`), the lake, and `extra` TOML.
#[derive(Clone)]
pub struct GatewayConfig {
    port: u16,
    server: String,
    tls: String,
    auth: String,
    lake: String,
    extra: String,
}

impl GatewayConfig {
    /// The gateway most tests use: any free port, `LOOPBACK_PLAINTEXT`, the local
    /// users `demo` (password `demo`, role `analyst`) and `svc` (a stored SCRAM
    /// verifier for `svc-secret`, no role), `analyst` reading everything, and the
    /// demo lake.
    pub fn demo() -> GatewayConfig {
        GatewayConfig {
            auth: format!(
                "[[auth.users]]\nname = \"{USER}\"\npassword = \"{PASSWORD}\"\nroles = [\"analyst\"]\n\n\
                 [[auth.users]]\nname = \"svc\"\nscram = \"{svc}\"\n\n\
                 [[roles]]\nname = \"analyst\"\nread = [\"*\"]\n\n",
                svc = sluice::auth::scram::Verifier::from_password("svc-secret").to_stored(),
            ),
            lake: format!(
                "[lake.local]\nroot = \"{}\"\ndemo_data = true\n",
                demo_dir().display()
            ),
            ..GatewayConfig::bare()
        }
    }

    /// Only `[server]` (any free port) and `LOOPBACK_PLAINTEXT`: no users, roles or lake.
    pub fn bare() -> GatewayConfig {
        GatewayConfig {
            port: 0,
            server: String::new(),
            tls: LOOPBACK_PLAINTEXT.to_owned(),
            auth: String::new(),
            lake: String::new(),
            extra: String::new(),
        }
    }

    /// Listens on `port` (0: any free one).
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// More keys for the `[server]` table.
    pub fn server(mut self, lines: &str) -> Self {
        self.server = lines.to_owned();
        self
    }

    /// The `[server.tls]` section ("" for none).
    pub fn tls(mut self, section: &str) -> Self {
        self.tls = section.to_owned();
        self
    }

    /// Users and roles in place of the demo ones.
    pub fn auth(mut self, toml: &str) -> Self {
        self.auth = toml.to_owned();
        self
    }

    /// The lake section(s) in place of the demo lake.
    pub fn lake(mut self, toml: &str) -> Self {
        self.lake = toml.to_owned();
        self
    }

    /// Appends TOML at the end.
    pub fn extra(mut self, toml: &str) -> Self {
        self.extra.push_str(toml);
        self
    }

    /// The config file's text.
    pub fn toml(&self) -> String {
        let GatewayConfig {
            port,
            server,
            tls,
            auth,
            lake,
            extra,
        } = self;
        format!("[server]\nlisten = \"127.0.0.1:{port}\"\n{server}\n{tls}\n{auth}{lake}{extra}")
    }

    /// Writes the config to `dir/sluice.toml` and returns that path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        let path = dir.join("sluice.toml");
        std::fs::write(&path, self.toml()).expect("write config");
        path
    }

    /// Binds a gateway in this process and serves it on a task; `Err` is the reason
    /// the server would not start (a config that does not load panics).
    pub async fn try_start(&self) -> Result<Gateway, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = self.write(dir.path());
        let config = Config::load(&path)
            .unwrap_or_else(|e| panic!("test config invalid: {e}\n{}", self.toml()));
        let server = sluice::server::Server::bind(config).await?;
        let port = server.local_addr().expect("local addr").port();
        let admin = server.admin_addr().map(|a| a.port());
        let task = tokio::spawn(server.run());
        Ok(Gateway {
            port,
            admin,
            dir,
            task,
        })
    }

    /// `try_start`, which must succeed.
    pub async fn start(&self) -> Gateway {
        self.try_start().await.expect("gateway starts")
    }
}

pub struct Gateway {
    pub port: u16,
    /// The admin HTTP listener's port, when `[admin] listen` is set.
    #[allow(dead_code)]
    pub admin: Option<u16>,
    /// Holds the config file for the gateway's lifetime.
    dir: tempfile::TempDir,
    task: JoinHandle<()>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Gateway {
    /// `GatewayConfig::demo()`, started.
    pub async fn start() -> Gateway {
        GatewayConfig::demo().start().await
    }

    /// The gateway's config file (tests rewrite it to exercise reloads).
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("sluice.toml")
    }

    pub fn url(&self, sslmode: &str) -> String {
        format!(
            "host=127.0.0.1 port={} dbname=sluice user={USER} password={PASSWORD} sslmode={sslmode}",
            self.port
        )
    }

    /// A tokio-postgres client for the demo user over plaintext loopback.
    pub async fn try_connect(&self) -> Result<Client, tokio_postgres::Error> {
        connect_plain(self.port, USER, PASSWORD).await
    }

    /// A tokio-postgres client over plaintext loopback.
    pub async fn connect(&self) -> Client {
        self.try_connect().await.expect("connect")
    }

    /// Runs psql with `args` as the demo user, connected over TLS.
    pub async fn psql(&self, args: &[&str]) -> Output {
        psql_command(self.port, "sluice", USER)
            .env("PGPASSWORD", PASSWORD)
            .args(["-v", "ON_ERROR_STOP=1"])
            .args(args)
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .await
            .expect("psql runs")
    }
}

/// A plain HTTP/1.1 GET on loopback (the admin listener): status and body.
/// `basic`: HTTP Basic credentials.
pub async fn http_get(port: u16, path: &str, basic: Option<(&str, &str)>) -> (u16, String) {
    use base64::Engine as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("admin listener accepts");
    let auth = basic
        .map(|(u, p)| {
            let token = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
            format!("Authorization: Basic {token}\r\n")
        })
        .unwrap_or_default();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.expect("request sent");
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut response))
        .await
        .expect("admin listener answers in time")
        .expect("response read");
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The value of one sample line of a Prometheus text exposition (`name{labels}`
/// exactly as rendered), or 0 when absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// `psql -X` on database `db` of the gateway at `port`, as `user`, over TLS
/// (`sslmode=require`); the caller passes the password (PGPASSWORD, PGPASSFILE).
pub fn psql_command(port: u16, db: &str, user: &str) -> Command {
    let mut cmd = Command::new("psql");
    cmd.arg(format!(
        "host=127.0.0.1 port={port} dbname={db} user={user} sslmode=require"
    ))
    .arg("-X");
    cmd
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The clients directory holding the Python and Java test programs.
pub fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("clients")
}

/// The Python interpreter the client programs run under (`PYTHON` overrides).
pub fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}

/// How a client program ended: success, and its stdout and stderr together.
pub struct ClientRun {
    pub ok: bool,
    pub text: String,
}

/// Runs a client program, killing it after `limit`: a client stuck waiting on the
/// server then fails its test with everything it printed so far, instead of
/// hanging the suite. Output goes through a file so nothing is lost on the kill.
pub async fn run_client(cmd: &mut Command, limit: Duration) -> ClientRun {
    use std::io::{Read, Seek};
    let mut out = tempfile::tempfile().expect("output file");
    let mut child = cmd
        .stdout(out.try_clone().expect("dup"))
        .stderr(out.try_clone().expect("dup"))
        .env("PYTHONUNBUFFERED", "1")
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?} does not start ({e}): run tests/setup.sh"));
    let (ok, killed) = match tokio::time::timeout(limit, child.wait()).await {
        Ok(status) => (status.expect("wait").success(), false),
        Err(_) => {
            let _ = child.kill().await;
            (false, true)
        }
    };
    let mut bytes = Vec::new();
    out.rewind().expect("rewind");
    out.read_to_end(&mut bytes).expect("client output");
    let mut text = String::from_utf8_lossy(&bytes).into_owned();
    if killed {
        text.push_str(&format!("\n[killed: still running after {limit:?}]"));
    }
    ClientRun { ok, text }
}

/// The JSON after `prefix` on the first line of a client program's output that
/// starts with it.
pub fn json_line(text: &str, prefix: &str) -> serde_json::Value {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|j| serde_json::from_str(j).ok())
        .unwrap_or_else(|| panic!("no `{prefix}` line in:\n{text}"))
}

/// The value of the `RESULT <name> <json>` line a client program printed.
pub fn result_line(text: &str, name: &str) -> serde_json::Value {
    json_line(text, &format!("RESULT {name} "))
}

/// Error code of a tokio-postgres error, for assertions.
pub fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| format!("no sqlstate: {e}"))
}

/// The server's message of a database error (tokio-postgres' Display says "db error").
pub fn error_message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_else(|| e.to_string())
}

/// Compiles `tests/clients/DbMetaWalk.java` against Debian's pgjdbc and runs it as
/// `user` against the gateway (TLS), returning its output.
pub async fn db_meta_walk(gw: &Gateway, user: &str, password: &str) -> Output {
    let jar = PathBuf::from(
        std::env::var("PGJDBC_JAR").unwrap_or_else(|_| "/usr/share/java/postgresql.jar".into()),
    );
    assert!(
        jar.exists(),
        "{} missing: run tests/setup.sh",
        jar.display()
    );
    let classes = tempfile::tempdir().expect("tempdir");
    let out = Command::new("javac")
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
    Command::new("java")
        .args(["-cp", &cp, "DbMetaWalk", &url, user, password])
        .output()
        .await
        .expect("java runs")
}

/// A tokio-postgres client for `user` on database `db` over plaintext loopback to a
/// gateway on `port`; built field by field so odd user names and an empty password
/// reach the gateway as they are.
pub async fn connect_db(
    port: u16,
    db: &str,
    user: &str,
    password: &str,
) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .dbname(db)
        .user(user)
        .password(password)
        .ssl_mode(SslMode::Disable)
        .connect(NoTls)
        .await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// A tokio-postgres client for `user` on database `sluice` (see `connect_db`).
pub async fn connect_plain(
    port: u16,
    user: &str,
    password: &str,
) -> Result<Client, tokio_postgres::Error> {
    connect_db(port, "sluice", user, password).await
}

/// The real `sluice` binary with `args`, killed if dropped while it runs.
pub fn sluice_command<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.args(args).kill_on_drop(true);
    cmd
}

/// Runs `cmd` (a `sluice_command`) to its end with no stdin and its output
/// captured; one still running after a minute fails the test.
pub async fn run_sluice(cmd: &mut Command) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sluice runs");
    tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{cmd:?} kept running"))
        .expect("sluice output")
}

/// Runs `sluice serve --config <config>`, set up further by `setup` (environment,
/// where its output goes), and waits until it listens on `port` (the config's).
pub async fn serve(config: &Path, port: u16, setup: impl FnOnce(&mut Command)) -> Child {
    let mut cmd = sluice_command(["serve", "--config"]);
    cmd.arg(config);
    setup(&mut cmd);
    let sluice = cmd.spawn().expect("sluice starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        let toml = std::fs::read_to_string(config).unwrap_or_default();
        assert!(Instant::now() < deadline, "sluice did not listen:\n{toml}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sluice
}

/// `serve` with AWS credentials in its environment, as the standard chain finds them
/// in production, and `extra_env`; its log on the test's output at the level
/// `SLUICE_TEST_LOG` names (default warn).
pub async fn spawn_sluice(config: &Path, port: u16, extra_env: &[(&str, &str)]) -> Child {
    serve(config, port, |cmd| {
        cmd.env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .envs(extra_env.iter().copied())
            .env(
                "RUST_LOG",
                std::env::var("SLUICE_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit());
    })
    .await
}

/// The messages of a simple query that must succeed.
async fn simple(c: &Client, sql: &str) -> Vec<SimpleQueryMessage> {
    c.simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
}

/// The rows among simple-query messages, as text (NULL as "NULL").
pub fn rows_of(msgs: &[SimpleQueryMessage]) -> Vec<Vec<String>> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("NULL").to_owned())
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// All rows of a simple query, as text (NULL as "NULL").
pub async fn rows(c: &Client, sql: &str) -> Vec<Vec<String>> {
    rows_of(&simple(c, sql).await)
}

/// The first value of a simple query's first row, as text (NULL as "").
pub async fn scalar(c: &Client, sql: &str) -> String {
    simple(c, sql)
        .await
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("").to_owned()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql}: no row"))
}

/// The first column of every row of `sql`, over the extended protocol.
pub async fn column(c: &Client, sql: &str) -> Vec<String> {
    c.query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// `SELECT count(*) FROM <table>`, over the extended protocol.
pub async fn count(c: &Client, table: &str) -> Result<i64, tokio_postgres::Error> {
    Ok(c.query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await?
        .get(0))
}

/// `SHOW sluice.identity`: user, method, issuer, subject, group count, groups, roles.
pub async fn identity(c: &Client) -> Vec<String> {
    rows(c, "SHOW sluice.identity").await.remove(0)
}

/// A plaintext loopback client with an `application_name`, and the NOTICEs it gets.
pub async fn connect_app_noticed(
    port: u16,
    user: &str,
    password: &str,
    app: &str,
) -> (Client, Arc<Mutex<Vec<String>>>) {
    let (client, mut conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .dbname("sluice")
        .user(user)
        .password(password)
        .application_name(app)
        .connect(NoTls)
        .await
        .expect("connect");
    let notices = Arc::new(Mutex::new(Vec::new()));
    let sink = notices.clone();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notice(n) = message {
                sink.lock().expect("notices").push(n.message().to_owned());
            }
        }
    });
    (client, notices)
}
