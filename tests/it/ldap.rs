//! LDAP password logins (`[auth.ldap]`) against a real OpenLDAP slapd (`slapd.rs`):
//! both ways of finding the user, LDAPS and StartTLS, groups → roles, refusals that
//! do not reveal which users exist, a directory outage, config rules, and logs that
//! never hold a password.

use std::path::Path;
use std::time::Duration;

use crate::harness::{
    Gateway, GatewayConfig, connect_plain, count, identity, psql_command, run_sluice, serve,
    sluice_command, sqlstate, stderr, stdout, temp_certs,
};
use crate::postgres::free_port;
use crate::slapd::{GROUPS, PEOPLE, SERVICE_DN, SERVICE_PASSWORD, Slapd, group_dn, user_dn};

const ALICE_PW: &str = "alice-Secret-9917";
const BOB_PW: &str = "bob-Secret-4402";
const CAROL_PW: &str = "carol-Secret-1288";

/// alice: sales; carol: admins and engineering; bob: engineering only (no rule).
fn directory() -> Slapd {
    Slapd::start(
        &[("alice", ALICE_PW), ("bob", BOB_PW), ("carol", CAROL_PW)],
        &[
            ("sales", &["alice"]),
            ("admins", &["carol"]),
            ("engineering", &["bob", "carol"]),
        ],
    )
    .expect("slapd starts (run tests/setup.sh)")
}

/// How the gateway finds the user's DN.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// Service account + `(uid={user})` under ou=people, then a bind as the user.
    SearchBind,
    /// `uid={user},ou=people,…` bound directly.
    Pattern,
}

/// Role rules on group DNs; `sales` may read nyc.zones only, `analyst` (the
/// harness's role) everything.
fn role_rules() -> String {
    format!(
        "\n[[role_mapping]]\ngroup = \"{}\"\nroles = [\"analyst\"]\n\n\
         [[role_mapping]]\ngroup = \"{}\"\nroles = [\"sales\"]\n\n\
         [[roles]]\nname = \"sales\"\nread = [\"nyc.zones\"]\n",
        group_dn("admins"),
        group_dn("sales"),
    )
}

/// An `[auth.ldap]` section: `url`, the mode's keys, groups by `(member={dn})`, and
/// `more` (TLS keys).
fn section(dir: &Slapd, url: &str, mode: Mode, more: &str) -> String {
    let how = match mode {
        Mode::SearchBind => format!(
            "bind_dn = \"{SERVICE_DN}\"\nbind_password_file = \"{}\"\nuser_base_dn = \"{PEOPLE}\"\n",
            dir.service_password_file().unwrap().display()
        ),
        Mode::Pattern => format!("user_bind_pattern = \"uid={{user}},{PEOPLE}\"\n"),
    };
    format!("\n[auth.ldap]\nurl = \"{url}\"\n{how}group_base_dn = \"{GROUPS}\"\n{more}\n")
}

fn ca_line(ca: &Path) -> String {
    format!("ca_file = \"{}\"\n", ca.display())
}

async fn gateway(dir: &Slapd, mode: Mode, tls: bool) -> Gateway {
    let ldap = if tls {
        section(dir, &dir.ldaps_url(), mode, &ca_line(&dir.ca))
    } else {
        let more = format!("starttls = true\n{}", ca_line(&dir.ca));
        section(dir, &dir.ldap_url(), mode, &more)
    };
    with_ldap(&ldap).await
}

/// The demo gateway with `ldap` and the role rules.
async fn with_ldap(ldap: &str) -> Gateway {
    GatewayConfig::demo()
        .extra(ldap)
        .extra(&role_rules())
        .start()
        .await
}

/// The refusal of a login: (SQLSTATE, message, hint, detail).
async fn refusal(port: u16, user: &str, password: &str) -> (String, String, String, String) {
    let e = connect_plain(port, user, password)
        .await
        .err()
        .unwrap_or_else(|| panic!("{user} must be refused"));
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("no server error: {e}"));
    (
        sqlstate(&e),
        db.message().to_owned(),
        db.hint().unwrap_or_default().to_owned(),
        db.detail().unwrap_or_default().to_owned(),
    )
}

/// Checks what each directory user may do once logged in through `port`.
async fn check_roles(port: u16) {
    let alice = connect_plain(port, "alice", ALICE_PW)
        .await
        .expect("alice logs in");
    let id = identity(&alice).await;
    let (dn, sales) = (user_dn("alice"), group_dn("sales"));
    assert_eq!(
        id,
        [
            "alice",
            "ldap",
            "",
            dn.as_str(),
            "1",
            sales.as_str(),
            "sales"
        ]
    );
    assert_eq!(count(&alice, "nyc.zones").await.unwrap(), 265);
    let e = count(&alice, "nyc.trips").await.unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "sales may not read trips: {e}");

    // The first matching rule decides: admins → analyst (reads everything).
    let carol = connect_plain(port, "carol", CAROL_PW).await.unwrap();
    let id = identity(&carol).await;
    assert_eq!((id[4].as_str(), id[6].as_str()), ("2", "analyst"), "{id:?}");
    assert!(count(&carol, "nyc.trips").await.unwrap() > 0);

    // In a group no rule names: the base role, which reads nothing.
    let bob = connect_plain(port, "bob", BOB_PW).await.unwrap();
    let id = identity(&bob).await;
    assert_eq!(
        (id[5].as_str(), id[6].as_str()),
        (group_dn("engineering").as_str(), "base")
    );
    assert_eq!(
        sqlstate(&count(&bob, "nyc.zones").await.unwrap_err()),
        "42501"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_then_bind_over_ldaps_maps_groups_to_roles() {
    let dir = directory();
    let gw = gateway(&dir, Mode::SearchBind, true).await;
    check_roles(gw.port).await;
    assert!(dir.binds(SERVICE_DN) > 0, "the service account searched");
    assert_eq!(dir.binds(&user_dn("alice")), 1);

    // psql over TLS to the gateway, as a directory user.
    let out = psql_command(gw.port, "sluice", "alice")
        .args(["-A", "-t", "-c", "SELECT count(*) FROM nyc.zones"])
        .env("PGPASSWORD", ALICE_PW)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "psql: {}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "265");

    // Local accounts still use SCRAM and never reach the directory.
    let local = gw.connect().await;
    assert_eq!(identity(&local).await[1], "local");
    assert!(!dir.log().contains("uid=demo"), "a local user went to LDAP");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_pattern_over_starttls_maps_groups_to_roles() {
    let dir = directory();
    let gw = gateway(&dir, Mode::Pattern, false).await;
    check_roles(gw.port).await;
    let log = dir.log();
    assert!(
        log.contains(" STARTTLS"),
        "no StartTLS in the slapd log:\n{log}"
    );
    assert!(log.contains("TLS established"), "{log}");
    assert_eq!(
        dir.binds(SERVICE_DN),
        0,
        "direct bind needs no service account"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_and_unknown_users_look_alike() {
    let dir = directory();
    for mode in [Mode::SearchBind, Mode::Pattern] {
        let gw = gateway(&dir, mode, true).await;
        let wrong = refusal(gw.port, "alice", "not-her-password").await;
        assert_eq!(wrong.0, "28P01", "{mode:?}: {wrong:?}");
        assert!(wrong.1.contains("\"alice\""), "{wrong:?}");
        // Unknown users, and names that would widen an unescaped filter or DN, get
        // the same answer with only the name changed, and no hint or detail.
        for user in ["mallory", "*", "alice)(uid=*", "x,ou=people"] {
            let got = refusal(gw.port, user, "whatever-1").await;
            let expected = (
                wrong.0.clone(),
                wrong.1.replace("\"alice\"", &format!("\"{user}\"")),
                String::new(),
                String::new(),
            );
            assert_eq!(got, expected, "{mode:?}: {user}");
        }
        // An empty password would be an unauthenticated bind (RFC 4513 §5.1.2).
        assert_eq!(refusal(gw.port, "alice", "").await.0, "28P01", "{mode:?}");

        // The same refused pair again is answered from memory, not by the directory;
        // the right password still goes through at once.
        let binds = dir.binds(&user_dn("alice"));
        assert_eq!(
            refusal(gw.port, "alice", "not-her-password").await.0,
            "28P01"
        );
        assert_eq!(
            dir.binds(&user_dn("alice")),
            binds,
            "{mode:?}: retry reached slapd"
        );
        let c = connect_plain(gw.port, "alice", ALICE_PW).await.unwrap();
        assert_eq!(identity(&c).await[6], "sales");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_outage_is_a_clean_28000_and_recovers() {
    let mut dir = directory();
    let gw = gateway(&dir, Mode::SearchBind, true).await;
    // A pooled connection exists before the outage.
    connect_plain(gw.port, "alice", ALICE_PW).await.unwrap();

    dir.stop();
    for user in ["alice", "bob"] {
        let pw = if user == "alice" { ALICE_PW } else { BOB_PW };
        let (code, message, hint, _) = refusal(gw.port, user, pw).await;
        assert_eq!(
            code, "28000",
            "not the user's fault, so not 28P01: {message}"
        );
        assert!(
            message.contains("LDAP directory is unavailable"),
            "{message}"
        );
        assert!(hint.contains("try again"), "{hint}");
    }
    // The gateway itself is fine: local users log in.
    assert_eq!(identity(&gw.connect().await).await[1], "local");

    // Back up on the same ports: the failures were not cached, dead pooled
    // connections are replaced.
    dir.restart().expect("slapd restarts");
    let c = connect_plain(gw.port, "alice", ALICE_PW)
        .await
        .expect("login after the directory is back");
    assert_eq!(identity(&c).await[6], "sales");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_directory_times_out_cleanly() {
    let dir = directory();
    let more = format!(
        "{}connect_timeout_secs = 1\ntimeout_secs = 1\n",
        ca_line(&dir.ca)
    );
    let gw = with_ldap(&section(&dir, &dir.ldaps_url(), Mode::SearchBind, &more)).await;
    connect_plain(gw.port, "alice", ALICE_PW).await.unwrap();

    // Accepted by the kernel, never answered: first on the pooled connection, then
    // on a new one (TLS handshake). Each must end within the configured seconds.
    dir.freeze(true).unwrap();
    for user in ["alice", "bob"] {
        let pw = if user == "alice" { ALICE_PW } else { BOB_PW };
        let started = std::time::Instant::now();
        let (code, message, _, _) = refusal(gw.port, user, pw).await;
        assert_eq!(code, "28000", "{message}");
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "{:?}",
            started.elapsed()
        );
    }
    dir.freeze(false).unwrap();
    let c = connect_plain(gw.port, "bob", BOB_PW)
        .await
        .expect("login after the thaw");
    assert_eq!(identity(&c).await[0], "bob");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_service_account_is_not_the_users_fault() {
    let dir = directory();
    let bad = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(bad.path(), "not-the-service-password\n").unwrap();
    let ldap = format!(
        "\n[auth.ldap]\nurl = \"{}\"\n{}bind_dn = \"{SERVICE_DN}\"\nbind_password_file = \"{}\"\nuser_base_dn = \"{PEOPLE}\"\n",
        dir.ldaps_url(),
        ca_line(&dir.ca),
        bad.path().display()
    );
    let gw = GatewayConfig::demo().extra(&ldap).start().await;
    let (code, message, _, _) = refusal(gw.port, "alice", ALICE_PW).await;
    assert_eq!(code, "28000", "{message}");
    assert!(message.contains("unavailable"), "{message}");
    assert_eq!(
        dir.binds(&user_dn("alice")),
        0,
        "no user bind without a search"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_directory_certificate_is_verified() {
    let dir = directory();
    let (_other, other) = temp_certs();
    let other_ca = other.ca;
    for (url, more) in [
        (dir.ldaps_url(), ca_line(&other_ca)),
        (
            dir.ldap_url(),
            format!("starttls = true\n{}", ca_line(&other_ca)),
        ),
    ] {
        let ldap = section(&dir, &url, Mode::Pattern, &more);
        let gw = GatewayConfig::demo().extra(&ldap).start().await;
        let (code, message, _, _) = refusal(gw.port, "alice", ALICE_PW).await;
        assert_eq!(code, "28000", "{url}: {message}");
        assert_eq!(
            dir.binds(&user_dn("alice")),
            0,
            "{url}: a bind went out untrusted"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_ldap_works_only_when_allowed() {
    let dir = directory();
    let ldap = section(
        &dir,
        &dir.ldap_url(),
        Mode::Pattern,
        "allow_plaintext = true\n",
    );
    let gw = with_ldap(&ldap).await;
    let c = connect_plain(gw.port, "alice", ALICE_PW).await.unwrap();
    assert_eq!(identity(&c).await[6], "sales");
    assert!(
        !dir.log().contains("TLS established"),
        "plain LDAP was asked for"
    );
}

/// Runs `sluice <args> --config <config>` to its end: (exit code, output).
async fn sluice_exits(args: &[&str], config: &GatewayConfig) -> (Option<i32>, String) {
    let d = tempfile::tempdir().unwrap();
    let out = run_sluice(
        sluice_command(args)
            .arg("--config")
            .arg(config.write(d.path()))
            .env("RUST_LOG", "info"),
    )
    .await;
    (
        out.status.code(),
        format!("{}{}", stdout(&out), stderr(&out)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ldap_configs_stop_start_up_with_the_key_named() {
    let dir = directory();
    let head = GatewayConfig::bare().port(free_port().unwrap());
    let pattern = format!("user_bind_pattern = \"uid={{user}},{PEOPLE}\"\n");
    let cases = [
        (
            format!("url = \"{}\"\n{pattern}", dir.ldap_url()),
            "`auth.ldap.url`: ldap:// sends passwords unencrypted",
        ),
        (
            format!("url = \"{}\"\nstarttls = true\n{pattern}", dir.ldaps_url()),
            "`auth.ldap.starttls`",
        ),
        (
            format!(
                "url = \"{}\"\n{pattern}bind_dn = \"{SERVICE_DN}\"\n",
                dir.ldaps_url()
            ),
            "`auth.ldap.user_bind_pattern`: set either",
        ),
        (
            format!(
                "url = \"{}\"\nuser_bind_pattern = \"uid=alice\"\n",
                dir.ldaps_url()
            ),
            "must contain {user}",
        ),
        (
            format!(
                "url = \"{}\"\nbind_dn = \"{SERVICE_DN}\"\nbind_password_env = \"X\"\n",
                dir.ldaps_url()
            ),
            "`auth.ldap.user_base_dn`",
        ),
    ];
    for (keys, expected) in &cases {
        let config = head.clone().extra(&format!("[auth.ldap]\n{keys}"));
        for command in [&["check-config"][..], &["serve"]] {
            let (code, text) = sluice_exits(command, &config).await;
            assert_eq!(code, Some(2), "{command:?} {keys}: {text}");
            assert!(text.contains(expected), "{command:?} {keys}: {text}");
        }
    }
    // With allow_plaintext, ldap:// without StartTLS is accepted.
    let config = head.clone().extra(&format!(
        "[auth.ldap]\nurl = \"{}\"\nallow_plaintext = true\n{pattern}",
        dir.ldap_url()
    ));
    let (code, text) = sluice_exits(&["check-config"], &config).await;
    assert_eq!(code, Some(0), "{text}");

    // Problems found when the server is built (files, secrets) also stop it, and
    // check-config, naming the key.
    let missing_env = format!(
        "url = \"{}\"\nbind_dn = \"{SERVICE_DN}\"\nbind_password_env = \"SLUICE_TEST_UNSET_LDAP_PW\"\nuser_base_dn = \"{PEOPLE}\"\n",
        dir.ldaps_url()
    );
    for (keys, expected) in [
        (
            format!(
                "url = \"{}\"\nca_file = \"/nonexistent/ca.pem\"\n{pattern}",
                dir.ldaps_url()
            ),
            "auth.ldap.ca_file: cannot read /nonexistent/ca.pem",
        ),
        (
            missing_env,
            "auth.ldap.bind_password_env: environment variable SLUICE_TEST_UNSET_LDAP_PW is not set",
        ),
    ] {
        let config = head.clone().extra(&format!("[auth.ldap]\n{keys}"));
        let (code, text) = sluice_exits(&["serve"], &config).await;
        assert_eq!(code, Some(1), "{keys}: {text}");
        assert!(
            text.contains("cannot start") && text.contains(expected),
            "{keys}: {text}"
        );
        // check-config reads the same files and secrets serve does.
        let (code, text) = sluice_exits(&["check-config"], &config).await;
        assert_eq!(code, Some(2), "{keys}: {text}");
        assert!(text.contains(expected), "{keys}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_never_reach_the_log() {
    let mut dir = directory();
    let port = free_port().unwrap();
    let d = tempfile::tempdir().unwrap();
    let ldap = format!(
        "\n[auth.ldap]\nurl = \"{}\"\n{}bind_dn = \"{SERVICE_DN}\"\nbind_password_env = \"LDAP_SERVICE_PW\"\n\
         user_base_dn = \"{PEOPLE}\"\ngroup_base_dn = \"{GROUPS}\"\n",
        dir.ldaps_url(),
        ca_line(&dir.ca),
    );
    let config = GatewayConfig::bare()
        .port(port)
        .extra(&ldap)
        .extra(&role_rules().replace("[\"analyst\"]", "[\"sales\"]"))
        .write(d.path());
    let log_path = d.path().join("sluice.log");
    let log = std::fs::File::create(&log_path).unwrap();
    // The most verbose level: whatever any module (or ldap3, rustls) might log.
    let mut sluice = serve(&config, port, |cmd| {
        cmd.env("RUST_LOG", "trace")
            .env("LDAP_SERVICE_PW", SERVICE_PASSWORD)
            .stdout(log.try_clone().unwrap())
            .stderr(log);
    })
    .await;

    let c = connect_plain(port, "alice", ALICE_PW)
        .await
        .expect("alice logs in");
    assert_eq!(identity(&c).await[6], "sales");
    let wrong = "alice-Wrong-3310";
    let unknown = "mallory-Guess-5150";
    assert_eq!(refusal(port, "alice", wrong).await.0, "28P01");
    assert_eq!(refusal(port, "mallory", unknown).await.0, "28P01");
    dir.stop();
    assert_eq!(refusal(port, "bob", BOB_PW).await.0, "28000");
    drop(c);
    sluice.kill().await.unwrap();

    let text = std::fs::read_to_string(&log_path).unwrap();
    // The log did record these logins, so the absence checks below mean something.
    for seen in [
        "login succeeded",
        "login failed (ldap)",
        "LDAP directory unavailable",
    ] {
        assert!(text.contains(seen), "{seen:?} not logged:\n{text}");
    }
    for secret in [ALICE_PW, BOB_PW, wrong, unknown, SERVICE_PASSWORD] {
        assert!(!text.contains(secret), "a password is in the log: {secret}");
    }
}
