//! Batches of records as S3 objects (JSON lines, without the chain fields), under
//! Hive-style day partitions so the lake can query them:
//! `<prefix>/dt=YYYY-MM-DD/sluice-<yyyymmddThhmmss>-<8 hex>.jsonl`, named after the
//! batch's first record. A batch holds records of one UTC day only, so `dt` is
//! every record's date. A failed PUT keeps the batch for the next attempt; a PUT
//! whose answer was lost may leave the batch twice (at-least-once).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutOptions, PutPayload};

use super::Line;
use crate::config::AuditS3Config;

pub(super) struct S3Sink {
    store: Arc<dyn ObjectStore>,
    url: String,
    /// Key prefix without slashes at either end; may be empty.
    prefix: String,
    batch_events: usize,
    batch_interval: Duration,
}

impl S3Sink {
    /// An S3 store for the configured bucket. Credentials and unset settings come
    /// from the environment (`AWS_ACCESS_KEY_ID`, `AWS_REGION`, web identity,
    /// container and instance metadata: `object_store`'s chain).
    pub(super) fn new(config: &AuditS3Config) -> Result<S3Sink, String> {
        let (bucket, prefix) = config
            .bucket_and_prefix()
            .ok_or_else(|| format!("audit.s3.url `{}` is not s3://bucket[/prefix]", config.url))?;
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_allow_http(config.allow_http);
        if let Some(region) = &config.region {
            builder = builder.with_region(region);
        }
        if let Some(endpoint) = &config.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        let store = builder
            .build()
            .map_err(|e| format!("cannot set up S3 for {}: {e}", config.url))?;
        S3Sink::with_store(
            Arc::new(store),
            &config.url,
            prefix,
            config.batch_events,
            Duration::from_secs(config.batch_secs),
        )
    }

    pub(super) fn with_store(
        store: Arc<dyn ObjectStore>,
        url: &str,
        prefix: &str,
        batch_events: usize,
        batch_interval: Duration,
    ) -> Result<S3Sink, String> {
        if !prefix.is_empty() {
            ObjectPath::parse(prefix)
                .map_err(|e| format!("{url}: `{prefix}` is not a usable key prefix: {e}"))?;
        }
        Ok(S3Sink {
            store,
            url: url.to_owned(),
            prefix: prefix.to_owned(),
            batch_events: batch_events.max(1),
            batch_interval,
        })
    }

    pub(super) fn url(&self) -> &str {
        &self.url
    }

    pub(super) fn batch_events(&self) -> usize {
        self.batch_events
    }

    pub(super) fn batch_interval(&self) -> Duration {
        self.batch_interval
    }

    /// How many of the waiting records go into the next object: up to
    /// `batch_events`, all of the first one's UTC day.
    pub(super) fn batch_len<'a>(&self, mut waiting: impl Iterator<Item = &'a Line>) -> usize {
        let Some(first) = waiting.next() else {
            return 0;
        };
        let day = first.time.date_naive();
        1 + waiting
            .take(self.batch_events - 1)
            .take_while(|l| l.time.date_naive() == day)
            .count()
    }

    pub(super) fn key(&self, first: DateTime<Utc>, random: u32) -> Result<ObjectPath, String> {
        let name = format!(
            "dt={}/sluice-{}-{random:08x}.jsonl",
            first.format("%Y-%m-%d"),
            first.format("%Y%m%dT%H%M%S")
        );
        let key = if self.prefix.is_empty() {
            name
        } else {
            format!("{}/{name}", self.prefix)
        };
        ObjectPath::parse(&key).map_err(|e| format!("cannot name an object `{key}`: {e}"))
    }

    /// Writes one object holding `lines`.
    pub(super) async fn put(&self, lines: &[Line]) -> Result<(), String> {
        let Some(first) = lines.first() else {
            return Ok(());
        };
        let key = self.key(first.time, rand::random())?;
        let mut body = Vec::with_capacity(lines.iter().map(|l| l.body.len() + 1).sum());
        for line in lines {
            body.extend_from_slice(line.body.as_bytes());
            body.push(b'\n');
        }
        self.store
            .put_opts(&key, PutPayload::from(body), PutOptions::default())
            .await
            .map(|_| ())
            .map_err(|e| format!("cannot put {key}: {e}"))
    }
}
