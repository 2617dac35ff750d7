//! `[lake.glue]`: the Glue Data Catalog and the S3 data it describes.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlueLakeConfig {
    /// AWS region of the catalog (default: the standard chain's region).
    pub region: Option<String>,
    /// The catalog's account id (default: the caller's account).
    pub catalog_id: Option<String>,
    /// Glue databases exposed as schemas: `*` patterns, matched case-insensitively.
    #[serde(default = "everything")]
    pub databases: Vec<String>,
    /// Databases hidden even when `databases` matches them.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// AWS API endpoint override for Glue (e.g. a local `moto_server`), for testing.
    pub aws_endpoint: Option<String>,
    /// How long databases, tables and partition lists are served from memory before
    /// Glue is asked again. A failed refresh keeps serving what is cached.
    #[serde(default = "default_metadata_ttl")]
    pub metadata_ttl_secs: u64,
    /// How long the file listing of one table or partition location is reused.
    #[serde(default = "default_listing_ttl")]
    pub listing_ttl_secs: u64,
    #[serde(default)]
    pub s3: S3Config,
    /// Whether table locations may be `file://` paths on the gateway's own disk.
    /// Off by default: whoever can edit the Glue catalog could otherwise point a
    /// table at the gateway's config, keys or tokens.
    #[serde(default)]
    pub allow_local_locations: bool,
}

/// Settings of the S3 client that reads table data (`object_store`'s S3 store).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// Endpoint override (e.g. a local `moto_server` or MinIO).
    pub endpoint: Option<String>,
    /// Path-style requests (`endpoint/bucket/key`) instead of virtual-hosted style.
    #[serde(default)]
    pub path_style: bool,
    /// Region of the buckets (default: `lake.glue.region`).
    pub region: Option<String>,
}

fn everything() -> Vec<String> {
    vec!["*".into()]
}

fn default_metadata_ttl() -> u64 {
    300
}

fn default_listing_ttl() -> u64 {
    60
}

impl GlueLakeConfig {
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        for (key, endpoint) in [
            ("aws_endpoint", &self.aws_endpoint),
            ("s3.endpoint", &self.s3.endpoint),
        ] {
            if let Some(e) = endpoint
                && !(e.starts_with("http://") || e.starts_with("https://"))
            {
                return Err((key, "must be an http:// or https:// URL".into()));
            }
        }
        if self.databases.is_empty() {
            return Err((
                "databases",
                "list at least one pattern (`[\"*\"]` exposes every database)".into(),
            ));
        }
        for (key, patterns) in [("databases", &self.databases), ("exclude", &self.exclude)] {
            if patterns.iter().any(|p| p.trim().is_empty()) {
                return Err((key, "patterns must not be empty".into()));
            }
        }
        if self.metadata_ttl_secs == 0 {
            return Err((
                "metadata_ttl_secs",
                "must be at least 1 (every query would call Glue)".into(),
            ));
        }
        Ok(())
    }

    /// Whether a Glue database is exposed.
    pub fn exposes(&self, database: &str) -> bool {
        let db = database.to_lowercase();
        let matches = |p: &String| super::values::glob(&p.to_lowercase(), &db);
        self.databases.iter().any(matches) && !self.exclude.iter().any(matches)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> GlueLakeConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn database_patterns() {
        let c = config("databases = [\"blog-*\", \"sales\"]\nexclude = [\"*-tmp\"]\n");
        assert!(c.exposes("blog-db"));
        assert!(c.exposes("SALES"));
        assert!(!c.exposes("blog-tmp"));
        assert!(!c.exposes("hr"));
        assert!(config("").exposes("anything"));
    }

    #[test]
    fn validation_names_the_key() {
        let c = config("aws_endpoint = \"localhost:5000\"");
        assert_eq!(c.validate().unwrap_err().0, "aws_endpoint");
        let c = config("[s3]\nendpoint = \"s3.local\"");
        assert_eq!(c.validate().unwrap_err().0, "s3.endpoint");
        let c = config("databases = []");
        assert_eq!(c.validate().unwrap_err().0, "databases");
        let c = config("metadata_ttl_secs = 0");
        assert_eq!(c.validate().unwrap_err().0, "metadata_ttl_secs");
        assert!(toml::from_str::<GlueLakeConfig>("regoin = \"x\"").is_err());
    }
}
