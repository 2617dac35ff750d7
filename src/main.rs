use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice::config::Config;

/// Sluice: a federated SQL gateway speaking the PostgreSQL protocol.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Start the gateway.
    Serve {
        /// Config file (default: conf/sluice.toml, the embedded demo set-up).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a config file and exit (non-zero on error), without serving.
    CheckConfig {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Generate the NYC-taxi demo data set into a directory (skipped if present).
    DemoData {
        /// Target directory (default: the config's lake.local.root).
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Sign in with your identity provider (device code) and print the access token
    /// to use as password, or store it in ~/.pgpass.
    Login {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Write the token to ~/.pgpass (or $PGPASSFILE) for this host, port and user.
        #[arg(long, requires_all = ["host", "user"])]
        pgpass: bool,
        #[arg(long)]
        host: Option<String>,
        #[arg(long, default_value_t = 5439)]
        port: u16,
        #[arg(long)]
        user: Option<String>,
    },
    /// Work with access tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Work with the audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Print the SCRAM-SHA-256 verifier for a password (for `auth.users[].scram`).
    HashPassword {
        /// The password; read from standard input when omitted.
        password: Option<String>,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Decode a token (no signature check) and explain which configured checks and
    /// role-mapping rules it passes or fails.
    Inspect {
        /// The token; read from standard input when omitted (keeps it out of shell history).
        token: Option<String>,
        /// The login user to check the token's name claim against.
        #[arg(long)]
        user: Option<String>,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check that audit files form one unbroken hash chain. Give them oldest first:
    /// `sluice audit verify audit/sluice-audit.jsonl.* audit/sluice-audit.jsonl`
    /// (rotated names sort by age).
    Verify {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

fn config_path(p: Option<PathBuf>) -> PathBuf {
    p.unwrap_or_else(|| PathBuf::from("conf/sluice.toml"))
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("sluice: invalid configuration: {e}");
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Commands::CheckConfig { config } => {
            let path = config_path(config);
            match load(&path) {
                Ok(c) => {
                    // What `serve` reads besides the file itself: certificates, and the
                    // LDAP CA and service-account secret.
                    let files = sluice::server::tls::load(&c)
                        .map(|_| ())
                        .and_then(|()| sluice::auth::ldap::LdapAuthenticator::new(&c).map(|_| ()));
                    if let Err(e) = files {
                        eprintln!("sluice: invalid configuration: {}: {e}", path.display());
                        return ExitCode::from(2);
                    }
                    println!("{}: configuration is valid", path.display());
                    ExitCode::SUCCESS
                }
                Err(code) => code,
            }
        }
        Commands::Login {
            config,
            pgpass,
            host,
            port,
            user,
        } => {
            let path = config_path(config);
            let c = match load(&path) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let Some(login) = c.auth.oidc.as_ref().and_then(|o| o.login.as_ref()) else {
                eprintln!(
                    "sluice: {} has no [auth.oidc.login] section",
                    path.display()
                );
                return ExitCode::from(2);
            };
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("sluice: cannot start runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let token = match runtime.block_on(sluice::auth::login::device_code_login(
                login,
                &mut std::io::stderr(),
            )) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("sluice: {e}");
                    return ExitCode::FAILURE;
                }
            };
            if pgpass {
                let (Some(host), Some(user)) = (host, user) else {
                    return ExitCode::from(2);
                };
                let Some(file) = sluice::auth::login::pgpass_path() else {
                    eprintln!("sluice: cannot find ~/.pgpass (HOME is not set)");
                    return ExitCode::FAILURE;
                };
                if let Err(e) = sluice::auth::login::write_pgpass(&file, &host, port, &user, &token)
                {
                    eprintln!("sluice: {e}");
                    return ExitCode::FAILURE;
                }
                eprintln!(
                    "token stored in {} for {user}@{host}:{port}",
                    file.display()
                );
            } else {
                println!("{token}");
            }
            ExitCode::SUCCESS
        }
        Commands::Token {
            command:
                TokenCommand::Inspect {
                    token,
                    user,
                    config,
                },
        } => {
            let path = config_path(config);
            let c = match load(&path) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let token = match token {
                Some(t) => t,
                None => {
                    let mut line = String::new();
                    if std::io::stdin().read_line(&mut line).is_err() {
                        eprintln!("sluice: cannot read the token from standard input");
                        return ExitCode::FAILURE;
                    }
                    line.trim().to_string()
                }
            };
            print!(
                "{}",
                sluice::auth::oidc::inspect(token.trim(), &c, user.as_deref())
            );
            ExitCode::SUCCESS
        }
        Commands::Audit {
            command: AuditCommand::Verify { files },
        } => match sluice::audit::verify(&files) {
            Ok(report) => {
                println!("{report}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sluice: {e}");
                ExitCode::FAILURE
            }
        },
        Commands::HashPassword { password } => {
            let password = match password {
                Some(p) => p,
                None => {
                    let mut line = String::new();
                    if std::io::stdin().read_line(&mut line).is_err() {
                        eprintln!("sluice: cannot read password from standard input");
                        return ExitCode::FAILURE;
                    }
                    line.trim_end_matches(['\r', '\n']).to_string()
                }
            };
            println!(
                "{}",
                sluice::auth::scram::Verifier::from_password(&password).to_stored()
            );
            ExitCode::SUCCESS
        }
        Commands::DemoData { dir, config } => {
            let dir = match dir {
                Some(d) => d,
                None => {
                    let path = config_path(config);
                    let c = match load(&path) {
                        Ok(c) => c,
                        Err(code) => return code,
                    };
                    match &c.lake.local {
                        Some(l) => c.resolve(&l.root),
                        None => {
                            eprintln!("sluice: {} has no [lake.local]; pass --dir", path.display());
                            return ExitCode::from(2);
                        }
                    }
                }
            };
            match sluice::lake::demo::ensure(&dir) {
                Ok(true) => println!("demo data written to {}", dir.display()),
                Ok(false) => println!("demo data already present in {}", dir.display()),
                Err(e) => {
                    eprintln!("sluice: {e}");
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
        Commands::Serve { config } => {
            let path = config_path(config);
            let config = match load(&path) {
                Ok(c) => c,
                Err(code) => return code,
            };
            sluice::admin::init_logging(&config.log.level);
            // The control runtime: accepting, background refreshes, AWS calls. Sessions
            // run on the server's own session threads (`server.worker_threads`).
            // Generous stacks (virtual memory, committed only when used): view
            // refreshes parse and plan SQL, which recurses with the statement's depth.
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("sluice-control")
                .enable_all()
                .thread_stack_size(16 * 1024 * 1024)
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("sluice: cannot start runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(async move {
                let server = match sluice::server::Server::bind(config).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!("cannot start: {e}");
                        return ExitCode::FAILURE;
                    }
                };
                match server.local_addr() {
                    Ok(addr) => tracing::info!(%addr, "Sluice is listening"),
                    Err(e) => tracing::warn!(error = %e, "listening (address unknown)"),
                }
                #[cfg(unix)]
                {
                    use tokio::signal::unix::{SignalKind, signal};
                    let shared = server.shared();
                    if let Ok(mut hup) = signal(SignalKind::hangup()) {
                        tokio::spawn(async move {
                            while hup.recv().await.is_some() {
                                sluice::server::reload_and_log(&shared, "SIGHUP");
                            }
                        });
                    }
                }
                let shared = server.shared();
                tokio::select! {
                    _ = server.run() => {}
                    _ = shutdown_signal() => tracing::info!("shutting down"),
                }
                // Whatever the audit trail still holds reaches its sinks (bounded:
                // a sink that cannot write must not keep the process up).
                if let Some(audit) = &shared.observer.audit {
                    let flushed =
                        tokio::time::timeout(std::time::Duration::from_secs(10), audit.flush());
                    if flushed.await.is_err() {
                        tracing::error!(
                            "the audit trail could not write everything before shutdown"
                        );
                    }
                }
                ExitCode::SUCCESS
            })
        }
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
