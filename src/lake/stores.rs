//! Where lake files are read from: DataFusion's object store registry, extended to
//! create an `object_store` S3 store for each bucket a table location names
//! (`s3://`, `s3a://`, `s3n://`), signed with credentials from the AWS standard chain.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_sdk_glue::config::{ProvideCredentials, SharedCredentialsProvider};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry};
use object_store::ObjectStore;
use object_store::aws::{AmazonS3Builder, AwsCredential};
use object_store::client::{CredentialProvider, SpawnedReqwestConnector};
use url::Url;

/// How S3 buckets are reached.
#[derive(Debug, Clone)]
pub struct S3Settings {
    /// The runtime S3 requests run on: the network runtime, so CPU-bound query
    /// operators on the query runtime cannot delay them.
    pub io: tokio::runtime::Handle,
    pub region: String,
    pub endpoint: Option<String>,
    pub path_style: bool,
    pub credentials: Option<SharedCredentialsProvider>,
}

#[derive(Debug)]
pub struct LakeStores {
    s3: Option<S3Settings>,
    buckets: Mutex<HashMap<String, Arc<dyn ObjectStore>>>,
    other: DefaultObjectStoreRegistry,
}

impl LakeStores {
    pub fn new(s3: Option<S3Settings>) -> LakeStores {
        LakeStores {
            s3,
            buckets: Mutex::new(HashMap::new()),
            other: DefaultObjectStoreRegistry::new(),
        }
    }

    fn bucket(&self, bucket: &str) -> Result<Arc<dyn ObjectStore>> {
        let Some(s3) = &self.s3 else {
            return Err(DataFusionError::Configuration(format!(
                "table data is in S3 bucket `{bucket}`, but S3 is not configured (set [lake.glue])"
            )));
        };
        let mut buckets = self
            .buckets
            .lock()
            .map_err(|_| DataFusionError::Internal("object store lock poisoned".into()))?;
        if let Some(store) = buckets.get(bucket) {
            return Ok(store.clone());
        }
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region(&s3.region)
            .with_virtual_hosted_style_request(!s3.path_style)
            .with_http_connector(SpawnedReqwestConnector::new(s3.io.clone()));
        if let Some(endpoint) = &s3.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        if let Some(provider) = &s3.credentials {
            builder = builder.with_credentials(Arc::new(ChainCredentials {
                provider: provider.clone(),
                io: s3.io.clone(),
                cached: tokio::sync::Mutex::new(None),
            }));
        }
        let store = super::counted::CountedStore::wrap(Arc::new(
            builder
                .build()
                .map_err(|e| DataFusionError::ObjectStore(Box::new(e)))?,
        ));
        buckets.insert(bucket.to_owned(), store.clone());
        Ok(store)
    }
}

/// Refuses a location on the gateway's own disk unless the catalog allows them
/// (whoever edits a Glue catalog could otherwise expose the gateway's files).
pub fn refuse_local(store_url: &Url, location: &str, allowed: bool) -> Result<()> {
    if store_url.scheme() != "file" || allowed {
        return Ok(());
    }
    Err(DataFusionError::External(Box::new(
        crate::error::PgError::new(
            crate::error::SqlState::INSUFFICIENT_PRIVILEGE,
            format!("table location {location} is on the gateway's local disk"),
        )
        .with_hint("local locations are refused unless lake.glue.allow_local_locations = true"),
    )))
}

/// Refuses a physical plan that reads files from the gateway's own disk unless
/// allowed: a Delta log or Iceberg manifest on S3 may still name `file://` paths.
pub fn refuse_local_files(
    plan: &Arc<dyn datafusion::physical_plan::ExecutionPlan>,
    allowed: bool,
) -> Result<()> {
    use datafusion::datasource::physical_plan::FileScanConfig;
    use datafusion::datasource::source::DataSourceExec;
    if allowed {
        return Ok(());
    }
    if let Some(source) = plan.downcast_ref::<DataSourceExec>()
        && let Some(files) = source.data_source().downcast_ref::<FileScanConfig>()
    {
        let url: &Url = files.object_store_url.as_ref();
        refuse_local(url, url.as_str(), false)?;
    }
    for child in plan.children() {
        refuse_local_files(child, false)?;
    }
    Ok(())
}

/// The `(store URL, path in the store)` of a table or partition location:
/// `s3://bucket/a/b/` → (`s3://bucket`, `a/b`); `file:///x/y` or `/x/y` → local files.
pub fn split_location(location: &str) -> Result<(Url, object_store::path::Path)> {
    let bad = |why: String| DataFusionError::Plan(format!("table location `{location}`: {why}"));
    if location.starts_with('/') {
        let path = object_store::path::Path::from_filesystem_path(location)
            .map_err(|e| bad(e.to_string()))?;
        return Ok((
            Url::parse("file:///").map_err(|e| bad(e.to_string()))?,
            path,
        ));
    }
    let url = Url::parse(location).map_err(|e| bad(e.to_string()))?;
    match url.scheme() {
        "s3" | "s3a" | "s3n" => {
            let bucket = url
                .host_str()
                .filter(|b| !b.is_empty())
                .ok_or_else(|| bad("no bucket".into()))?;
            let store = Url::parse(&format!("s3://{bucket}")).map_err(|e| bad(e.to_string()))?;
            let path = object_store::path::Path::from_url_path(url.path())
                .map_err(|e| bad(e.to_string()))?;
            Ok((store, path))
        }
        "file" => {
            let path = object_store::path::Path::from_url_path(url.path())
                .map_err(|e| bad(e.to_string()))?;
            Ok((
                Url::parse("file:///").map_err(|e| bad(e.to_string()))?,
                path,
            ))
        }
        other => Err(bad(format!(
            "`{other}://` locations are not supported (s3:// and file:// are)"
        ))),
    }
}

impl ObjectStoreRegistry for LakeStores {
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        self.other.register_store(url, store)
    }

    fn deregister_store(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        self.other.deregister_store(url)
    }

    fn get_store(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        match url.scheme() {
            "s3" | "s3a" | "s3n" => self.bucket(url.host_str().unwrap_or_default()),
            _ => self.other.get_store(url),
        }
    }
}

/// `object_store`'s S3 signer fed from the AWS SDK's credential chain (which, unlike
/// `object_store`'s own, reads profiles and SSO), cached until shortly before expiry.
#[derive(Debug)]
struct ChainCredentials {
    provider: SharedCredentialsProvider,
    /// Credential sources make HTTP calls (IMDS, STS, SSO): on the network runtime,
    /// whichever runtime asks.
    io: tokio::runtime::Handle,
    cached: tokio::sync::Mutex<Option<(Arc<AwsCredential>, Option<SystemTime>)>>,
}

/// Fetch new credentials this long before the old ones expire.
const REFRESH_MARGIN: Duration = Duration::from_secs(300);

#[async_trait]
impl CredentialProvider for ChainCredentials {
    type Credential = AwsCredential;

    async fn get_credential(&self) -> object_store::Result<Arc<AwsCredential>> {
        let mut cached = self.cached.lock().await;
        if let Some((credential, expiry)) = cached.as_ref()
            && expiry.is_none_or(|e| e > SystemTime::now() + REFRESH_MARGIN)
        {
            return Ok(credential.clone());
        }
        let provider = self.provider.clone();
        let fresh = self
            .io
            .spawn(async move { provider.provide_credentials().await })
            .await
            .map_err(|e| object_store::Error::Generic {
                store: "S3",
                source: format!("credential lookup failed: {e}").into(),
            })?
            .map_err(|e| object_store::Error::Generic {
                store: "S3",
                source: format!("no AWS credentials for S3: {e}").into(),
            })?;
        let credential = Arc::new(AwsCredential {
            key_id: fresh.access_key_id().to_owned(),
            secret_key: fresh.secret_access_key().to_owned(),
            token: fresh.session_token().map(str::to_owned),
        });
        *cached = Some((credential.clone(), fresh.expiry()));
        Ok(credential)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_split_into_store_and_path() {
        let (store, path) = split_location("s3://my-bucket/warehouse/taxi/").unwrap();
        assert_eq!(store.as_str(), "s3://my-bucket");
        assert_eq!(path.as_ref(), "warehouse/taxi");
        let (store, _) = split_location("s3a://my-bucket/x").unwrap();
        assert_eq!(store.as_str(), "s3://my-bucket");
        let (store, path) = split_location("file:///data/lake/t/").unwrap();
        assert_eq!(store.as_str(), "file:///");
        assert_eq!(path.as_ref(), "data/lake/t");
        let e = split_location("hdfs://nn/x").unwrap_err().to_string();
        assert!(e.contains("hdfs://"), "{e}");
        assert!(split_location("s3:///x").is_err());
    }
}
