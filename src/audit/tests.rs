//! The audit trail end to end: sinks, failure modes, the chain and its check.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::file::FileSink;
use super::s3::S3Sink;
use super::writer::Sink;
use super::*;

fn who() -> Arc<Who> {
    Arc::new(Who {
        session: 7,
        user: "alice".into(),
        auth: "password",
        roles: vec!["analyst".into()],
        client: "127.0.0.1:40000".into(),
        database: "sluice".into(),
        application: "psql".into(),
        ..Who::default()
    })
}

fn statement(text: &str) -> AuditEvent {
    AuditEvent::Statement(Box::new(StatementEvent {
        who: who(),
        application: "psql".into(),
        query_group: None,
        route: "lake",
        fingerprint: 0xaa,
        statement: text.into(),
        parameters: Some(vec![Some("42".into())]),
        tables_read: vec!["nyc.trips".into()],
        tables_written: vec![],
        duration_us: 1500,
        rows: Some(1),
        bytes: 10,
        sqlstate: Cow::Borrowed("00000"),
        error: None,
        queue: None,
        queue_wait_us: 0,
        rules: Vec::new(),
    }))
}

fn config(text: &str) -> AuditConfig {
    toml::from_str(text).expect("test config")
}

fn file_config(extra: &str) -> AuditConfig {
    config(&format!("{extra}\n[file]\npath = \"logs/audit.jsonl\"\n"))
}

fn start(config: &AuditConfig, dir: &Path) -> Arc<Auditor> {
    Auditor::start(config, |p| dir.join(p)).expect("auditor starts")
}

fn records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .expect("audit file")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// Polls `condition` until it holds; fails the test after ten seconds.
async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn line(body: &str) -> Line {
    Line {
        time: Utc::now(),
        body: body.into(),
    }
}

#[tokio::test]
async fn records_are_chained_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let auditor = start(&file_config(""), dir.path());
    auditor.emit(AuditEvent::Login { who: who() });
    auditor.emit(statement("SELECT 1"));
    auditor.flush().await;
    let path = dir.path().join("logs/audit.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    let first = text.lines().next().unwrap();
    assert!(first.starts_with("{\"seq\":1,\"time\":\""), "{first}");
    assert!(first.contains(",\"event\":\"login\","), "{first}");
    assert!(
        first.ends_with(&format!(",\"prev\":\"{}\"}}", "0".repeat(64))),
        "{first}"
    );
    let lines = records(&path);
    assert_eq!(lines[1]["seq"], 2);
    assert_eq!(lines[1]["event"], "statement");
    // Parameters are left out unless log_parameters = true.
    assert!(lines[1].get("parameters").is_none());
    let time = lines[0]["time"].as_str().unwrap();
    assert_eq!(time.len(), "2024-01-01T00:00:00.000000Z".len(), "{time}");
    assert!(chrono::DateTime::parse_from_rfc3339(time).is_ok());
    let stats = auditor.stats();
    assert_eq!((stats.written, stats.pending, stats.healthy), (2, 0, true));
    assert!(auditor.refusal().is_none());
}

#[tokio::test]
async fn parameters_and_statements_follow_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let auditor = start(&file_config("log_parameters = true"), dir.path());
    assert!(auditor.log_parameters() && auditor.records_statements());
    auditor.emit(statement("SELECT $1"));
    auditor.flush().await;
    let lines = records(&dir.path().join("logs/audit.jsonl"));
    assert_eq!(lines[0]["parameters"], serde_json::json!(["42"]));

    let dir = tempfile::tempdir().unwrap();
    let auditor = start(&file_config("statements = false"), dir.path());
    assert!(!auditor.records_statements());
    auditor.emit(statement("SELECT 1"));
    auditor.emit(AuditEvent::Login { who: who() });
    auditor.flush().await;
    let lines = records(&dir.path().join("logs/audit.jsonl"));
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["event"], "login");
}

#[tokio::test]
async fn the_chain_continues_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let config = file_config("");
    for round in 0..2 {
        let auditor = start(&config, dir.path());
        for i in 0..3 {
            auditor.emit(statement(&format!("SELECT {round}{i}")));
        }
        auditor.flush().await;
    }
    let path = dir.path().join("logs/audit.jsonl");
    let report = verify(&[path]).unwrap();
    assert_eq!((report.lines, report.first_seq, report.last_seq), (6, 1, 6));
    assert!(report.from_genesis && report.torn_lines.is_empty());
}

#[tokio::test]
async fn a_file_that_cannot_be_opened_is_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("logs/audit.jsonl")).unwrap();
    let e = Auditor::start(&file_config(""), |p| dir.path().join(p))
        .err()
        .unwrap();
    assert!(e.contains("logs/audit.jsonl"), "{e}");
    std::fs::write(dir.path().join("other.log"), "plain text\n").unwrap();
    let e = FileSink::open(&dir.path().join("other.log"), 1 << 20, 1)
        .err()
        .unwrap();
    assert!(
        e.contains("other.log") && e.contains("not an audit record"),
        "{e}"
    );
}

#[test]
fn rotation_continues_the_chain_and_keeps_the_newest_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let body = format!(
        "{{\"event\":\"statement\",\"statement\":\"{}\"}}",
        "x".repeat(200)
    );
    let mut sink = FileSink::open(&path, 1000, 100).unwrap();
    for _ in 0..5 {
        sink.write(&vec![line(&body); 4]).unwrap();
    }
    let mut files = file::rotated_files(&path).unwrap();
    assert!(files.len() >= 4, "{files:?}");
    files.push(path.clone());
    for file in &files {
        assert!(std::fs::metadata(file).unwrap().len() <= 1000, "{file:?}");
    }
    let report = verify(&files).unwrap();
    assert_eq!(
        (report.lines, report.first_seq, report.last_seq),
        (20, 1, 20)
    );
    assert!(report.from_genesis);
    // Out of order, the files are not one chain.
    files.swap(0, 1);
    let e = verify(&files).unwrap_err().to_string();
    assert!(
        e.contains("line 1:") && e.contains("not consecutive"),
        "{e}"
    );

    // keep = 1: one rotated file is left, and it still chains to the live one.
    drop(sink);
    let mut sink = FileSink::open(&path, 1000, 1).unwrap();
    sink.write(&vec![line(&body); 8]).unwrap();
    let mut files = file::rotated_files(&path).unwrap();
    assert_eq!(files.len(), 1, "{files:?}");
    files.push(path.clone());
    let report = verify(&files).unwrap();
    assert_eq!(report.last_seq, 28);
    assert!(!report.from_genesis);
}

#[test]
fn verify_names_the_line_that_breaks_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let mut sink = FileSink::open(&path, 1 << 20, 1).unwrap();
    let bodies: Vec<Line> = (0..6)
        .map(|i| line(&format!("{{\"event\":\"statement\",\"n\":{i}}}")))
        .collect();
    sink.write(&bodies).unwrap();
    let good = std::fs::read_to_string(&path).unwrap();
    let report = verify(std::slice::from_ref(&path)).unwrap();
    assert_eq!(
        report.to_string().lines().next().unwrap(),
        format!(
            "ok: 6 lines, seq 1..6, last digest {}",
            file::hex(&file::digest(good.lines().last().unwrap().as_bytes()))
        )
    );

    // Line 3 edited: line 4 no longer chains to it.
    std::fs::write(&path, good.replacen("\"n\":2", "\"n\":9", 1)).unwrap();
    let e = verify(std::slice::from_ref(&path)).unwrap_err();
    assert_eq!(e.line, Some(4));
    assert!(
        e.to_string()
            .contains("line 4: `prev` does not match the digest of line 3"),
        "{e}"
    );

    // Line 3 removed: the old line 4, now line 3, does not chain to line 2.
    let removed: Vec<&str> = good
        .lines()
        .enumerate()
        .filter(|(i, _)| *i != 2)
        .map(|(_, l)| l)
        .collect();
    std::fs::write(&path, removed.join("\n") + "\n").unwrap();
    let e = verify(std::slice::from_ref(&path)).unwrap_err();
    assert_eq!(e.line, Some(3), "{e}");
    assert!(
        e.to_string().contains("altered, inserted or removed"),
        "{e}"
    );

    // A line replaced by something that is not a record is named itself.
    let mut lines: Vec<&str> = good.lines().collect();
    lines[4] = "{}";
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let e = verify(std::slice::from_ref(&path)).unwrap_err();
    assert_eq!(e.line, Some(5), "{e}");
    assert!(e.to_string().contains("not an audit record"), "{e}");
}

#[test]
fn a_torn_last_line_is_kept_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let mut sink = FileSink::open(&path, 1 << 20, 1).unwrap();
    sink.write(&[
        line("{\"event\":\"login\"}"),
        line("{\"event\":\"logoff\"}"),
    ])
    .unwrap();
    drop(sink);
    // A crash mid-write: half a line, no newline.
    let mut text = std::fs::read(&path).unwrap();
    text.extend_from_slice(b"{\"seq\":3,\"time\":\"2024-");
    std::fs::write(&path, &text).unwrap();
    let report = verify(std::slice::from_ref(&path)).unwrap();
    assert_eq!((report.lines, report.torn_lines.len()), (2, 1));

    let mut sink = FileSink::open(&path, 1 << 20, 1).unwrap();
    sink.write(&[line("{\"event\":\"login\"}")]).unwrap();
    let report = verify(std::slice::from_ref(&path)).unwrap();
    assert_eq!((report.lines, report.last_seq), (3, 3));
    assert_eq!(
        report.torn_lines,
        vec![format!("{}: line 3", path.display())]
    );
    assert!(report.to_string().contains("torn write"), "{report}");
}

#[tokio::test]
async fn refuse_mode_refuses_while_the_file_cannot_be_written() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let away = dir.path().join("logs-away");
    let auditor = start(&file_config("on_failure = \"refuse\""), dir.path());
    auditor.emit(AuditEvent::Login { who: who() });
    auditor.flush().await;
    assert!(auditor.refusal().is_none());

    std::fs::rename(&logs, &away).unwrap();
    for i in 0..3 {
        auditor.emit(statement(&format!("SELECT {i}")));
    }
    eventually("refusal", || auditor.refusal().is_some()).await;
    let refusal = auditor.refusal().unwrap();
    assert_eq!(refusal.code, SqlState::IO_ERROR);
    assert!(
        refusal.message.starts_with("audit log cannot be written (")
            && refusal.message.contains("logs/audit.jsonl")
            && refusal.message.ends_with("(audit.on_failure = \"refuse\")"),
        "{}",
        refusal.message
    );
    assert!(!auditor.stats().healthy);

    std::fs::create_dir(&logs).unwrap();
    eventually("recovery", || auditor.refusal().is_none()).await;
    auditor.flush().await;
    let stats = auditor.stats();
    assert_eq!((stats.written, stats.dropped, stats.pending), (4, 0, 0));
    assert!(stats.healthy && stats.write_failures >= 1);
    let lines = records(&logs.join("audit.jsonl"));
    let statements: Vec<&str> = lines
        .iter()
        .map(|l| l["statement"].as_str().unwrap())
        .collect();
    assert_eq!(statements, ["SELECT 0", "SELECT 1", "SELECT 2"]);
    let report = verify(&[away.join("audit.jsonl"), logs.join("audit.jsonl")]).unwrap();
    assert_eq!((report.lines, report.first_seq, report.last_seq), (4, 1, 4));
}

#[tokio::test]
async fn refuse_mode_refuses_while_too_much_is_pending() {
    let dir = tempfile::tempdir().unwrap();
    let auditor = start(
        &file_config("on_failure = \"refuse\"\nmax_pending = 2"),
        dir.path(),
    );
    std::fs::rename(dir.path().join("logs"), dir.path().join("gone")).unwrap();
    for i in 0..5 {
        auditor.emit(statement(&format!("SELECT {i}")));
    }
    // Nothing is dropped in refuse mode, however much waits.
    eventually("failure", || !auditor.stats().healthy).await;
    assert_eq!(auditor.stats().pending, 5);
    assert_eq!(auditor.stats().dropped, 0);
    std::fs::create_dir(dir.path().join("logs")).unwrap();
    eventually("recovery", || auditor.refusal().is_none()).await;
    auditor.flush().await;
    assert_eq!(records(&dir.path().join("logs/audit.jsonl")).len(), 5);
}

#[tokio::test]
async fn continue_mode_drops_only_beyond_max_pending() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let auditor = start(&file_config("max_pending = 5"), dir.path());
    auditor.emit(AuditEvent::Login { who: who() });
    auditor.flush().await;

    std::fs::rename(&logs, dir.path().join("logs-away")).unwrap();
    for i in 0..12 {
        auditor.emit(statement(&format!("SELECT {i}")));
    }
    eventually("drops", || auditor.stats().dropped == 7).await;
    assert_eq!(auditor.stats().pending, 5);
    assert!(auditor.refusal().is_none());

    std::fs::create_dir(&logs).unwrap();
    eventually("recovery", || auditor.stats().pending == 0).await;
    auditor.flush().await;
    let stats = auditor.stats();
    assert_eq!((stats.written, stats.dropped, stats.healthy), (6, 7, true));
    let lines = records(&logs.join("audit.jsonl"));
    let statements: Vec<&str> = lines
        .iter()
        .map(|l| l["statement"].as_str().unwrap())
        .collect();
    assert_eq!(
        statements,
        ["SELECT 7", "SELECT 8", "SELECT 9", "SELECT 10", "SELECT 11"]
    );
    let files: Vec<PathBuf> = vec![
        dir.path().join("logs-away/audit.jsonl"),
        logs.join("audit.jsonl"),
    ];
    assert_eq!(verify(&files).unwrap().last_seq, 6);
}

#[tokio::test]
async fn s3_batches_are_objects_in_day_partitions() {
    use futures::TryStreamExt;
    use object_store::{ObjectStore, ObjectStoreExt};

    let store = Arc::new(object_store::memory::InMemory::new());
    let sink = S3Sink::with_store(
        store.clone(),
        "s3://bucket/audit",
        "audit",
        3,
        Duration::from_secs(3600),
    )
    .unwrap();
    let config = config("format = \"ocsf\"\n[s3]\nurl = \"s3://bucket/audit\"\nbatch_events = 3\n");
    let auditor = Auditor::with_sinks(
        &config,
        vec![Sink::s3(sink)],
        &tokio::runtime::Handle::current(),
    );
    for i in 0..7 {
        auditor.emit(statement(&format!("SELECT {i}")));
    }
    // Two full batches go at once; the last record waits for its batch to fill…
    eventually("two batches", || auditor.stats().written == 6).await;
    assert_eq!(auditor.stats().pending, 1);
    // …or for a flush.
    auditor.flush().await;
    assert_eq!(auditor.stats().written, 7);

    let objects: Vec<_> = store.list(None).try_collect().await.unwrap();
    assert_eq!(objects.len(), 3);
    let mut statements = Vec::new();
    for object in &objects {
        let key = object.location.to_string();
        let parts: Vec<&str> = key.split('/').collect();
        assert_eq!(parts.len(), 3, "{key}");
        assert_eq!(parts[0], "audit");
        assert!(
            parts[1].starts_with("dt=") && parts[1].len() == "dt=2024-01-01".len(),
            "{key}"
        );
        let name = parts[2];
        assert!(
            name.starts_with("sluice-") && name.ends_with(".jsonl"),
            "{key}"
        );
        assert_eq!(
            name.len(),
            "sluice-20240101T000000-0123abcd.jsonl".len(),
            "{key}"
        );
        let bytes = store
            .get(&object.location)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        for line in std::str::from_utf8(&bytes).unwrap().lines() {
            let record: Value = serde_json::from_str(line).unwrap();
            assert!(record.get("seq").is_none() && record.get("prev").is_none());
            assert_eq!(record["class_uid"], 6005);
            statements.push(
                record["query_info"]["query_string"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
        }
    }
    statements.sort();
    assert_eq!(statements.len(), 7);
    assert_eq!(statements[0], "SELECT 0");
}

#[test]
fn s3_batches_hold_one_day() {
    let sink = S3Sink::with_store(
        Arc::new(object_store::memory::InMemory::new()),
        "s3://b",
        "",
        10,
        Duration::from_secs(60),
    )
    .unwrap();
    let at = |s: &str| Line {
        time: s.parse().unwrap(),
        body: "{}".into(),
    };
    let lines = [
        at("2024-01-01T23:59:59Z"),
        at("2024-01-01T23:59:59.5Z"),
        at("2024-01-02T00:00:00Z"),
    ];
    assert_eq!(sink.batch_len(lines.iter()), 2);
    assert_eq!(sink.batch_len(lines[2..].iter()), 1);
    let key = sink.key(lines[0].time, 0xabc).unwrap();
    assert_eq!(
        key.as_ref(),
        "dt=2024-01-01/sluice-20240101T235959-00000abc.jsonl"
    );
}
