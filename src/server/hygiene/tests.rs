use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::config::{EngineConfig, RoleConfig, ServerConfig};
use crate::server::settings::Settings;

fn role(name: &str, idle: Option<u64>, idle_tx: Option<u64>, includes: &[&str]) -> RoleConfig {
    RoleConfig {
        name: name.into(),
        read: vec![],
        includes: includes.iter().map(|s| s.to_string()).collect(),
        write: false,
        admin: false,
        row_limit: None,
        result_cache_ttl_secs: None,
        manage_materialized_views: false,
        redshift_user: None,
        redshift_groups: vec![],
        idle_session_timeout_secs: idle,
        idle_in_transaction_session_timeout_secs: idle_tx,
        max_session_age_secs: None,
        max_connections: None,
        memory_share: None,
    }
}

fn server(idle: u64, idle_tx: u64, age: u64) -> ServerConfig {
    ServerConfig {
        idle_session_timeout_secs: idle,
        idle_in_transaction_session_timeout_secs: idle_tx,
        max_session_age_secs: age,
        ..ServerConfig::default()
    }
}

#[test]
fn idle_timeout_gucs_parse_like_postgresql() {
    let mut s = Settings::new("u");
    for (value, expected) in [("250", 250), ("5s", 5000), ("1min", 60_000), ("'2s'", 2000)] {
        s.set("idle_session_timeout", Some(value)).unwrap();
        assert_eq!(
            s.idle_session_timeout,
            Some(Duration::from_millis(expected)),
            "{value}"
        );
        assert_eq!(
            s.get("idle_session_timeout"),
            Some(expected.to_string().as_str())
        );
    }
    s.set("idle_in_transaction_session_timeout", Some("3s"))
        .unwrap();
    assert_eq!(
        s.idle_in_transaction_session_timeout,
        Some(Duration::from_secs(3))
    );
    assert_eq!(
        s.set("idle_in_transaction_session_timeout", Some("soon"))
            .unwrap_err()
            .code,
        SqlState::INVALID_PARAMETER_VALUE
    );
    s.reset(None).unwrap();
    assert_eq!(
        (
            s.idle_session_timeout,
            s.idle_in_transaction_session_timeout
        ),
        (None, None)
    );
}

#[test]
fn rules_come_from_roles_then_the_server() {
    let defined = vec![
        role("analyst", Some(600), None, &["base"]),
        role("dash", Some(60), Some(0), &[]),
        role("etl", Some(0), None, &[]),
        role("base", None, Some(30), &[]),
    ];
    let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let s = server(3600, 120, 86_400);
    // Nothing set by the roles: the server's.
    let r = SessionRules::resolve(&s, &names(&["nobody"]), &defined);
    assert_eq!(r.idle_session, Some(Duration::from_secs(3600)));
    assert_eq!(r.idle_in_transaction, Some(Duration::from_secs(120)));
    assert_eq!(r.max_age, Some(Duration::from_secs(86_400)));
    // A role's own value (an included role's too) overrides the server's.
    let r = SessionRules::resolve(&s, &names(&["analyst"]), &defined);
    assert_eq!(r.idle_session, Some(Duration::from_secs(600)));
    assert_eq!(r.idle_in_transaction, Some(Duration::from_secs(30)));
    // Several roles: the shortest non-zero.
    let r = SessionRules::resolve(&s, &names(&["analyst", "dash", "etl"]), &defined);
    assert_eq!(r.idle_session, Some(Duration::from_secs(60)));
    assert_eq!(r.idle_in_transaction, Some(Duration::from_secs(30)));
    // A role may switch a server default off (0).
    let r = SessionRules::resolve(&s, &names(&["etl"]), &defined);
    assert_eq!(r.idle_session, None);
    let r = SessionRules::resolve(&server(0, 0, 0), &names(&["base"]), &defined);
    assert_eq!((r.idle_session, r.max_age), (None, None));
}

#[test]
fn a_guc_lowers_a_configured_timeout_but_never_raises_it() {
    let rules = SessionRules {
        idle_session: Some(Duration::from_secs(60)),
        idle_in_transaction: None,
        max_age: None,
    };
    let mut settings = Settings::new("u");
    assert_eq!(
        rules.idle_timeout(&settings, false),
        Some(Duration::from_secs(60))
    );
    assert_eq!(rules.idle_timeout(&settings, true), None);
    settings.set("idle_session_timeout", Some("5s")).unwrap();
    assert_eq!(
        rules.idle_timeout(&settings, false),
        Some(Duration::from_secs(5))
    );
    settings.set("idle_session_timeout", Some("1h")).unwrap();
    assert_eq!(
        rules.idle_timeout(&settings, false),
        Some(Duration::from_secs(60))
    );
    settings
        .set("idle_in_transaction_session_timeout", Some("250ms"))
        .unwrap();
    assert_eq!(
        rules.idle_timeout(&settings, true),
        Some(Duration::from_millis(250))
    );
}

#[test]
fn connection_limits_count_users_and_roles_and_give_places_back() {
    let counts = Arc::new(ConnectionCounts::default());
    let mut limited = role("dash", None, None, &[]);
    limited.max_connections = Some(2);
    let defined = vec![limited];
    let dash = vec!["dash".to_string()];
    let a = counts.admit("ann", &dash, 2, &defined).expect("first");
    let _b = counts.admit("bob", &dash, 2, &defined).expect("second");
    let e = counts
        .admit("cid", &dash, 2, &defined)
        .err()
        .expect("role full");
    assert_eq!(e.code, SqlState::TOO_MANY_CONNECTIONS);
    assert_eq!(e.message, "too many connections for role \"dash\"");
    let _c = counts.admit("ann", &[], 2, &defined).expect("ann's second");
    let e = counts
        .admit("ann", &[], 2, &defined)
        .err()
        .expect("user full");
    assert_eq!(e.message, "too many connections for role \"ann\"");
    drop(a);
    counts
        .admit("cid", &dash, 2, &defined)
        .expect("a place was given back");
    // 0: no per-user limit.
    let many: Vec<_> = (0..5)
        .map(|_| counts.admit("svc", &[], 0, &defined).expect("unlimited"))
        .collect();
    assert_eq!(many.len(), 5);
}

#[test]
fn engine_settings_follow_the_allow_list_unless_admin() {
    let config = Arc::new(EngineConfig::default());
    let user = EngineGuard {
        admin: false,
        config: config.clone(),
    };
    let admin = EngineGuard {
        admin: true,
        config,
    };
    for (name, value) in [
        ("datafusion.execution.batch_size", "1"),
        ("datafusion.execution.target_partitions", "1000"),
        ("datafusion.optimizer.max_passes", "0"),
    ] {
        let e = check_engine_setting(Some(&user), name, Some(value)).unwrap_err();
        assert_eq!(e.code, SqlState::INSUFFICIENT_PRIVILEGE, "{name}");
        assert_eq!(
            e.message,
            format!("permission denied to set parameter \"{name}\"")
        );
        assert!(
            e.hint
                .as_deref()
                .is_some_and(|h| h.contains("user_settable"))
        );
        check_engine_setting(Some(&admin), name, Some(value)).expect("admin may");
    }
    check_engine_setting(Some(&user), "datafusion.explain.format", Some("tree"))
        .expect("display options are allowed");
    // Back to the default is always allowed.
    check_engine_setting(Some(&user), "datafusion.execution.batch_size", None).unwrap();
    // Unknown options and bad values, for anyone.
    assert_eq!(
        check_engine_setting(Some(&admin), "datafusion.execution.nonsense", Some("1"))
            .unwrap_err()
            .code,
        SqlState::UNDEFINED_OBJECT
    );
    assert_eq!(
        check_engine_setting(
            Some(&admin),
            "datafusion.execution.batch_size",
            Some("many")
        )
        .unwrap_err()
        .code,
        SqlState::INVALID_PARAMETER_VALUE
    );
    // Through the session's settings (SET, set_config, startup all call `set`).
    let mut settings = Settings::new("u");
    settings.guard_engine(user);
    assert_eq!(
        settings
            .set("datafusion.execution.batch_size", Some("1"))
            .unwrap_err()
            .code,
        SqlState::INSUFFICIENT_PRIVILEGE
    );
    assert_eq!(settings.get("datafusion.execution.batch_size"), None);
    settings
        .set("datafusion.explain.format", Some("tree"))
        .unwrap();
    assert_eq!(settings.get("datafusion.explain.format"), Some("tree"));
}

#[test]
fn endings_speak_postgresql() {
    assert_eq!(Ending::IdleSession.error().code.0, "57P05");
    assert_eq!(
        Ending::IdleSession.error().message,
        "terminating connection due to idle-session timeout"
    );
    assert_eq!(Ending::IdleInTransaction.error().code.0, "25P03");
    assert_eq!(
        Ending::IdleInTransaction.error().message,
        "terminating connection due to idle-in-transaction timeout"
    );
    assert_eq!(Ending::Terminated.error().code.0, "57P01");
    let kill = Kill::default();
    assert_eq!(kill.ending(), None);
    kill.kill(Ending::Terminated);
    assert_eq!(kill.ending(), Some(Ending::Terminated));
}
