//! A real OpenLDAP `slapd` (Debian's package) in a temporary directory: the directory
//! `[auth.ldap]` logins are checked against in tests. Plain LDAP (StartTLS offered)
//! on one loopback port, LDAPS on another (see `directory_port`), both with a certificate from the
//! test CA of `postgres::make_certs`. Configured from a generated `slapd.conf`
//! (`-f`), never the system's cn=config; entries are loaded offline with `slapadd`.
//! Uses the `postgres` support module's helpers, so include that one too.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::postgres::{Result, make_certs, run};

pub const SUFFIX: &str = "dc=example,dc=com";
/// The service account a search-then-bind configuration binds as.
pub const SERVICE_DN: &str = "cn=sluice,ou=services,dc=example,dc=com";
pub const SERVICE_PASSWORD: &str = "svc-Ldap-5521";
pub const PEOPLE: &str = "ou=people,dc=example,dc=com";
pub const GROUPS: &str = "ou=groups,dc=example,dc=com";

pub fn user_dn(uid: &str) -> String {
    format!("uid={uid},{PEOPLE}")
}

pub fn group_dn(cn: &str) -> String {
    format!("cn={cn},{GROUPS}")
}

/// A port for a directory, from a range below the kernel's ephemeral ports (Linux:
/// 32768–60999), each handed out once per process. A directory stopped and
/// restarted on its ports (the outage tests) can then never find one taken by a
/// peer another test started on a `free_port()` meanwhile — which once made a
/// "frozen" directory's port answer from another test's live slapd.
fn directory_port() -> Result<u16> {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 1_000) as u16 * 10;
    for _ in 0..2_000 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = base + n % 2_500;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err("no free port below the ephemeral range for slapd".into())
}

/// An OpenLDAP tool; they live in /usr/sbin, which is not on every PATH.
fn sbin(name: &str) -> Result<PathBuf> {
    let path = Path::new("/usr/sbin").join(name);
    if path.exists() {
        Ok(path)
    } else {
        Err(format!("{} not found (run tests/setup.sh)", path.display()).into())
    }
}

fn ssha(password: &str) -> Result<String> {
    let out = run(Command::new(sbin("slappasswd")?).args(["-h", "{SSHA}", "-s", password]))?;
    Ok(out.trim().to_owned())
}

pub struct Slapd {
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// `ldap://127.0.0.1:port` (StartTLS available).
    pub port: u16,
    /// `ldaps://127.0.0.1:tls_port`.
    pub tls_port: u16,
    /// The CA that signed the directory's certificate (`ca_file`).
    pub ca: PathBuf,
}

impl Slapd {
    /// Starts a directory holding `users` (uid, password) under `ou=people`, the
    /// service account, and `groups` (cn, member uids) as groupOfNames under
    /// `ou=groups`.
    pub fn start(users: &[(&str, &str)], groups: &[(&str, &[&str])]) -> Result<Slapd> {
        let dir = tempfile::tempdir()?;
        let certs = make_certs(dir.path())?;
        let d = dir.path().display();
        // Passwords readable by nobody (binds only), everything else by everyone, as a
        // typical directory is set up; mdb as Debian's default database.
        let conf = format!(
            "include /etc/ldap/schema/core.schema\n\
             include /etc/ldap/schema/cosine.schema\n\
             include /etc/ldap/schema/inetorgperson.schema\n\
             pidfile {d}/slapd.pid\nargsfile {d}/slapd.args\n\
             modulepath /usr/lib/ldap\nmoduleload back_mdb\n\
             TLSCACertificateFile {ca}\nTLSCertificateFile {cert}\nTLSCertificateKeyFile {key}\n\
             database mdb\nsuffix \"{SUFFIX}\"\nrootdn \"cn=admin,{SUFFIX}\"\n\
             directory {d}/db\nmaxsize 16777216\n\
             access to attrs=userPassword by anonymous auth by * none\n\
             access to * by * read\n",
            ca = certs.ca.display(),
            cert = certs.cert.display(),
            key = certs.key.display(),
        );
        std::fs::create_dir(dir.path().join("db"))?;
        std::fs::write(dir.path().join("slapd.conf"), conf)?;

        let mut ldif = format!(
            "dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n\n"
        );
        for ou in ["people", "groups", "services"] {
            ldif += &format!("dn: ou={ou},{SUFFIX}\nobjectClass: organizationalUnit\nou: {ou}\n\n");
        }
        ldif += &format!(
            "dn: {SERVICE_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\n\
             cn: sluice\nuserPassword: {}\n\n",
            ssha(SERVICE_PASSWORD)?
        );
        for (uid, password) in users {
            ldif += &format!(
                "dn: {}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\nsn: {uid}\nuserPassword: {}\n\n",
                user_dn(uid),
                ssha(password)?
            );
        }
        for (cn, members) in groups {
            ldif += &format!(
                "dn: {}\nobjectClass: groupOfNames\ncn: {cn}\n",
                group_dn(cn)
            );
            for m in members.iter() {
                ldif += &format!("member: {}\n", user_dn(m));
            }
            ldif += "\n";
        }
        std::fs::write(dir.path().join("data.ldif"), ldif)?;
        run(Command::new(sbin("slapadd")?)
            .arg("-f")
            .arg(dir.path().join("slapd.conf"))
            .arg("-l")
            .arg(dir.path().join("data.ldif")))?;

        let mut slapd = Slapd {
            dir,
            child: None,
            port: directory_port()?,
            tls_port: directory_port()?,
            ca: certs.ca,
        };
        slapd.restart()?;
        Ok(slapd)
    }

    pub fn ldap_url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    pub fn ldaps_url(&self) -> String {
        format!("ldaps://127.0.0.1:{}", self.tls_port)
    }

    /// A file holding the service account's password (`bind_password_file`).
    pub fn service_password_file(&self) -> Result<PathBuf> {
        let path = self.dir.path().join("service.pw");
        std::fs::write(&path, format!("{SERVICE_PASSWORD}\n"))?;
        Ok(path)
    }

    /// (Re)starts the server on the same ports, in the foreground (`-d`) so it stays
    /// our child; stats logging (256) records every operation in [`Slapd::log`].
    pub fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("slapd.log"))?;
        let urls = format!("{}/ {}/", self.ldap_url(), self.ldaps_url());
        let child = Command::new(sbin("slapd")?)
            .arg("-f")
            .arg(self.dir.path().join("slapd.conf"))
            .args(["-h", &urls, "-d", "256"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let up = [self.port, self.tls_port]
                .iter()
                .all(|p| std::net::TcpStream::connect(("127.0.0.1", *p)).is_ok());
            if up {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!("slapd exited ({status}):\n{}", self.log()).into());
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(format!("slapd did not listen within 20 s:\n{}", self.log()).into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the server (a directory outage); [`Slapd::restart`] brings it back.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes (`SIGSTOP`) or thaws (`SIGCONT`) the server: a hung directory whose
    /// kernel still accepts connections, unlike a stopped one.
    pub fn freeze(&self, frozen: bool) -> Result<()> {
        let pid = self.child.as_ref().ok_or("slapd is not running")?.id();
        let signal = if frozen { "-STOP" } else { "-CONT" };
        run(Command::new("kill").args([signal, &pid.to_string()])).map(|_| ())
    }

    /// slapd's stats log so far: one line per connection event and operation.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("slapd.log")).unwrap_or_default()
    }

    /// How many simple binds as `dn` reached the server.
    pub fn binds(&self, dn: &str) -> usize {
        self.log()
            .matches(&format!("BIND dn=\"{dn}\" method=128"))
            .count()
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.stop();
    }
}
