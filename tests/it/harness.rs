//! Starts real Sluice gateways on loopback for the tests, and finds the real clients
//! (psql, python3 + psycopg, java + pgjdbc) that talk to them.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

use sluice::config::Config;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

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

pub struct Gateway {
    pub port: u16,
    /// Holds the config file for the gateway's lifetime.
    _dir: tempfile::TempDir,
    task: JoinHandle<()>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The `[server.tls]` section most tests use: generated certificate, plaintext on loopback.
pub const LOOPBACK_PLAINTEXT: &str = "[server.tls]\nallow_plaintext = \"loopback\"\n";

impl Gateway {
    pub async fn start() -> Gateway {
        Gateway::start_with(LOOPBACK_PLAINTEXT, "").await
    }

    /// Starts a gateway with the given `[server.tls]` section and extra TOML.
    pub async fn start_with(tls: &str, extra: &str) -> Gateway {
        Gateway::start_full("", tls, extra).await
    }

    /// Like `start_with`, plus extra lines for the `[server]` table.
    pub async fn start_full(server_lines: &str, tls: &str, extra: &str) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let toml = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{extra_server}\n{tls}\n\
             [[auth.users]]\nname = \"{USER}\"\npassword = \"{PASSWORD}\"\nroles = [\"analyst\"]\n\n\
             [[auth.users]]\nname = \"svc\"\nscram = \"{svc}\"\n\n\
             [[roles]]\nname = \"analyst\"\nread = [\"*\"]\n\n\
             [lake.local]\nroot = \"{root}\"\ndemo_data = true\n{extra}",
            extra_server = server_lines,
            root = demo_dir().display(),
            svc = sluice::auth::scram::Verifier::from_password("svc-secret").to_stored(),
        );
        let path = dir.path().join("sluice.toml");
        std::fs::write(&path, &toml).expect("write config");
        let config =
            Config::load(&path).unwrap_or_else(|e| panic!("test config invalid: {e}\n{toml}"));
        let server = sluice::server::Server::bind(config)
            .await
            .expect("gateway starts");
        let port = server.local_addr().expect("local addr").port();
        let task = tokio::spawn(server.run());
        Gateway {
            port,
            _dir: dir,
            task,
        }
    }

    /// The gateway's config file (tests rewrite it to exercise reloads).
    pub fn config_path(&self) -> PathBuf {
        self._dir.path().join("sluice.toml")
    }

    pub fn url(&self, sslmode: &str) -> String {
        format!(
            "host=127.0.0.1 port={} dbname=sluice user={USER} password={PASSWORD} sslmode={sslmode}",
            self.port
        )
    }

    /// A tokio-postgres client over plaintext loopback.
    pub async fn connect(&self) -> Client {
        let (client, conn) = tokio_postgres::connect(&self.url("disable"), NoTls)
            .await
            .expect("connect");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
    }

    /// Runs psql with `args`, connected over TLS.
    pub async fn psql(&self, args: &[&str]) -> Output {
        let url = self.url("require");
        let mut cmd = tokio::process::Command::new("psql");
        cmd.arg(url)
            .args(["-X", "-v", "ON_ERROR_STOP=1"])
            .args(args);
        cmd.env("PGCONNECT_TIMEOUT", "10");
        cmd.output().await.expect("psql runs")
    }
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

/// A `[server.tls]` section serving `certs` and refusing plaintext, so every client
/// that gets in has negotiated TLS.
pub fn tls_only(certs: &crate::postgres::Certs) -> String {
    format!(
        "[server.tls]\ncert = \"{}\"\nkey = \"{}\"\nallow_plaintext = \"never\"\n",
        certs.cert.display(),
        certs.key.display()
    )
}

/// How a client program ended: success, and its stdout and stderr together.
pub struct ClientRun {
    pub ok: bool,
    pub text: String,
}

/// Runs a client program, killing it after `limit`: a client stuck waiting on the
/// server then fails its test with everything it printed so far, instead of
/// hanging the suite. Output goes through a file so nothing is lost on the kill.
pub async fn run_client(
    cmd: &mut tokio::process::Command,
    limit: std::time::Duration,
) -> ClientRun {
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

/// The value of the `RESULT <name> <json>` line a client program printed.
pub fn result_line(text: &str, name: &str) -> serde_json::Value {
    let prefix = format!("RESULT {name} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|j| serde_json::from_str(j).ok())
        .unwrap_or_else(|| panic!("no `RESULT {name}` line in:\n{text}"))
}

/// Error code of a tokio-postgres error, for assertions.
pub fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| format!("no sqlstate: {e}"))
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
    tokio::process::Command::new("java")
        .args(["-cp", &cp, "DbMetaWalk", &url, user, password])
        .output()
        .await
        .expect("java runs")
}

/// A tokio-postgres client for `user` over plaintext loopback to a gateway on `port`.
pub async fn connect_plain(
    port: u16,
    user: &str,
    password: &str,
) -> Result<Client, tokio_postgres::Error> {
    let url = format!(
        "host=127.0.0.1 port={port} dbname=sluice user={user} password={password} sslmode=disable"
    );
    let (client, conn) = tokio_postgres::connect(&url, NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Runs the real `sluice serve` binary on `config` (which listens on `port`) with AWS
/// credentials in its environment, as the standard chain finds them in production,
/// and waits until it listens. `SLUICE_TEST_LOG=debug` shows its log.
pub async fn spawn_sluice(
    config: &Path,
    port: u16,
    extra_env: &[(&str, &str)],
) -> tokio::process::Child {
    let sluice = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--config"])
        .arg(config)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .envs(extra_env.iter().copied())
        .env(
            "RUST_LOG",
            std::env::var("SLUICE_TEST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(std::process::Stdio::inherit())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("sluice starts");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        let toml = std::fs::read_to_string(config).unwrap_or_default();
        assert!(
            std::time::Instant::now() < deadline,
            "sluice did not listen:\n{toml}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    sluice
}

/// All rows of a simple query, as text (NULL as "NULL").
pub async fn rows(c: &Client, sql: &str) -> Vec<Vec<String>> {
    let msgs = c
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
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
