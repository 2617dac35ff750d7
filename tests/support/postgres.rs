//! A real PostgreSQL 15 server (Debian's packages) in a temporary directory, with TLS
//! from a throwaway CA: the stand-in for Redshift in tests and benchmarks.
//! Shared by `tests/it` and `benches/` through `#[path]`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Result<T> = std::result::Result<T, BoxError>;

pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?}: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn is_root() -> bool {
    run(Command::new("id").arg("-u"))
        .map(|s| s.trim() == "0")
        .unwrap_or(false)
}

/// A command run as the `postgres` user when we are root (initdb refuses root).
fn as_pg(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

pub fn pg_bin(name: &str) -> Result<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin"))
        .collect();
    dirs.sort();
    dirs.into_iter()
        .rev()
        .map(|d| d.join(name))
        .find(|p| p.exists())
        .ok_or_else(|| {
            format!("{name} not found under /usr/lib/postgresql (run tests/setup.sh)").into()
        })
}

pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The superuser every server gets (password = name).
pub const ADMIN: &str = "admin";

pub struct Postgres {
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// The CA that signed the server certificate (for verify-full clients).
    pub ca: PathBuf,
}

impl Postgres {
    /// Starts a server: TLS on, `hba` as its pg_hba.conf (local connections as the
    /// superuser are always trusted, for set-up).
    pub fn start(hba: &str) -> Result<Postgres> {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        std::fs::write(dir.path().join("pw"), format!("{ADMIN}\n"))?;
        if is_root() {
            run(Command::new("chown")
                .args(["-R", "postgres"])
                .arg(dir.path()))?;
        }
        run(as_pg(&pg_bin("initdb")?)
            .arg("-D")
            .arg(&data)
            .args(["-U", ADMIN, "-A", "scram-sha-256", "--no-sync", "--pwfile"])
            .arg(dir.path().join("pw")))?;
        let certs = make_certs(dir.path())?;
        std::fs::copy(&certs.cert, data.join("server.crt"))?;
        std::fs::copy(&certs.key, data.join("server.key"))?;
        let ca = certs.ca;
        let port = free_port()?;
        let conf = format!(
            "\nssl = on\nport = {port}\nlisten_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{}'\nmax_connections = 200\nfsync = off\n\
             synchronous_commit = off\nfull_page_writes = off\n",
            dir.path().display()
        );
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))?;
        std::io::Write::write_all(&mut f, conf.as_bytes())?;
        std::fs::write(
            data.join("pg_hba.conf"),
            format!("local all {ADMIN} trust\n{hba}\n"),
        )?;
        if is_root() {
            run(Command::new("chown")
                .args(["-R", "postgres"])
                .arg(dir.path()))?;
            run(Command::new("chmod")
                .arg("600")
                .arg(data.join("server.key")))?;
        }
        let pg = Postgres { dir, port, ca };
        pg.pg_ctl("start")?;
        Ok(pg)
    }

    fn pg_ctl(&self, action: &str) -> Result<String> {
        run(as_pg(&pg_bin("pg_ctl")?)
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-l")
            .arg(self.dir.path().join("log"))
            .args(["-w", "-m", "fast", action]))
    }

    pub fn stop(&self) -> Result<()> {
        self.pg_ctl("stop").map(|_| ())
    }

    pub fn restart(&self) -> Result<()> {
        self.pg_ctl("restart").map(|_| ())
    }

    /// Runs SQL as the superuser over the Unix socket; returns unaligned output.
    pub fn sql(&self, database: &str, sql: &str) -> Result<String> {
        run(Command::new("psql")
            .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1"])
            .arg("-h")
            .arg(self.dir.path())
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                ADMIN,
                "-d",
                database,
                "-c",
                sql,
            ]))
    }

    /// The server log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Ok(pg_ctl) = pg_bin("pg_ctl") {
            let _ = as_pg(&pg_ctl)
                .arg("-D")
                .arg(self.dir.path().join("data"))
                .args(["-m", "immediate", "stop"])
                .output();
        }
    }
}

/// PEM files made by [`make_certs`].
pub struct Certs {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A CA and a server certificate for localhost / 127.0.0.1 signed by it, made with
/// the openssl CLI in `dir` (libpq's verify-full rejects some rcgen-made CAs).
pub fn make_certs(dir: &Path) -> Result<Certs> {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    run(Command::new("openssl")
        .current_dir(dir)
        .args(["req", "-x509"])
        .args(ec)
        .args([
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=Sluice test CA",
        ]))?;
    run(Command::new("openssl")
        .current_dir(dir)
        .arg("req")
        .args(ec)
        .args([
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ]))?;
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )?;
    run(Command::new("openssl").current_dir(dir).args([
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]))?;
    Ok(Certs {
        ca: dir.join("ca.crt"),
        cert: dir.join("server.crt"),
        key: dir.join("server.key"),
    })
}
