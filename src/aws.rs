//! The one way Sluice talks to AWS APIs (Redshift, Glue): the standard credential
//! chain (env, profile, SSO, web identity, IMDS), rustls with the ring provider (no
//! aws-lc build), the SDK's standard retry with backoff, and bounded timeouts.

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
// The smithy error types every AWS SDK crate re-exports (one type across services).
use aws_sdk_glue::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

/// Loads the shared SDK configuration for one region / endpoint override.
pub async fn sdk_config(region: Option<&str>, endpoint: Option<&str>) -> aws_config::SdkConfig {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .retry_config(RetryConfig::standard().with_max_attempts(5))
        .timeout_config(
            TimeoutConfig::builder()
                .operation_attempt_timeout(Duration::from_secs(10))
                .operation_timeout(Duration::from_secs(30))
                .build(),
        );
    if let Some(region) = region {
        loader = loader.region(aws_config::Region::new(region.to_owned()));
    }
    if let Some(endpoint) = endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    loader.load().await
}

/// "Operation failed: Code: message" for service errors, the error chain otherwise
/// (no credentials, endpoint unreachable). Neither carries keys or signatures.
pub fn describe_error<E, R>(operation: &str, e: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match e.as_service_error() {
        Some(service) => format!(
            "{operation} failed: {}: {}",
            service.code().unwrap_or("UnknownError"),
            service.message().unwrap_or("no message")
        ),
        None => format!("{operation} failed: {}", DisplayErrorContext(e)),
    }
}
