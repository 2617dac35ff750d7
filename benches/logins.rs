//! Login throughput through each way into Sluice, all over TLS, against PostgreSQL
//! 15's own SCRAM logins, in one run, as ratios.
//!
//! Measured, each for `--seconds N` (default 5) with `--clients N` (default 4)
//! concurrent clients, after a 1 s warm-up of the same kind (first JWKS fetch, the
//! LDAP pool filled):
//!
//! - PostgreSQL 15 (Debian's packages, in a temporary directory), SCRAM-SHA-256:
//!   the reference;
//! - Sluice, a local account, SCRAM-SHA-256;
//! - Sluice, an access token (RS256) as the password;
//! - Sluice, an LDAP password checked against a real OpenLDAP slapd over LDAPS
//!   (service-account search, user bind, group search) with a warm pool;
//! - Sluice, Redshift's native IdP exchange (AuthenticationRequest 14 and the `'i'`
//!   message, as the JDBC driver's Azure plugin sends it), and the same client
//!   sending the token as a cleartext password, so the two compare client-free.
//!
//! The first four use `pgbench -C` (a new connection per transaction, one
//! `SELECT 1` each, `sslmode=require`); pgbench cannot do the IdP exchange, so the
//! last two use a small tokio client doing the same per login (`logins/client.rs`).
//! Sluice runs in-process with an OIDC issuer made here (`logins/idp.rs`); server
//! certificates come from a throwaway CA (PostgreSQL and Sluice use the same kind).
//!
//! Run: `cargo bench --bench logins` (release; `-- --seconds N --clients N`).
//! A debug build runs every row, but its Sluice numbers mean nothing.

use std::path::Path;
use std::process::Command;

#[path = "logins/client.rs"]
mod client;
#[path = "logins/idp.rs"]
mod idp;
#[path = "../tests/support/postgres.rs"]
mod postgres;
#[path = "../tests/support/slapd.rs"]
mod slapd;

use postgres::{Postgres, Result, make_certs};
use slapd::{GROUPS, PEOPLE, SERVICE_DN, Slapd, group_dn};

/// The token user (`upn` claim).
const TOKEN_USER: &str = "bench@contoso.com";
/// The local account (SCRAM), on PostgreSQL and Sluice alike.
const LOCAL_USER: &str = "bench";
const LOCAL_PASSWORD: &str = "bench-Local-3141";
/// The directory user and group.
const LDAP_USER: &str = "lena";
const LDAP_PASSWORD: &str = "lena-Secret-2718";
const LDAP_GROUP: &str = "analysts";
/// The Redshift `provider_name` the bench issuer serves.
const PROVIDER: &str = "bench_provider";

/// Runs pgbench with a new connection per transaction; returns connections per second.
fn pgbench(conninfo: &str, password: &str, clients: u32, seconds: u32) -> Result<f64> {
    let script = tempfile::NamedTempFile::new()?;
    std::fs::write(script.path(), "SELECT 1;\n")?;
    let out = Command::new("pgbench")
        .args([
            "-n",
            "-C",
            "-c",
            &clients.to_string(),
            "-j",
            &clients.min(2).to_string(),
            "-T",
            &seconds.to_string(),
            "-f",
        ])
        .arg(script.path())
        .arg(conninfo)
        .env("PGPASSWORD", password)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "pgbench failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    text.lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no tps in pgbench output: {text}").into())
}

/// One row of the table: how the client gets in, and how to measure it.
struct Way {
    name: &'static str,
    client: &'static str,
    run: Box<dyn Fn(u32) -> Result<f64>>,
}

fn options() -> Result<(u32, u32)> {
    let (mut seconds, mut clients) = (5, 4);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut number = |what| -> Result<u32> {
            args.next()
                .and_then(|v| v.parse().ok())
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{what} N (a positive number)").into())
        };
        match a.as_str() {
            "--bench" => {}
            "--seconds" => seconds = number("--seconds")?,
            "--clients" => clients = number("--clients")?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    Ok((seconds, clients))
}

/// Sluice's configuration: TLS only, a local account, the bench issuer (also for
/// Redshift IdP sign-ins), the directory over LDAPS, and roles for both groups.
fn sluice_toml(
    certs: &postgres::Certs,
    discovery: &str,
    directory: &Slapd,
    clients: u32,
) -> Result<String> {
    Ok(format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\
         [server.tls]\ncert = \"{cert}\"\nkey = \"{key}\"\nallow_plaintext = \"never\"\n\
         [[auth.users]]\nname = \"{LOCAL_USER}\"\npassword = \"{LOCAL_PASSWORD}\"\n\
         [auth.oidc]\nallow_insecure_http = true\n\
         [[auth.oidc.issuers]]\nissuer = \"{issuer}\"\ndiscovery_url = \"{discovery}\"\n\
         audiences = [\"{audience}\"]\nredshift_provider_names = [\"{PROVIDER}\"]\n\
         [auth.ldap]\nurl = \"{ldaps}\"\nca_file = \"{ca}\"\n\
         bind_dn = \"{SERVICE_DN}\"\nbind_password_file = \"{pw}\"\nuser_base_dn = \"{PEOPLE}\"\n\
         group_base_dn = \"{GROUPS}\"\npool_size = {pool}\n\
         [[role_mapping]]\ngroup = \"{token_group}\"\nroles = [\"reader\"]\n\
         [[role_mapping]]\ngroup = \"{ldap_group}\"\nroles = [\"reader\"]\n\
         [[roles]]\nname = \"reader\"\nread = [\"*\"]\n",
        cert = certs.cert.display(),
        key = certs.key.display(),
        issuer = idp::ISSUER,
        audience = idp::AUDIENCE,
        ldaps = directory.ldaps_url(),
        ca = directory.ca.display(),
        pw = directory.service_password_file()?.display(),
        pool = clients.max(8),
        token_group = idp::GROUP,
        ldap_group = group_dn(LDAP_GROUP),
    ))
}

/// slapd connections accepted so far (its stats log has one line per connection).
fn ldap_connections(directory: &Slapd) -> usize {
    directory.log().matches(" ACCEPT from ").count()
}

fn main() -> Result<()> {
    let (seconds, clients) = options()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let pg = Postgres::start("hostssl all all 127.0.0.1/32 scram-sha-256")?;
    pg.sql(
        "postgres",
        &format!("CREATE ROLE {LOCAL_USER} LOGIN PASSWORD '{LOCAL_PASSWORD}'"),
    )?;
    let directory = Slapd::start(&[(LDAP_USER, LDAP_PASSWORD)], &[(LDAP_GROUP, &[LDAP_USER])])?;
    let dir = tempfile::tempdir()?;
    let certs = make_certs(dir.path())?;
    let (discovery, token) = rt.block_on(idp::issuer(TOKEN_USER))?;
    let toml = sluice_toml(&certs, &discovery, &directory, clients)?;
    let config =
        sluice::config::Config::parse(&toml, Path::new("bench.toml"), dir.path().to_owned())?;
    let server = rt.block_on(sluice::server::Server::bind(config))?;
    let port = server.local_addr()?.port();
    rt.spawn(server.run());

    let pg_scram = format!(
        "host=127.0.0.1 port={} dbname=postgres user={LOCAL_USER} sslmode=require",
        pg.port
    );
    let sluice_as = |user: &str| {
        format!("host=127.0.0.1 port={port} dbname=sluice user={user} sslmode=require")
    };
    let (sl_scram, sl_token, sl_ldap) = (
        sluice_as(LOCAL_USER),
        sluice_as(TOKEN_USER),
        sluice_as(LDAP_USER),
    );
    let tls = client::tls_config(&certs.ca)?;
    let (idp_login, password_login) = (
        client::Login::redshift_idp(&token, PROVIDER),
        client::Login::token_password(TOKEN_USER, &token),
    );
    let pgb = |conninfo: String, password: String| -> Box<dyn Fn(u32) -> Result<f64>> {
        Box::new(move |s| pgbench(&conninfo, &password, clients, s))
    };
    let custom = |login: client::Login| -> Box<dyn Fn(u32) -> Result<f64>> {
        let tls = tls.clone();
        Box::new(move |s| client::measure(port, &tls, &login, clients, s))
    };
    let ways = [
        Way {
            name: "PostgreSQL 15, SCRAM-SHA-256",
            client: "pgbench -C",
            run: pgb(pg_scram, LOCAL_PASSWORD.into()),
        },
        Way {
            name: "Sluice, local account, SCRAM-SHA-256",
            client: "pgbench -C",
            run: pgb(sl_scram, LOCAL_PASSWORD.into()),
        },
        Way {
            name: "Sluice, access token as password",
            client: "pgbench -C",
            run: pgb(sl_token, token.clone()),
        },
        Way {
            name: "Sluice, LDAP password (LDAPS, warm pool)",
            client: "pgbench -C",
            run: pgb(sl_ldap, LDAP_PASSWORD.into()),
        },
        Way {
            name: "Sluice, access token as password",
            client: "bench client",
            run: custom(password_login),
        },
        Way {
            name: "Sluice, Redshift IdP exchange (AzureAD)",
            client: "bench client",
            run: custom(idp_login),
        },
    ];

    let mut rates = Vec::with_capacity(ways.len());
    let mut ldap_opened = 0;
    for way in &ways {
        // Warm-up, then the measurement; the server runtime keeps running meanwhile.
        (way.run)(1).map_err(|e| format!("{} ({}): {e}", way.name, way.client))?;
        let before = ldap_connections(&directory);
        let rate = (way.run)(seconds).map_err(|e| format!("{} ({}): {e}", way.name, way.client))?;
        if way.name.contains("LDAP") {
            ldap_opened = ldap_connections(&directory) - before;
        }
        rates.push(rate);
    }

    let build = if cfg!(debug_assertions) {
        "DEBUG build: Sluice numbers are not meaningful, use `cargo bench`"
    } else {
        "release build"
    };
    println!(
        "Logins per second over TLS, {clients} clients, {seconds} s each, one SELECT 1 per login ({build}):"
    );
    println!(
        "  {:<42} {:<13} {:>10}  {:>8}",
        "way in", "client", "logins/s", "vs PG"
    );
    let reference = rates[0];
    for (way, rate) in ways.iter().zip(&rates) {
        println!(
            "  {:<42} {:<13} {:>10.1}  {:>7.2}x",
            way.name,
            way.client,
            rate,
            rate / reference
        );
    }
    println!(
        "  Redshift IdP exchange vs token as password, same client: {:.2}x",
        rates[5] / rates[4]
    );
    println!("  LDAP connections opened during the LDAP measurement: {ldap_opened}");
    drop(rt);
    Ok(())
}
