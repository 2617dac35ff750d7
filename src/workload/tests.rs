use super::*;
use crate::config::{RuleAction, WorkloadConfig};

fn workload(toml_text: &str) -> Arc<Workload> {
    let config: WorkloadConfig = toml::from_str(toml_text).expect("valid [workload]");
    config.validate().expect("valid");
    Workload::new(&config).expect("active")
}

fn statement<'a>(
    route: &'static str,
    roles: &'a [String],
    tags: &'a [(String, String)],
) -> Statement<'a> {
    Statement {
        user: "alice",
        roles,
        groups: &[],
        application: "Tableau 2024",
        query_group: None,
        tags,
        route,
        fingerprint: 0x0123_4567_89ab_cdef,
    }
}

const QUEUES: &str = r#"
[[queues]]
name = "dashboards"
roles = ["bi"]
applications = ["tableau*"]
slots = 2

[[queues]]
name = "etl"
tags = { route = "nightly-*" }
slots = 1
priority = "low"

[[queues]]
name = "pinned"
fingerprints = ["0123456789ABCDEF"]
routes = ["upstream"]
slots = 1

[[rules]]
name = "big_scans"
queues = ["dashboards"]
scan_bytes_over = 1000
action = "refuse"

[[rules]]
name = "slow"
elapsed_secs_over = 30
action = "cancel"

[[rules]]
name = "chatty"
rows_over = 10
action = "log"
"#;

#[test]
fn queues_match_in_order_and_the_rest_goes_to_the_default_queue() {
    let w = workload(QUEUES);
    let bi = vec!["BI".to_owned()];
    let none: Vec<String> = vec![];
    let name = |i: usize| w.queue(i).name.to_string();
    assert_eq!(name(w.classify(&statement("lake", &bi, &[]))), "dashboards");
    let tags = vec![("route".to_owned(), "nightly-load".to_owned())];
    assert_eq!(name(w.classify(&statement("lake", &none, &tags))), "etl");
    assert_eq!(
        name(w.classify(&statement("upstream", &none, &[]))),
        "pinned"
    );
    assert_eq!(name(w.classify(&statement("lake", &none, &[]))), "default");
    // The implicit default queue never makes anyone wait.
    let default = w.classify(&statement("lake", &none, &[]));
    assert_eq!(w.usage(default).2, usize::MAX);
    assert!(w.needs_fingerprint() && w.needs_tags());
}

#[test]
fn scan_rules_refuse_before_the_start_and_name_themselves() {
    let w = workload(QUEUES);
    let mut fired = Vec::new();
    assert!(w.rules.checks_scans(0));
    assert!(
        !w.rules.checks_scans(1),
        "big_scans watches dashboards only"
    );
    w.rules
        .before_start(0, 1000, &mut fired)
        .expect("at the limit is allowed");
    let e = w.rules.before_start(0, 5000, &mut fired).unwrap_err();
    assert_eq!(e.code.0, "54000");
    assert!(e.message.contains("\"big_scans\""), "{}", e.message);
    assert!(e.message.contains("4.9 kB"), "{}", e.message);
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].action, RuleAction::Refuse);
}

#[test]
fn limits_take_the_tightest_of_queue_and_rules() {
    let w = workload(
        r#"
[[queues]]
name = "default"
slots = 4
statement_timeout_secs = 60
row_limit = 100

[[rules]]
name = "slow"
elapsed_secs_over = 30
action = "cancel"

[[rules]]
name = "huge"
rows_over = 1000
action = "cancel"
"#,
    );
    let limits = w.limits(0);
    let elapsed = limits.elapsed.as_ref().expect("a time limit");
    assert_eq!(elapsed.at, Duration::from_secs(30));
    assert_eq!(elapsed.rule.as_deref(), Some("slow"));
    assert_eq!(elapsed.error.code.0, "57014");
    assert!(elapsed.error.message.contains("\"slow\""));
    let rows = limits.rows.as_ref().expect("a row cap");
    assert_eq!(rows.at, 100);
    assert_eq!(rows.rule, None, "the queue's own cap is tighter");
    assert_eq!(rows.error.code.0, "54000");
    assert!(rows.error.message.contains("workload queue \"default\""));
}

#[test]
fn log_rules_are_judged_at_the_end() {
    let w = workload(QUEUES);
    let mut fired = Vec::new();
    w.rules.at_end(3, Duration::from_secs(1), 11, 0, &mut fired);
    assert_eq!(
        fired,
        vec![Fired {
            rule: Arc::from("chatty"),
            action: RuleAction::Log
        }]
    );
    fired.clear();
    w.rules.at_end(3, Duration::from_secs(1), 10, 0, &mut fired);
    assert!(fired.is_empty());
}

#[test]
fn invalid_workloads_name_the_key() {
    let bad = |t: &str| {
        let c: WorkloadConfig = toml::from_str(t).expect("parses");
        c.validate().unwrap_err().0
    };
    assert_eq!(
        bad("[[queues]]\nname = \"a\"\nslots = 0\n"),
        "workload.queues[0].slots"
    );
    assert_eq!(
        bad("[[queues]]\nname = \"default\"\nusers = [\"x\"]\nslots = 1\n"),
        "workload.queues[0].name"
    );
    assert_eq!(
        bad("[[queues]]\nname = \"a\"\nroutes = [\"warehouse\"]\nslots = 1\n"),
        "workload.queues[0].routes"
    );
    assert_eq!(
        bad("[[rules]]\nname = \"r\"\nrows_over = 5\naction = \"refuse\"\n"),
        "workload.rules[0].action"
    );
    assert_eq!(
        bad("[[rules]]\nname = \"r\"\nrows_over = 5\nelapsed_secs_over = 5\naction = \"log\"\n"),
        "workload.rules[0].action"
    );
    assert_eq!(
        bad("[[rules]]\nname = \"r\"\nqueues = [\"nope\"]\nrows_over = 5\naction = \"log\"\n"),
        "workload.rules[0].queues"
    );
    assert_eq!(bad("max_concurrency = 0\n"), "workload.max_concurrency");
}
