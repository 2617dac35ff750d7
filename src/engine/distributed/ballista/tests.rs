//! The scheduler client's set-up, without a scheduler.

use super::*;

fn config(toml: &str) -> DistributedConfig {
    toml::from_str(toml).expect("config")
}

#[tokio::test]
async fn connecting_checks_tls_files_and_metadata_but_not_the_scheduler() {
    // Nothing listens there: the connection is made on first use.
    let plain = config("scheduler = \"http://127.0.0.1:9\"\nmetadata = { tenant = \"a\" }");
    assert!(Cluster::connect(&plain, |p| p.to_owned()).is_ok());

    let dir = tempfile::tempdir().expect("tempdir");
    let missing = config("scheduler = \"https://sched:443\"\nca_file = \"nowhere.pem\"");
    let err = Cluster::connect(&missing, |p| dir.path().join(p))
        .err()
        .expect("missing CA file");
    assert!(
        err.starts_with("engine.distributed.ca_file: cannot read"),
        "{err}"
    );

    let cert = rcgen::generate_simple_self_signed(vec!["sched".to_string()]).expect("certificate");
    std::fs::write(dir.path().join("ca.pem"), cert.cert.pem()).expect("write");
    let tls = config("scheduler = \"https://sched:443\"\nca_file = \"ca.pem\"");
    assert!(Cluster::connect(&tls, |p| dir.path().join(p)).is_ok());
    let roots = config("scheduler = \"https://sched:443\"");
    assert!(Cluster::connect(&roots, |p| p.to_owned()).is_ok());
}

#[test]
fn messages_keep_their_first_line_and_a_bounded_length() {
    assert_eq!(first_line("a\nplan dump"), "a");
    let long = "é".repeat(400);
    let cut = first_line(&long);
    assert!(cut.ends_with('…') && cut.len() <= 304, "{}", cut.len());
}

#[test]
fn configured_metadata_goes_on_every_call() {
    use tonic::service::Interceptor;
    let value = AsciiMetadataValue::try_from("Bearer x").expect("value");
    let mut metadata = Metadata(Arc::new(vec![(
        AsciiMetadataKey::from_static("authorization"),
        value,
    )]));
    let request = metadata.call(tonic::Request::new(())).expect("intercepted");
    assert_eq!(
        request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer x")
    );
}
