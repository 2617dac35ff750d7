//! Config parsing and validation: every refusal names its key.

use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("test.toml"), PathBuf::from("/etc/sluice"))
}

#[test]
fn empty_file_gives_secure_defaults() {
    let c = parse("").unwrap();
    assert_eq!(c.server.listen, "127.0.0.1:5439");
    assert_eq!(c.server.tls.allow_plaintext, Plaintext::Never);
}

#[test]
fn unknown_key_is_named() {
    let e = parse("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("lisen"), "{e}");
}

#[test]
fn bad_listen_is_named() {
    let e = parse("[server]\nlisten = \"nowhere\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("server.listen"), "{e}");
}

#[test]
fn user_needs_a_secret() {
    let e = parse("[[auth.users]]\nname = \"a\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("auth.users[0].password"), "{e}");
}

#[test]
fn bad_verifier_is_named() {
    let e = parse("[[auth.users]]\nname = \"a\"\nscram = \"md5abc\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("auth.users[0].scram"), "{e}");
}

#[test]
fn cert_without_key_is_refused() {
    let e = parse("[server.tls]\ncert = \"a.pem\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("server.tls.key"), "{e}");
}

#[test]
fn oidc_settings_are_checked() {
    let base = "[auth.oidc]\n[[auth.oidc.issuers]]\nissuer = \"https://idp.example/\"\n";
    let e = parse(&format!("{base}audiences = []\n"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("auth.oidc.issuers[0].audiences"), "{e}");
    let e = parse(&format!(
        "{base}audiences = [\"a\"]\nalgorithms = [\"HS256\"]\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("algorithms"), "{e}");
    parse(&format!("{base}audiences = [\"a\"]\n")).unwrap();
    let e = parse(&format!(
        "{base}audiences = [\"a\"]\njwks_uri = \"http://idp.example/keys\"\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("jwks_uri") && e.contains("https"), "{e}");
    let e = parse("[[role_mapping]]\nroles = [\"x\"]\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("role_mapping[0]"), "{e}");
}

#[test]
fn roles_are_checked() {
    let e = parse("[[auth.users]]\nname = \"a\"\npassword = \"p\"\nroles = [\"ghost\"]\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("auth.users[0].roles") && e.contains("ghost"),
        "{e}"
    );
    let e = parse("[[roles]]\nname = \"a\"\nincludes = [\"b\"]\n[[roles]]\nname = \"b\"\nincludes = [\"a\"]\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("cycle"), "{e}");
    parse("[[roles]]\nname = \"a\"\nread = [\"nyc.*\"]\nincludes = [\"base\"]\n").unwrap();
    let e = parse("[[roles]]\nname = \"a\"\nredshift_groups = [\"Sales\"]\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("roles[0].redshift_groups"), "{e}");
}

#[test]
fn relative_paths_resolve_against_config_dir() {
    let c = parse("").unwrap();
    assert_eq!(
        c.resolve(Path::new("data")),
        PathBuf::from("/etc/sluice/data")
    );
}

#[test]
fn redshift_upstreams_are_validated_with_their_key() {
    let base = "[[redshift]]\nname = \"wh\"\ndatabase = \"dev\"\nregion = \"us-east-1\"\n";
    let err = |extra: &str| {
        parse(&format!("{base}{extra}"))
            .map(|_| String::new())
            .unwrap_or_else(|e| e.to_string())
    };
    assert!(
        err("credentials = \"get_cluster_credentials\"\n")
            .contains("redshift[0].cluster_identifier"),
    );
    assert!(err("credentials = \"serverless\"\n").contains("redshift[0].workgroup"));
    assert!(
        err("credentials = \"static\"\nuser = \"u\"\nhost = \"h\"\nport = 1\n")
            .contains("password_env")
    );
    assert!(
        err("cluster_identifier = \"c\"\ncredentials = \"get_cluster_credentials\"\nduration_seconds = 60\n")
            .contains("redshift[0].duration_seconds")
    );
    assert!(
        err(
            "cluster_identifier = \"c\"\ncredentials = \"get_cluster_credentials\"\nhost = \"h\"\n"
        )
        .contains("redshift[0].port")
    );
    assert!(
        err("cluster_identifier = \"c\"\ncredentials = \"get_cluster_credentials\"\ntls = \"sometimes\"\n")
            .contains("tls")
    );
    assert!(
        err("cluster_identifier = \"c\"\ncredentials = \"get_cluster_credentials\"\n[redshift.pool]\nmax_sessions = 0\n")
            .contains("redshift[0].pool.max_sessions")
    );
    assert_eq!(
        err("cluster_identifier = \"c\"\ncredentials = \"get_cluster_credentials\"\n"),
        ""
    );
    let twice = format!(
        "{base}cluster_identifier = \"c\"\ncredentials = \"get_cluster_credentials\"\n{base}cluster_identifier = \"c\"\ncredentials = \"get_cluster_credentials\"\n"
    );
    assert!(
        parse(&twice)
            .unwrap_err()
            .to_string()
            .contains("redshift[1].name")
    );
}

#[test]
fn audit_section_is_validated_with_its_key() {
    let e = parse("[audit]\nformat = \"json\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`audit`") && e.contains("at least one sink"),
        "{e}"
    );
    let e = parse("[audit.file]\npath = \"audit/a.jsonl\"\nmax_size_mb = 0\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("audit.file.max_size_mb"), "{e}");
    let e = parse("[audit]\non_failure = \"maybe\"\n[audit.stdout]\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("on_failure") && e.contains("`refuse`"), "{e}");
    let c = parse("[audit.file]\npath = \"audit/a.jsonl\"\n").unwrap();
    let file = c.audit.clone().and_then(|a| a.file).unwrap();
    assert_eq!(
        c.resolve(&file.path),
        PathBuf::from("/etc/sluice/audit/a.jsonl")
    );
    assert!(parse("").unwrap().audit.is_none());
}

#[test]
fn the_shipped_audit_example_is_valid() {
    let shipped = include_str!("../../conf/sluice.toml");
    let example: Vec<&str> = shipped
        .lines()
        .skip_while(|l| !l.starts_with("[audit]"))
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.strip_prefix("# ").unwrap_or(l))
        .collect();
    let c = parse(&example.join("\n")).unwrap();
    let audit = c.audit.unwrap();
    assert!(audit.file.is_some() && audit.stdout.is_some() && audit.s3.is_some());
}

#[test]
fn the_shipped_workload_example_is_valid_with_its_commented_parts() {
    let shipped = include_str!("../../conf/sluice.toml");
    let example: Vec<&str> = shipped
        .lines()
        .skip_while(|l| !l.starts_with("[[workload.queues]]"))
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.strip_prefix("# ").unwrap_or(l))
        .collect();
    let c = parse(&example.join("\n")).unwrap();
    assert_eq!(c.workload.queues.len(), 2);
    assert_eq!(c.workload.rules.len(), 2);
    assert_eq!(c.workload.queues[1].priority, super::Priority::High);
}
