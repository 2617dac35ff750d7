//! Where views live: one directory per view under the configured storage (a local
//! directory or an S3 prefix, through `object_store`):
//!
//! ```text
//! <storage>/<schema>/<name>/view.json          definition and state (the manifest)
//! <storage>/<schema>/<name>/data/<gen>-<random>.parquet
//! <storage>/_views/changes/…                    which views changed (`cluster::journal`)
//! <storage>/_views/leases/<schema>/<name>/<tick> who refreshes a scheduled tick
//! ```
//!
//! A refresh writes new Parquet files first and the manifest last (one `put`, atomic
//! on both stores): a crash in between leaves the previous manifest, naming the
//! previous files, and the orphans are deleted at a later start (once they are a
//! day old: another gateway sharing the storage may be about to name them).

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};

use crate::error::{PgError, SqlState};
use crate::route::view_ddl::ViewName;

/// The persisted definition of a view.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Definition {
    pub query: String,
    #[serde(default)]
    pub refresh_every_secs: Option<u64>,
    #[serde(default)]
    pub refresh_cron: Option<String>,
    #[serde(default)]
    pub incremental_column: Option<String>,
    /// Who created it (`config` for declared views).
    pub owner: String,
    pub created_at: String,
    /// Declared in the config file (cannot be dropped with SQL).
    #[serde(default)]
    pub declared: bool,
}

/// One data file of the current version.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DataFile {
    /// Relative to the view's directory.
    pub path: String,
    pub rows: u64,
    pub bytes: u64,
}

/// The persisted state of a view: its current version and the last refresh.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    pub populated: bool,
    pub files: Vec<DataFile>,
    /// The highest `incremental_column` value stored, as a SQL literal.
    pub high_water: Option<String>,
    /// Counts data-file generations, so new files never reuse a name.
    pub generation: u64,
    pub refreshed_at: Option<String>,
    pub last_duration_ms: Option<u64>,
    pub last_attempt_at: Option<String>,
    pub last_error: Option<String>,
    pub refreshes: u64,
    pub failures: u64,
    /// Where the query last ran: `lake` or `redshift`.
    #[serde(default)]
    pub source: Option<String>,
    /// The data files' columns: (name, Arrow type as text).
    #[serde(default)]
    pub columns: Vec<(String, String)>,
}

/// `schema` without field metadata.
pub(super) fn plain(schema: &SchemaRef) -> SchemaRef {
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| Field::new(f.name(), f.data_type().clone(), true))
            .collect::<Vec<_>>(),
    ))
}

/// Columns as the manifest stores them.
pub fn columns_of(schema: &SchemaRef) -> Vec<(String, String)> {
    schema
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().to_string()))
        .collect()
}

/// The Arrow schema of stored columns.
pub fn schema_of(columns: &[(String, String)]) -> Result<SchemaRef, PgError> {
    let fields = columns
        .iter()
        .map(|(name, ty)| {
            let data_type: DataType = ty
                .parse()
                .map_err(|e| io_error(format!("column {name}: type {ty}: {e}")))?;
            Ok(Field::new(name, data_type, true))
        })
        .collect::<Result<Vec<_>, PgError>>()?;
    Ok(Arc::new(Schema::new(fields)))
}

impl State {
    pub fn rows(&self) -> u64 {
        self.files.iter().map(|f| f.rows).sum()
    }

    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub schema: String,
    pub name: String,
    pub definition: Definition,
    pub state: State,
    /// Counts saves: gateways sharing the storage apply a stored manifest whose
    /// revision is newer than theirs.
    #[serde(default)]
    pub revision: u64,
    /// Random per save: tells two saves of one revision (by two gateways) apart.
    #[serde(default)]
    pub stamp: u64,
}

impl Manifest {
    pub fn view_name(&self) -> ViewName {
        ViewName {
            schema: self.schema.clone(),
            name: self.name.clone(),
        }
    }

    /// Whether `self` (stored) should replace `current` (what this gateway has).
    pub fn supersedes(&self, current: &Manifest) -> bool {
        self.revision > current.revision
            || (self.revision == current.revision && self.stamp != current.stamp)
    }
}

/// Data files older than this that no manifest names are deleted at start (a
/// refresh running on another gateway names its file only when it ends).
pub const ORPHAN_AGE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// The view store: an object store and the prefix views live under.
pub struct Storage {
    pub store: Arc<dyn ObjectStore>,
    root: Path,
    /// `file:///abs/dir` or `s3://bucket/prefix`, without a trailing slash.
    root_url: String,
}

pub(super) fn io_error(what: impl std::fmt::Display) -> PgError {
    PgError::new(
        SqlState::IO_ERROR,
        format!("materialized view storage: {what}"),
    )
}

impl Storage {
    pub fn new(store: Arc<dyn ObjectStore>, root: Path, root_url: String) -> Storage {
        Storage {
            store,
            root,
            root_url: root_url.trim_end_matches('/').to_owned(),
        }
    }

    /// The store and root for a configured location (`location`, the value of the
    /// config key `key`): `s3://bucket/prefix` through the engine's object store
    /// registry, or a directory (relative to the config file; created).
    pub fn open(
        config: &crate::config::Config,
        location: &str,
        key: &str,
        engine: &crate::engine::Engine,
    ) -> Result<Storage, String> {
        let err = |e: String| format!("{key}: {e}");
        let store_of = |url: &url::Url| {
            let url = datafusion::execution::object_store::ObjectStoreUrl::parse(url.as_str())
                .map_err(|e| err(e.to_string()))?;
            engine
                .runtime()
                .object_store(url)
                .map_err(|e| err(e.to_string()))
        };
        if location.starts_with("s3://") {
            let (store_url, path) =
                crate::lake::stores::split_location(location).map_err(|e| err(e.to_string()))?;
            return Ok(Storage::new(
                store_of(&store_url)?,
                path,
                location.to_owned(),
            ));
        }
        let dir = config.resolve(std::path::Path::new(location));
        std::fs::create_dir_all(&dir)
            .map_err(|e| err(format!("cannot create {}: {e}", dir.display())))?;
        let dir = dir
            .canonicalize()
            .map_err(|e| err(format!("{}: {e}", dir.display())))?;
        let path = Path::from_filesystem_path(&dir).map_err(|e| err(e.to_string()))?;
        let url = url::Url::from_directory_path(&dir)
            .map_err(|_| err(format!("{} is not an absolute directory", dir.display())))?;
        let store_url = url::Url::parse("file:///").map_err(|e| err(e.to_string()))?;
        Ok(Storage::new(store_of(&store_url)?, path, url.to_string()))
    }

    /// The prefix everything lives under.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn view_dir(&self, view: &ViewName) -> Path {
        self.root
            .clone()
            .join(view.schema.as_str())
            .join(view.name.as_str())
    }

    fn manifest_path(&self, view: &ViewName) -> Path {
        self.view_dir(view).join("view.json")
    }

    /// The object path of a data file.
    pub fn file_path(&self, view: &ViewName, relative: &str) -> Path {
        let mut p = self.view_dir(view);
        for part in relative.split('/') {
            p = p.join(part);
        }
        p
    }

    /// The URL DataFusion reads a data file from.
    pub fn file_url(&self, view: &ViewName, relative: &str) -> String {
        format!(
            "{}/{}/{}/{relative}",
            self.root_url,
            urlencode(&view.schema),
            urlencode(&view.name)
        )
    }

    /// Stores `manifest` as a new revision (its `revision` and `stamp` move).
    pub async fn save(&self, manifest: &mut Manifest) -> Result<(), PgError> {
        manifest.revision += 1;
        manifest.stamp = rand::random();
        let json = serde_json::to_vec_pretty(&*manifest).map_err(io_error)?;
        self.store
            .put(&self.manifest_path(&manifest.view_name()), json.into())
            .await
            .map_err(io_error)?;
        Ok(())
    }

    /// Stores a new view's first manifest, unless one exists (created meanwhile on
    /// another gateway sharing the storage): then 42P07.
    pub async fn save_new(&self, manifest: &mut Manifest) -> Result<(), PgError> {
        manifest.revision = 1;
        manifest.stamp = rand::random();
        let json = serde_json::to_vec_pretty(&*manifest).map_err(io_error)?;
        let opts = object_store::PutOptions {
            mode: object_store::PutMode::Create,
            ..object_store::PutOptions::default()
        };
        let name = manifest.view_name();
        match self
            .store
            .put_opts(&self.manifest_path(&name), json.into(), opts)
            .await
        {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Err(PgError::new(
                SqlState("42P07"),
                format!("relation \"{name}\" already exists (created on another gateway)"),
            )),
            Err(e) => Err(io_error(e)),
        }
    }

    /// One view's stored manifest; `None` when there is none.
    pub async fn load(&self, view: &ViewName) -> Result<Option<Manifest>, PgError> {
        let bytes = match self.store.get(&self.manifest_path(view)).await {
            Ok(r) => r.bytes().await.map_err(io_error)?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(io_error(e)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| io_error(format!("{view}: unreadable manifest: {e}")))
    }

    /// Where gateways announce which views changed.
    pub fn changes_dir(&self) -> Path {
        self.root.clone().join("_views").join("changes")
    }

    /// Where the leases of a view's scheduled refreshes live.
    pub fn leases_dir(&self, view: &ViewName) -> Path {
        self.root
            .clone()
            .join("_views")
            .join("leases")
            .join(view.schema.as_str())
            .join(view.name.as_str())
    }

    /// Every stored manifest. Unreadable ones are logged and skipped.
    pub async fn load_all(&self) -> Result<Vec<Manifest>, PgError> {
        let listed: Vec<object_store::ObjectMeta> =
            match self.store.list(Some(&self.root)).try_collect().await {
                Ok(l) => l,
                Err(object_store::Error::NotFound { .. }) => return Ok(Vec::new()),
                Err(e) => return Err(io_error(e)),
            };
        let mut manifests = Vec::new();
        for meta in listed {
            if meta.location.filename() != Some("view.json") {
                continue;
            }
            let bytes = match self.store.get(&meta.location).await {
                Ok(r) => r.bytes().await.map_err(io_error)?,
                Err(e) => return Err(io_error(e)),
            };
            match serde_json::from_slice::<Manifest>(&bytes) {
                Ok(m) => manifests.push(m),
                Err(e) => {
                    tracing::error!(manifest = %meta.location, error = %e, "unreadable materialized view manifest; view skipped")
                }
            }
        }
        Ok(manifests)
    }

    /// Deletes a view's manifest; its data files are the caller's to delete once
    /// readers (here and on other gateways) are done with them.
    pub async fn remove_view(&self, view: &ViewName) -> Result<(), PgError> {
        self.store
            .delete(&self.manifest_path(view))
            .await
            .or_else(not_found_is_fine)
            .map_err(io_error)?;
        Ok(())
    }

    /// Deletes data files of a view that `keep` does not name and that were last
    /// written more than `min_age` ago (failed or replaced versions). Best effort:
    /// failures are logged.
    pub async fn delete_data_except(
        &self,
        view: &ViewName,
        keep: &[DataFile],
        min_age: std::time::Duration,
    ) {
        let cutoff = chrono::Utc::now()
            - chrono::Duration::from_std(min_age).unwrap_or(chrono::Duration::zero());
        let dir = self.view_dir(view).join("data");
        let listed: Vec<object_store::ObjectMeta> =
            match self.store.list(Some(&dir)).try_collect().await {
                Ok(l) => l,
                Err(_) => return,
            };
        for meta in listed {
            let keep_it = meta.last_modified > cutoff
                || keep
                    .iter()
                    .any(|f| self.file_path(view, &f.path) == meta.location);
            if !keep_it && let Err(e) = self.store.delete(&meta.location).await {
                tracing::warn!(file = %meta.location, error = %e, "cannot delete an old view file");
            }
        }
    }

    /// Deletes the given files (replaced versions). Best effort.
    pub async fn delete_files(&self, view: &ViewName, files: &[DataFile]) {
        for f in files {
            let _ = self.store.delete(&self.file_path(view, &f.path)).await;
        }
    }
}

fn not_found_is_fine(e: object_store::Error) -> Result<(), object_store::Error> {
    match e {
        object_store::Error::NotFound { .. } => Ok(()),
        other => Err(other),
    }
}

/// Percent-encodes a path segment for a URL (names may hold spaces or quotes).
fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            schema: "mv".into(),
            name: "v".into(),
            definition: Definition {
                query: "SELECT 1".into(),
                refresh_every_secs: None,
                refresh_cron: None,
                incremental_column: None,
                owner: "test".into(),
                created_at: String::new(),
                declared: false,
            },
            state: State::default(),
            revision: 0,
            stamp: 0,
        }
    }

    #[tokio::test]
    async fn saves_move_the_revision_and_newer_or_concurrent_saves_supersede() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fs = object_store::local::LocalFileSystem::new_with_prefix(dir.path()).expect("fs");
        let storage = Storage::new(Arc::new(fs), Path::from("views"), "file:///x".into());
        let mut ours = manifest();
        storage.save(&mut ours).await.expect("save");
        assert_eq!(ours.revision, 1);
        let stored = storage
            .load(&ours.view_name())
            .await
            .expect("load")
            .expect("stored");
        assert!(!stored.supersedes(&ours), "our own save");
        // Another gateway's next save supersedes ours; ours does not supersede it.
        let mut theirs = stored.clone();
        storage.save(&mut theirs).await.expect("save");
        assert!(theirs.supersedes(&ours) && !ours.supersedes(&theirs));
        // Two saves of one revision: the stored one wins wherever it is read.
        let mut concurrent = ours.clone();
        concurrent.revision = theirs.revision - 1;
        storage.save(&mut concurrent).await.expect("save");
        assert_eq!(concurrent.revision, theirs.revision);
        assert!(concurrent.supersedes(&theirs) && theirs.supersedes(&concurrent));
        assert!(
            storage
                .load(&ViewName {
                    schema: "mv".into(),
                    name: "gone".into()
                })
                .await
                .expect("load")
                .is_none()
        );
    }
}
