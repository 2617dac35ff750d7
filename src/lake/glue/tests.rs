//! Catalog paging, refresh failures, local-location refusal and file filtering.

use super::shared::is_data_file;
use super::*;
use object_store::ObjectMeta;
use std::sync::Mutex;

#[tokio::test]
async fn paging_follows_every_token() {
    let seen = Mutex::new(Vec::new());
    let pages = collect_pages(|token| {
        seen.lock().unwrap().push(token.clone());
        async move {
            Ok(match token.as_deref() {
                None => (vec![1, 2], Some("p2".to_owned())),
                Some("p2") => (vec![3], Some("p3".to_owned())),
                Some("p3") => (vec![], Some("p4".to_owned())),
                Some("p4") => (vec![4, 5], Some(String::new())),
                Some(other) => return Err(format!("unexpected token {other}")),
            })
        }
    })
    .await
    .unwrap();
    assert_eq!(pages, vec![1, 2, 3, 4, 5]);
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            None,
            Some("p2".into()),
            Some("p3".into()),
            Some("p4".into())
        ]
    );
}

#[tokio::test]
async fn paging_stops_on_errors() {
    let mut calls = 0;
    let r: std::result::Result<Vec<u8>, String> = collect_pages(|token| {
        calls += 1;
        async move {
            match token {
                None => Ok((vec![1], Some("next".into()))),
                Some(_) => Err("ThrottlingException".into()),
            }
        }
    })
    .await;
    assert_eq!(r.unwrap_err(), "ThrottlingException");
    assert_eq!(calls, 2);
}

#[tokio::test]
async fn local_locations_are_refused_unless_allowed() {
    let client = aws_sdk_glue::Client::from_conf(
        aws_sdk_glue::Config::builder()
            .behavior_version(aws_sdk_glue::config::BehaviorVersion::latest())
            .region(aws_sdk_glue::config::Region::new("us-east-1"))
            .build(),
    );
    let mut config: GlueLakeConfig = toml::from_str("").unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.csv"), "1\n").unwrap();
    let location = format!("file://{}/", dir.path().display());
    let runtime = Arc::new(RuntimeEnv::default());
    let refused = GlueShared::new(client.clone(), &config, runtime.clone())
        .list_files(&runtime, "db", &location)
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("local disk"), "{refused}");
    config.allow_local_locations = true;
    let (_, files) = GlueShared::new(client, &config, runtime.clone())
        .list_files(&runtime, "db", &location)
        .await
        .unwrap();
    assert_eq!(files.len(), 1);
}

#[test]
fn hidden_files_are_skipped() {
    let prefix = object_store::path::Path::from("t/year=2017");
    let meta = |p: &str, size: u64| ObjectMeta {
        location: object_store::path::Path::from(p),
        last_modified: chrono::Utc::now(),
        size,
        e_tag: None,
        version: None,
    };
    assert!(is_data_file(
        &prefix,
        &meta("t/year=2017/part-0.parquet", 10)
    ));
    assert!(is_data_file(
        &prefix,
        &meta("t/year=2017/sub/part-0.parquet", 10)
    ));
    assert!(!is_data_file(&prefix, &meta("t/year=2017/_SUCCESS", 10)));
    assert!(!is_data_file(
        &prefix,
        &meta("t/year=2017/.hive-staging/x", 10)
    ));
    assert!(!is_data_file(
        &prefix,
        &meta("t/year=2017/_temporary/0/x", 10)
    ));
    assert!(!is_data_file(&prefix, &meta("t/year=2017/empty", 0)));
    assert!(!is_data_file(&prefix, &meta("t/year=2017_$folder$", 10)));
}
