//! The HTTP side of identity: one way to build a client and fetch JSON from an
//! identity provider (JWKS, Graph), and the `openidconnect` adapter through which
//! discovery documents and the device-code flow use that same client.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use openidconnect::core::{
    CoreAuthDisplay, CoreClaimName, CoreClaimType, CoreClientAuthMethod, CoreGrantType,
    CoreJsonWebKey, CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm,
    CoreResponseMode, CoreResponseType, CoreSubjectIdentifierType,
};
use openidconnect::{
    AdditionalProviderMetadata, DeviceAuthorizationUrl, HttpRequest, HttpResponse, ProviderMetadata,
};
use serde_json::Value;

/// An HTTP client over rustls with the ring provider (the one the listener uses).
/// Redirects are not followed: an identity provider's URLs are configured or come
/// from its discovery document, and following redirects invites SSRF.
pub fn client(timeout: Duration) -> Result<reqwest::Client, String> {
    // reqwest is built without a crypto provider of its own; make ring the default.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("cannot create HTTP client: {e}"))
}

/// `openidconnect`'s HTTP client trait over Sluice's reqwest client, so the crate
/// brings no HTTP or TLS stack of its own.
#[derive(Clone)]
pub struct OidcHttp(pub reqwest::Client);

#[derive(Debug, thiserror::Error)]
pub enum OidcHttpError {
    #[error(transparent)]
    Reqwest(#[from] reqwest::Error),
    #[error(transparent)]
    Http(#[from] openidconnect::http::Error),
}

impl<'c> openidconnect::AsyncHttpClient<'c> for OidcHttp {
    type Error = OidcHttpError;
    type Future =
        Pin<Box<dyn Future<Output = Result<HttpResponse, Self::Error>> + Send + Sync + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let response = self.0.execute(request.try_into()?).await?;
            let mut builder = openidconnect::http::Response::builder()
                .status(response.status())
                .version(response.version());
            for (name, value) in response.headers() {
                builder = builder.header(name, value);
            }
            Ok(builder.body(response.bytes().await?.to_vec())?)
        })
    }
}

/// What Sluice reads from a discovery document beyond the core fields: the device
/// authorization endpoint (RFC 8628), which `openidconnect`'s core metadata omits.
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize)]
pub struct DeviceEndpoint {
    pub device_authorization_endpoint: Option<DeviceAuthorizationUrl>,
}

impl AdditionalProviderMetadata for DeviceEndpoint {}

/// An issuer's OpenID Connect discovery document.
pub type IssuerMetadata = ProviderMetadata<
    DeviceEndpoint,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

/// Fetches and parses `issuer`'s discovery document (from `configured` if set) with
/// `openidconnect`'s metadata types, and checks that it names `issuer` itself
/// (OpenID Connect Discovery §4.3): a document for another issuer is refused.
pub async fn discover(
    http: &reqwest::Client,
    issuer: &str,
    configured: Option<&str>,
) -> Result<IssuerMetadata, String> {
    let url = discovery_url(issuer, configured);
    let doc = get_json(http, &url).await?;
    let metadata: IssuerMetadata = serde_json::from_value(doc)
        .map_err(|e| format!("{url} is not an OpenID Connect discovery document: {e}"))?;
    let named = metadata.issuer().as_str();
    if named.trim_end_matches('/') != issuer.trim_end_matches('/') {
        return Err(format!("{url} describes issuer `{named}`, not `{issuer}`"));
    }
    Ok(metadata)
}

/// The discovery document of `issuer`, unless a URL is configured.
pub fn discovery_url(issuer: &str, configured: Option<&str>) -> String {
    configured.map(str::to_owned).unwrap_or_else(|| {
        format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        )
    })
}

/// GETs `url` and parses the body as JSON; errors name the URL.
pub async fn get_json(http: &reqwest::Client, url: &str) -> Result<Value, String> {
    let resp = http
        .get(url)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("GET {url}: HTTP {}", resp.status()));
    }
    let body = resp.bytes().await.map_err(|e| format!("GET {url}: {e}"))?;
    serde_json::from_slice(&body).map_err(|e| format!("GET {url}: not JSON: {e}"))
}
