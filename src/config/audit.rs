//! `[audit]`: the audit trail — one record per login, failed login, logoff and
//! (unless `statements = false`) statement, written to one or more sinks.

use std::path::PathBuf;

use serde::Deserialize;

/// The audit trail. Present → on; at least one sink (`file`, `stdout`, `s3`) is required.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// How each record is shaped: `json` (Sluice's own fields, the default) or `ocsf`
    /// (OCSF 1.3 Authentication / Datastore Activity objects).
    #[serde(default)]
    pub format: AuditFormat,
    /// Whether bound parameters of extended-protocol statements are recorded. Off by
    /// default: parameters carry data values (and sometimes secrets).
    #[serde(default)]
    pub log_parameters: bool,
    /// What happens while a sink cannot write: `continue` (serve on, buffer up to
    /// `max_pending` records, then drop the oldest) or `refuse` (statements fail with
    /// 58030 until every sink writes again; nothing is dropped).
    #[serde(default)]
    pub on_failure: AuditOnFailure,
    /// Whether statements are recorded; `false` records logins and logoffs only.
    #[serde(default = "default_statements")]
    pub statements: bool,
    /// Records held in memory while a sink is failing (or an S3 batch is filling).
    /// With `on_failure = "refuse"`, statements are also refused while more than
    /// this many records wait.
    #[serde(default = "default_max_pending")]
    pub max_pending: usize,
    /// Hash-chained JSON lines in a local file, rotated by size.
    pub file: Option<AuditFileConfig>,
    /// JSON lines on standard output (for a container's log collector); an empty table.
    pub stdout: Option<AuditStdoutConfig>,
    /// Batches of JSON lines as objects in S3.
    pub s3: Option<AuditS3Config>,
}

/// The shape of each audit record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditFormat {
    /// Sluice's event fields as they are (README "Audit trail").
    #[default]
    Json,
    /// Open Cybersecurity Schema Framework 1.3 classes 3002 and 6005.
    Ocsf,
}

/// Whether statements are served while the audit trail cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditOnFailure {
    /// Keep serving; records beyond `max_pending` are dropped (and counted).
    #[default]
    Continue,
    /// Refuse statements (58030) while a sink is failing or too much is pending.
    Refuse,
}

/// `[audit.file]`: JSON lines, each carrying the SHA-256 of the line before it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditFileConfig {
    /// The live file; relative to the config file's directory. Rotated files are
    /// `<path>.<UTC yyyymmddThhmmss.ffffff>` beside it.
    pub path: PathBuf,
    /// The file is rotated before a write would grow it past this many MiB (≥ 1).
    #[serde(default = "default_max_size_mb")]
    pub max_size_mb: u64,
    /// Rotated files kept; older ones are deleted (0 keeps none).
    #[serde(default = "default_keep")]
    pub keep: usize,
}

/// `[audit.stdout]`: no settings; its presence turns the sink on.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditStdoutConfig {}

/// `[audit.s3]`: one object of JSON lines per batch.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditS3Config {
    /// `s3://bucket` or `s3://bucket/prefix`; objects are
    /// `<prefix>/dt=YYYY-MM-DD/sluice-<yyyymmddThhmmss>-<8 hex>.jsonl`.
    pub url: String,
    /// An object is written when this many records wait…
    #[serde(default = "default_batch_events")]
    pub batch_events: usize,
    /// …or when the oldest waiting record is this many seconds old.
    #[serde(default = "default_batch_secs")]
    pub batch_secs: u64,
    /// Endpoint override (moto, MinIO); default: AWS's endpoint for the region.
    pub endpoint: Option<String>,
    /// Region of the bucket (default: `AWS_REGION`/`AWS_DEFAULT_REGION`, else us-east-1).
    pub region: Option<String>,
    /// Whether an `http://` endpoint may be used (records then travel unencrypted).
    #[serde(default)]
    pub allow_http: bool,
}

impl AuditS3Config {
    /// The bucket and the key prefix (without slashes at either end) of `url`.
    pub fn bucket_and_prefix(&self) -> Option<(&str, &str)> {
        let rest = self.url.strip_prefix("s3://")?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        (!bucket.is_empty()).then_some((bucket, prefix.trim_matches('/')))
    }
}

fn default_statements() -> bool {
    true
}
fn default_max_pending() -> usize {
    100_000
}
fn default_max_size_mb() -> u64 {
    100
}
fn default_keep() -> usize {
    10
}
fn default_batch_events() -> usize {
    10_000
}
fn default_batch_secs() -> u64 {
    60
}

impl AuditConfig {
    /// Checks values serde cannot; errors carry the full key (`audit.…`).
    pub(super) fn validate(&self) -> Result<(), (String, String)> {
        let err = |key: &str, message: &str| Err((format!("audit.{key}"), message.to_owned()));
        if self.file.is_none() && self.stdout.is_none() && self.s3.is_none() {
            return Err((
                "audit".into(),
                "configure at least one sink: [audit.file], [audit.stdout] or [audit.s3]".into(),
            ));
        }
        if self.max_pending == 0 {
            return err("max_pending", "must be at least 1");
        }
        if let Some(file) = &self.file {
            if file.path.as_os_str().is_empty() {
                return err("file.path", "must not be empty");
            }
            if !(1..=1024 * 1024).contains(&file.max_size_mb) {
                return err("file.max_size_mb", "must be from 1 to 1048576 (1 TiB)");
            }
        }
        if let Some(s3) = &self.s3 {
            if s3.bucket_and_prefix().is_none() {
                return err("s3.url", "must be s3://bucket or s3://bucket/prefix");
            }
            if s3.batch_events == 0 || s3.batch_events > self.max_pending {
                return Err((
                    "audit.s3.batch_events".into(),
                    format!(
                        "must be from 1 to audit.max_pending ({}): a filling batch is pending",
                        self.max_pending
                    ),
                ));
            }
            if !(1..=86_400).contains(&s3.batch_secs) {
                return err("s3.batch_secs", "must be from 1 to 86400 seconds");
            }
            if let Some(endpoint) = &s3.endpoint {
                if endpoint.starts_with("http://") {
                    if !s3.allow_http {
                        return err(
                            "s3.endpoint",
                            "is http://: audit records would travel unencrypted; set audit.s3.allow_http = true to allow it (moto, MinIO on a trusted network)",
                        );
                    }
                } else if !endpoint.starts_with("https://") {
                    return err("s3.endpoint", "must be an http:// or https:// URL");
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn audit(text: &str) -> Result<AuditConfig, String> {
        let config: AuditConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        config.validate().map_err(|(k, m)| format!("`{k}`: {m}"))?;
        Ok(config)
    }

    #[test]
    fn defaults_and_every_key() {
        let c = audit("[file]\npath = \"audit/a.jsonl\"\n").unwrap();
        assert_eq!(c.format, AuditFormat::Json);
        assert_eq!(c.on_failure, AuditOnFailure::Continue);
        assert!(c.statements && !c.log_parameters);
        assert_eq!(c.max_pending, 100_000);
        let file = c.file.unwrap();
        assert_eq!((file.max_size_mb, file.keep), (100, 10));
        let c = audit(
            "format = \"ocsf\"\nlog_parameters = true\non_failure = \"refuse\"\nstatements = false\nmax_pending = 50\n\
             [stdout]\n[s3]\nurl = \"s3://b/audit/\"\nbatch_events = 10\nbatch_secs = 5\n\
             endpoint = \"http://127.0.0.1:5000\"\nregion = \"eu-west-1\"\nallow_http = true\n",
        )
        .unwrap();
        assert_eq!(c.format, AuditFormat::Ocsf);
        assert_eq!(c.on_failure, AuditOnFailure::Refuse);
        assert!(c.stdout.is_some() && c.file.is_none());
        let s3 = c.s3.unwrap();
        assert_eq!(s3.bucket_and_prefix(), Some(("b", "audit")));
    }

    #[test]
    fn validation_names_the_key() {
        let e = audit("statements = true\n").unwrap_err();
        assert!(
            e.contains("`audit`") && e.contains("at least one sink"),
            "{e}"
        );
        let e = audit("[file]\npath = \"a\"\nmax_size_mb = 0\n").unwrap_err();
        assert!(e.contains("audit.file.max_size_mb"), "{e}");
        let e = audit("max_pending = 0\n[stdout]\n").unwrap_err();
        assert!(e.contains("audit.max_pending"), "{e}");
        let e = audit("[s3]\nurl = \"https://b/x\"\n").unwrap_err();
        assert!(e.contains("audit.s3.url"), "{e}");
        let e =
            audit("[s3]\nurl = \"s3://b\"\nendpoint = \"http://localhost:9000\"\n").unwrap_err();
        assert!(
            e.contains("audit.s3.endpoint") && e.contains("allow_http"),
            "{e}"
        );
        let e = audit("max_pending = 10\n[s3]\nurl = \"s3://b\"\n").unwrap_err();
        assert!(e.contains("audit.s3.batch_events"), "{e}");
    }

    #[test]
    fn serde_rejects_unknown_values_and_keys() {
        let e = audit("on_failure = \"ignore\"\n[stdout]\n").unwrap_err();
        assert!(
            e.contains("on_failure") && e.contains("`continue`") && e.contains("`refuse`"),
            "{e}"
        );
        let e = audit("format = \"cef\"\n[stdout]\n").unwrap_err();
        assert!(e.contains("`json`") && e.contains("`ocsf`"), "{e}");
        let e = audit("[stdout]\ncolor = true\n").unwrap_err();
        assert!(e.contains("color"), "{e}");
        let e = audit("[file]\npath = \"a\"\nmax_files = 3\n").unwrap_err();
        assert!(e.contains("max_files"), "{e}");
    }
}
