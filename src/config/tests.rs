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
fn memory_settings_are_checked_with_their_key() {
    let e = parse("[engine]\nmemory_limit_mb = 0\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`engine.memory_limit_mb`") && e.contains("unlimited"),
        "{e}"
    );
    let e = parse("[engine]\nspill_max_mb = 0\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("`engine.spill_max_mb`"), "{e}");
    let e = parse("[[roles]]\nname = \"a\"\nmemory_share = 0\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("`roles[0].memory_share`"), "{e}");
    let e = parse("[[roles]]\nname = \"a\"\nmemory_share = 101\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("`roles[0].memory_share`"), "{e}");
    let e = parse(
        "[engine]\nmemory_limit_mb = \"unlimited\"\n[[roles]]\nname = \"a\"\nmemory_share = 20\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("`roles[0].memory_share`") && e.contains("unlimited"),
        "{e}"
    );
    let c = parse("[engine]\nmemory_limit_mb = 512\nspill_dir = \"spill\"\n[[roles]]\nname = \"a\"\nmemory_share = 20\n")
        .unwrap();
    assert_eq!(
        c.engine.spill_dir(|p| c.resolve(p)),
        PathBuf::from("/etc/sluice/spill")
    );
    assert_eq!(c.roles[0].memory_share, Some(20));
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
fn the_shipped_engine_example_is_valid_with_its_commented_parts() {
    let shipped = include_str!("../../conf/sluice.toml");
    let example: Vec<&str> = shipped
        .lines()
        .skip_while(|l| !l.starts_with("[engine]"))
        .take_while(|l| !l.trim().is_empty())
        .filter(|l| !l.starts_with("# Memory") && !l.starts_with("# joins"))
        .map(|l| l.strip_prefix("# ").unwrap_or(l))
        .collect();
    let c = parse(&example.join("\n")).unwrap();
    assert_eq!(
        c.engine.memory_limit_mb.as_ref().and_then(|m| m.mb()),
        Some(2048)
    );
    assert_eq!(c.engine.spill_max_mb, 102400);
    assert_eq!(
        c.engine.spill_dir(|p| c.resolve(p)),
        PathBuf::from("/etc/sluice/spill")
    );
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

/// A config with one upstream, a job role with a Redshift identity, a lake-only
/// role, and `job` as its `[[jobs]]` entry.
fn with_job(job: &str) -> Result<Config, ConfigError> {
    parse(&format!(
        "[[redshift]]\nname = \"warehouse\"\ncluster_identifier = \"c\"\nregion = \"us-east-1\"\ndatabase = \"dev\"\ncredentials = \"get_cluster_credentials\"\n\n\
         [[roles]]\nname = \"dba\"\nredshift_user = \"{{user}}\"\n\n\
         [[roles]]\nname = \"jobs_via_include\"\nincludes = [\"dba\"]\n\n\
         [[roles]]\nname = \"reader\"\nread = [\"*\"]\n\n\
         [[jobs]]\n{job}"
    ))
}

#[test]
fn jobs_are_checked_key_by_key() {
    let ok = "name = \"kill-idle\"\nschedule = \"0 */5 * * * *\"\ntime_zone = \"Europe/Paris\"\n\
              statements = [\"SELECT 1\"]\nrun_as_role = \"dba\"\ntarget = \"warehouse\"\n";
    let c = with_job(ok).unwrap();
    let job = &c.jobs[0];
    assert_eq!(job.run_as_user, "sluice_job");
    assert_eq!(job.overlap, Overlap::Skip);
    assert!(job.enabled && job.retries == 0 && job.timeout_secs == 3600);
    assert_eq!(c.job_storage(), "jobs", "no views: a `jobs` directory");
    // Included roles give the identity too; the lake needs none.
    with_job(&ok.replace("\"dba\"", "\"jobs_via_include\"")).unwrap();
    with_job(
        &ok.replace("\"dba\"", "\"reader\"")
            .replace("\"warehouse\"", "\"lake\""),
    )
    .unwrap();
    let cases: &[(&str, &str, &str)] = &[
        (
            "name = \"kill-idle\"",
            "name = \"bad name\"",
            "jobs[0].name",
        ),
        (
            "schedule = \"0 */5 * * * *\"",
            "schedule = \"every five minutes\"",
            "jobs[0].schedule",
        ),
        (
            "schedule = \"0 */5 * * * *\"",
            "schedule = \"0 */5 * * * *\"\nevery_secs = 60",
            "jobs[0].every_secs",
        ),
        ("schedule = \"0 */5 * * * *\"", "", "jobs[0].schedule"),
        (
            "schedule = \"0 */5 * * * *\"",
            "every_secs = 0",
            "jobs[0].every_secs",
        ),
        ("\"Europe/Paris\"", "\"Mars/Olympus\"", "jobs[0].time_zone"),
        ("[\"SELECT 1\"]", "[]", "jobs[0].statements"),
        (
            "[\"SELECT 1\"]",
            "[\"SELECT 1\", \" \"]",
            "jobs[0].statements",
        ),
        (
            "run_as_role = \"dba\"",
            "run_as_role = \"nobody\"",
            "jobs[0].run_as_role",
        ),
        // An upstream needs a minted identity: never a stored password.
        (
            "run_as_role = \"dba\"",
            "run_as_role = \"reader\"",
            "jobs[0].run_as_role",
        ),
        ("\"warehouse\"", "\"elsewhere\"", "jobs[0].target"),
        ("target", "timeout_secs = 0\ntarget", "jobs[0].timeout_secs"),
        ("target", "retries = 1000\ntarget", "jobs[0].retries"),
        (
            "target",
            "grant_roles = [\"ghost\"]\ntarget",
            "jobs[0].grant_roles",
        ),
        ("target", "overlap = \"sometimes\"\ntarget", "overlap"),
        ("target", "colour = \"blue\"\ntarget", "colour"),
    ];
    for (from, to, key) in cases {
        let text = ok.replace(from, to);
        let e = with_job(&text).unwrap_err().to_string();
        assert!(e.contains(key), "{to}: expected {key} in: {e}");
    }
    let twice = format!("{ok}\n[[jobs]]\n{}", ok.replace("kill-idle", "KILL-IDLE"));
    let e = with_job(&twice).unwrap_err().to_string();
    assert!(e.contains("jobs[1].name") && e.contains("twice"), "{e}");
}

#[test]
fn job_runs_live_beside_the_views_unless_told_otherwise() {
    let job = "[[roles]]\nname = \"r\"\n[[jobs]]\nname = \"j\"\nevery_secs = 60\nstatements = [\"SELECT 1\"]\nrun_as_role = \"r\"\ntarget = \"lake\"\n";
    let c = parse(&format!(
        "[materialized_views]\nstorage = \"s3://b/views\"\n{job}"
    ))
    .unwrap();
    assert_eq!(c.job_storage(), "s3://b/views");
    let c = parse(&format!(
        "[materialized_views]\nstorage = \"s3://b/views\"\n[job_history]\nstorage = \"/var/lib/sluice/jobs\"\nkeep_runs = 10\n{job}"
    ))
    .unwrap();
    assert_eq!(c.job_storage(), "/var/lib/sluice/jobs");
    for (bad, key) in [
        ("storage = \"ftp://x\"", "job_history.storage"),
        ("storage = \"s3://\"", "job_history.storage"),
        ("keep_runs = 0", "job_history.keep_runs"),
    ] {
        let e = parse(&format!("[job_history]\n{bad}\n{job}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(key), "{bad}: {e}");
    }
    // `_jobs` under the shared storage belongs to the jobs.
    let e = parse("[materialized_views]\nschemas = [\"_jobs\"]\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("materialized_views.schemas"), "{e}");
}

#[test]
fn the_shipped_job_examples_are_valid() {
    let c = Config::parse(
        include_str!("../../conf/jobs.example.toml"),
        Path::new("conf/jobs.example.toml"),
        PathBuf::from("/etc/sluice"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = c.jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "terminate-idle-sessions",
            "refresh-daily-sales",
            "nightly-unload",
            "nightly-rollup"
        ]
    );
}

#[test]
fn cluster_settings_are_checked_with_their_key() {
    let ok = "[cluster]\ngateway_id = 2\nstorage = \"s3://b/cluster\"\n[cluster.peers]\n1 = \"10.0.0.11:5439\"\n2 = \"gw-2.internal:5439\"\n";
    let c = parse(ok).unwrap();
    assert_eq!(c.cluster_storage(), Some("s3://b/cluster"));
    let cluster = c.cluster.as_ref().unwrap();
    assert_eq!(cluster.poll_ms, 1000);
    assert_eq!(cluster.peer_addresses().unwrap().len(), 2);
    // Without its own storage: beside the views.
    let c = parse("[materialized_views]\nstorage = \"s3://b/views\"\n[cluster]\ngateway_id = 1\n")
        .unwrap();
    assert_eq!(c.cluster_storage(), Some("s3://b/views"));
    assert_eq!(parse("").unwrap().cluster_storage(), None);
    for (bad, key) in [
        ("[cluster]\ngateway_id = 1\n", "cluster.storage"),
        (
            "[cluster]\ngateway_id = 0\nstorage = \"d\"\n",
            "cluster.gateway_id",
        ),
        (
            "[cluster]\ngateway_id = 1\nstorage = \"ftp://x\"\n",
            "cluster.storage",
        ),
        (
            "[cluster]\ngateway_id = 1\nstorage = \"d\"\npoll_ms = 10\n",
            "cluster.poll_ms",
        ),
        (
            "[cluster]\ngateway_id = 1\nstorage = \"d\"\n[cluster.peers]\n0 = \"h:1\"\n",
            "cluster.peers.0",
        ),
        (
            "[cluster]\ngateway_id = 1\nstorage = \"d\"\n[cluster.peers]\nx = \"h:1\"\n",
            "cluster.peers.x",
        ),
        (
            "[cluster]\ngateway_id = 1\nstorage = \"d\"\n[cluster.peers]\n2 = \"h\"\n",
            "cluster.peers.2",
        ),
        (
            "[cluster]\ngateway_id = 1\nstorage = \"d\"\n[cluster.peers]\n2 = \"h:0\"\n",
            "cluster.peers.2",
        ),
        (
            "[materialized_views]\nsync_ms = 10\n",
            "materialized_views.sync_ms",
        ),
        (
            "[materialized_views]\nsync_ms = 60000\nkeep_replaced_secs = 60\n",
            "materialized_views.keep_replaced_secs",
        ),
        (
            "[materialized_views]\nkeep_replaced_secs = 1\n[cluster]\ngateway_id = 1\n",
            "materialized_views.keep_replaced_secs",
        ),
        (
            "[materialized_views]\nschemas = [\"_views\"]\n",
            "materialized_views.schemas",
        ),
    ] {
        let e = parse(bad).unwrap_err().to_string();
        assert!(e.contains(key), "{bad}: expected {key} in: {e}");
    }
    // Views are read back from the storage by default only in a cluster.
    let views = |extra: &str| {
        parse(&format!(
            "[materialized_views]\nkeep_replaced_secs = 1\n{extra}"
        ))
    };
    let alone = views("").unwrap();
    assert_eq!(alone.materialized_views.unwrap().sync_interval_ms(false), 0);
    let clustered = views("sync_ms = 0\n[cluster]\ngateway_id = 1\n").unwrap();
    assert_eq!(
        clustered.materialized_views.unwrap().sync_interval_ms(true),
        0
    );
    // 256 is not a gateway number: the TOML type says so, naming the key.
    let e = parse("[cluster]\ngateway_id = 256\nstorage = \"d\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("gateway_id"), "{e}");
}

#[test]
fn the_shipped_cluster_example_is_valid() {
    let c = Config::parse(
        include_str!("../../conf/cluster.example.toml"),
        Path::new("conf/cluster.example.toml"),
        PathBuf::from("/etc/sluice"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.cluster.map(|c| c.gateway_id), Some(1));
}
