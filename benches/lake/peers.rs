//! The sides of the comparison: Sluice gateways (in-process, or a `sluice` binary
//! given with `--gateway-bin`) with a connected client, and DataFusion contexts over
//! the same files (local disk or moto's S3).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::catalog::MemorySchemaProvider;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::ListingOptions;
use datafusion::prelude::{SessionConfig, SessionContext};
use sluice::config::Config;
use sluice::server::Server;
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, NoTls};

use super::Result;
use crate::moto::Moto;
use crate::nyc_lake::BUCKET;

/// A gateway serving on a loopback port, with one connected client.
pub struct Gateway {
    pub client: Client,
    /// The in-process server's task, when it runs here.
    task: Option<tokio::task::JoinHandle<()>>,
    /// The `sluice serve` process (`--gateway-bin`), killed when dropped.
    _process: Option<GatewayProcess>,
}

/// A `sluice serve` child and its config file's directory.
struct GatewayProcess {
    _child: tokio::process::Child,
    _config: tempfile::TempDir,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// `--gateway-bin`: gateways run as this binary (e.g. one built with another
/// profile) instead of in this process.
static GATEWAY_BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

pub fn use_gateway_binary(path: PathBuf) {
    println!("sluice gateways: {} serve", path.display());
    let _ = GATEWAY_BIN.set(path);
}

/// Starts `bin serve` on `toml` (its `listen` port 0 replaced by a free port) and
/// waits until it accepts connections.
async fn spawn_gateway(bin: &Path, toml: &str) -> Result<(GatewayProcess, std::net::SocketAddr)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let toml = toml.replace(
        "listen = \"127.0.0.1:0\"\n\n[server.tls]",
        &format!("listen = \"127.0.0.1:{port}\"\n\n[server.tls]"),
    );
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, toml)?;
    let child = tokio::process::Command::new(bin)
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "warn")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if std::time::Instant::now() > deadline {
            return Err(format!("{} did not listen on {addr}", bin.display()).into());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let process = GatewayProcess {
        _child: child,
        _config: dir,
    };
    Ok((process, addr))
}

impl Gateway {
    pub async fn start(lake: &str) -> Result<Gateway> {
        let toml = format!(
            r#"
[server]
listen = "127.0.0.1:0"

[server.tls]
allow_plaintext = "loopback"

[[auth.users]]
name = "bench"
password = "bench"
roles = ["reader"]

[[roles]]
name = "reader"
read = ["*"]

[engine]
user_settable = ["datafusion.*"]

{lake}
"#
        );
        let config = Config::parse(&toml, Path::new("bench.toml"), PathBuf::from("."))?;
        let database = config.server.database.clone();
        let (task, process, addr) = match GATEWAY_BIN.get() {
            Some(bin) => {
                let (process, addr) = spawn_gateway(bin, &toml).await?;
                (None, Some(process), addr)
            }
            None => {
                let server = Server::bind(config).await?;
                let addr = server.local_addr()?;
                (Some(tokio::spawn(server.run())), None, addr)
            }
        };
        let (client, connection) = tokio_postgres::Config::new()
            .host(addr.ip().to_string())
            .port(addr.port())
            .user("bench")
            .password("bench")
            .dbname(&database)
            .ssl_mode(SslMode::Disable)
            .connect(NoTls)
            .await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                eprintln!("sluice connection error: {e}");
            }
        });
        for (name, value) in SETTINGS.get().into_iter().flatten() {
            client
                .batch_execute(&format!("SET {name} = '{value}'"))
                .await?;
        }
        Ok(Gateway {
            client,
            task,
            _process: process,
        })
    }
}

/// `--set` options, applied to every gateway session the bench opens.
static SETTINGS: std::sync::OnceLock<Vec<(String, String)>> = std::sync::OnceLock::new();

pub fn set_session_options(settings: Vec<(String, String)>) {
    for (name, value) in &settings {
        println!("sluice sessions: SET {name} = '{value}'");
    }
    let _ = SETTINGS.set(settings);
}

/// The local directory catalog over `root` (the generated data is already there).
pub fn lake_local(root: &Path, query_groups: bool) -> String {
    format!(
        "[lake.local]\nroot = {}\n[query_groups]\nenabled = {query_groups}\n",
        toml::Value::String(root.display().to_string())
    )
}

/// The local lake with query groups, the audit file and the admin listener on.
pub fn observed(root: &Path, audit_dir: &Path) -> String {
    format!(
        "{}[admin]\nlisten = \"127.0.0.1:0\"\n[audit]\n[audit.file]\npath = {}\n",
        lake_local(root, true),
        toml::Value::String(audit_dir.join("audit.jsonl").display().to_string())
    )
}

/// A Glue lake (moto) exposing `databases`, its S3 at moto too.
pub fn lake_glue(moto: &Moto, databases: &[&str]) -> String {
    format!(
        "[lake.glue]\nregion = \"us-east-1\"\naws_endpoint = \"{e}\"\ndatabases = {databases:?}\nallow_local_locations = true\n\
         [lake.glue.s3]\nendpoint = \"{e}\"\npath_style = true\n",
        e = moto.endpoint()
    )
}

/// Stock DataFusion (defaults) with `nyc.trips` as a Parquet `ListingTable` at `url`.
async fn datafusion_context(ctx: SessionContext, url: String) -> Result<SessionContext> {
    ctx.catalog("datafusion")
        .ok_or("DataFusion has no default catalog")?
        .register_schema("nyc", Arc::new(MemorySchemaProvider::new()))?;
    let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
        .with_file_extension(".parquet")
        .with_table_partition_cols(vec![("month".to_owned(), DataType::Utf8)]);
    ctx.register_listing_table("nyc.trips", url, options, None, None)
        .await?;
    Ok(ctx)
}

/// DataFusion over the files on local disk.
pub async fn datafusion_local(root: &Path) -> Result<SessionContext> {
    let url = format!("{}/", root.join("nyc").join("trips").display());
    datafusion_context(SessionContext::new_with_config(SessionConfig::new()), url).await
}

/// DataFusion over the uploaded copy in moto's S3.
pub async fn datafusion_s3(moto: &Moto) -> Result<SessionContext> {
    let ctx = SessionContext::new_with_config(SessionConfig::new());
    let url = url::Url::parse(&format!("s3://{BUCKET}"))?;
    ctx.register_object_store(&url, moto.store(BUCKET)?);
    datafusion_context(ctx, format!("s3://{BUCKET}/nyc/trips/")).await
}
