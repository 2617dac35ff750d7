//! Gateway materialized views: the "RDS + dblink + materialized view" pattern done
//! on the gateway. A view's query runs on Redshift (verbatim, under the configured
//! refresh identity) or on the lake engine; its rows are stored as Parquet
//! (`storage`) and served by DataFusion as a table of a view schema (`table`).
//!
//! Every refresh writes a new version and swaps it in atomically: readers never
//! wait and never see a partial result, with or without `CONCURRENTLY`. A failed
//! refresh leaves the previous version serving and records why. Views with an
//! `incremental_column` append only rows past the stored high-water mark.

mod listing;
mod refresh;
pub mod schedule;
mod shared;
pub mod sink;
pub mod storage;
pub mod table;

pub use listing::SHOW_COLUMNS;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use datafusion::arrow::datatypes::SchemaRef;
use futures::StreamExt;

use crate::auth::policy::Policy;
use crate::cache::results::ResultCache;
use crate::config::{Config, MatViewsConfig, RoleConfig};
use crate::engine::{Engine, MatViewListing, QueryContext};
use crate::error::{PgError, SqlState};
use crate::redshift::{self, Upstream, rows};
use crate::route::decide::ViewSource;
use crate::route::view_ddl::{ViewName, ViewOptions};
use schedule::Schedule;
use sink::ParquetSink;
use storage::{DataFile, Definition, Manifest, State, Storage};
use table::{MatViewSchema, MatViewTable, Version};

/// One view: its table (what readers scan) and its manifest (what is stored).
pub struct View {
    pub name: ViewName,
    table: Arc<MatViewTable>,
    manifest: Mutex<Manifest>,
    /// One refresh at a time per view; later ones wait their turn.
    refresh_lock: tokio::sync::Mutex<()>,
    next_due: Mutex<Option<DateTime<Utc>>>,
    refreshing: AtomicBool,
    /// Set (under `refresh_lock`) when the view is dropped: a refresh that was
    /// waiting its turn must not write it back.
    dropped: AtomicBool,
    /// Its manifest is in the storage (a view being created is mounted first):
    /// only a stored view missing from the storage was dropped by another gateway.
    stored: AtomicBool,
}

impl View {
    fn manifest(&self) -> Manifest {
        match self.manifest.lock() {
            Ok(m) => m.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn set_manifest(&self, m: Manifest) {
        match self.manifest.lock() {
            Ok(mut g) => *g = m,
            Err(p) => *p.into_inner() = m,
        }
    }

    fn schedule(&self) -> Option<Schedule> {
        schedule_of(&self.manifest().definition)
    }

    fn plan_next(&self, after: DateTime<Utc>) {
        let next = self.schedule().and_then(|s| s.next_after(after));
        if let Ok(mut n) = self.next_due.lock() {
            *n = next;
        }
    }
}

fn schedule_of(d: &Definition) -> Option<Schedule> {
    if let Some(secs) = d.refresh_every_secs {
        return Some(Schedule::Every(Duration::from_secs(secs)));
    }
    d.refresh_cron
        .as_deref()
        .and_then(|c| schedule::parse_cron(c).ok())
        .map(|c| Schedule::Cron(Box::new(c)))
}

/// What a refresh did.
pub struct RefreshOutcome {
    pub rows_added: u64,
    pub rows: u64,
    pub incremental: bool,
    pub duration: Duration,
}

impl crate::route::decide::ViewNames for MatViews {
    fn schemas(&self) -> &[String] {
        MatViews::schemas(self)
    }

    fn resolve_unqualified(&self, name: &str) -> Option<String> {
        MatViews::resolve_unqualified(self, name)
    }
}

pub struct MatViews {
    config: MatViewsConfig,
    engine: Arc<Engine>,
    upstream: Option<Arc<Upstream>>,
    roles: Vec<RoleConfig>,
    storage: Storage,
    schemas: HashMap<String, Arc<MatViewSchema>>,
    views: RwLock<BTreeMap<ViewName, Arc<View>>>,
    results: Option<Arc<ResultCache>>,
    refresh_policy: Arc<Policy>,
    /// Where this gateway announces the views it changed, and reads which views
    /// other gateways sharing the storage changed (`shared.rs`).
    changes: crate::cluster::journal::Journal,
    /// This gateway's name in the leases of scheduled refreshes.
    holder: String,
    /// Held while a drop here removes a manifest and unmounts, and while the sync
    /// mounts a view it read: a view dropped here is never mounted back.
    ddl: tokio::sync::Mutex<()>,
}

fn internal(what: impl std::fmt::Display) -> PgError {
    PgError::new(SqlState::INTERNAL_ERROR, what.to_string())
}

impl MatViews {
    /// Mounts the view schemas, loads stored views, reconciles the views declared in
    /// the config, and starts the scheduler. `None` without `[materialized_views]`.
    pub async fn start(
        config: &Config,
        engine: Arc<Engine>,
        upstreams: &redshift::Upstreams,
        results: Option<Arc<ResultCache>>,
    ) -> Result<Option<Arc<MatViews>>, String> {
        let Some(mv) = &config.materialized_views else {
            return Ok(None);
        };
        let storage = Storage::open(config, &mv.storage, "materialized_views.storage", &engine)?;
        let mut schemas = HashMap::new();
        for name in &mv.schemas {
            let schema = Arc::new(MatViewSchema::default());
            engine.mount_view_schema(name, schema.clone())?;
            schemas.insert(name.clone(), schema);
        }
        let refresh_policy = Arc::new(Policy::resolve(&mv.refresh_roles, &config.roles));
        // Read 30 s back: changes announced while the views load are not missed.
        let changes =
            crate::cluster::journal::Journal::new(storage.store.clone(), storage.changes_dir());
        let views = Arc::new(MatViews {
            config: mv.clone(),
            engine,
            upstream: upstreams.all().first().cloned(),
            roles: config.roles.clone(),
            storage,
            schemas,
            views: RwLock::new(BTreeMap::new()),
            results,
            refresh_policy,
            changes,
            holder: crate::cluster::gateway_name(),
            ddl: tokio::sync::Mutex::new(()),
        });
        views
            .load()
            .await
            .map_err(|e| format!("materialized_views.storage: {}", e.message))?;
        views.reconcile_declared().await.map_err(|e| e.message)?;
        views.publish();
        tokio::spawn(schedule::scheduler(Arc::downgrade(&views)));
        let sync_ms = mv.sync_interval_ms(config.cluster.is_some());
        if sync_ms > 0 {
            tokio::spawn(shared::syncer(
                Arc::downgrade(&views),
                Duration::from_millis(sync_ms),
            ));
        }
        Ok(Some(views))
    }

    /// Whether `schema` holds gateway views.
    pub fn is_view_schema(&self, schema: &str) -> bool {
        self.schemas.contains_key(schema)
    }

    pub fn schemas(&self) -> &[String] {
        &self.config.schemas
    }

    /// The schema of an unqualified view name, when exactly one view has it.
    pub fn resolve_unqualified(&self, name: &str) -> Option<String> {
        let views = self.views.read().ok()?;
        let mut found = views.keys().filter(|v| v.name == name.to_lowercase());
        let first = found.next()?;
        found.next().is_none().then(|| first.schema.clone())
    }

    pub fn exists(&self, name: &ViewName) -> bool {
        self.get(name).is_some()
    }

    fn get(&self, name: &ViewName) -> Option<Arc<View>> {
        self.views.read().ok()?.get(name).cloned()
    }

    /// Mounts every stored view; deletes data files no manifest names.
    async fn load(&self) -> Result<(), PgError> {
        for manifest in self.storage.load_all().await? {
            let name = ViewName {
                schema: manifest.schema.clone(),
                name: manifest.name.clone(),
            };
            if !self.is_view_schema(&name.schema) {
                tracing::warn!(view = %name, "stored view is in a schema no longer in materialized_views.schemas; not mounted");
                continue;
            }
            self.storage
                .delete_data_except(&name, &manifest.state.files, storage::ORPHAN_AGE)
                .await;
            let view = match self.mount(name.clone(), manifest).await {
                Ok(v) => v,
                Err(e) => {
                    tracing::error!(view = %name, error = %e.message, "cannot mount stored view");
                    continue;
                }
            };
            view.stored.store(true, Ordering::Release);
            view.plan_next(Utc::now());
            tracing::info!(view = %name, "materialized view loaded");
        }
        Ok(())
    }

    /// Builds a view's table from its manifest and makes it visible.
    async fn mount(&self, name: ViewName, manifest: Manifest) -> Result<Arc<View>, PgError> {
        let (schema, version) = self.version_of(&name, &manifest.state).await?;
        let view = Arc::new(View {
            table: Arc::new(MatViewTable::new(schema, version)),
            name: name.clone(),
            manifest: Mutex::new(manifest),
            refresh_lock: tokio::sync::Mutex::new(()),
            next_due: Mutex::new(None),
            refreshing: AtomicBool::new(false),
            dropped: AtomicBool::new(false),
            stored: AtomicBool::new(false),
        });
        {
            // Check and insert in one step: two CREATEs of one name cannot both win.
            let mut views = self
                .views
                .write()
                .map_err(|_| internal("view registry lock poisoned"))?;
            if views.contains_key(&name) {
                return Err(PgError::new(
                    SqlState("42P07"),
                    format!("relation \"{name}\" already exists"),
                ));
            }
            views.insert(name.clone(), view.clone());
        }
        if let Some(s) = self.schemas.get(&name.schema) {
            s.insert(&name.name, view.table.clone());
        }
        Ok(view)
    }

    async fn version_of(
        &self,
        name: &ViewName,
        state: &State,
    ) -> Result<(SchemaRef, Version), PgError> {
        let unpopulated = || {
            (
                Arc::new(datafusion::arrow::datatypes::Schema::empty()) as SchemaRef,
                Version::Unpopulated {
                    name: name.to_string(),
                },
            )
        };
        if !state.populated || state.files.is_empty() {
            return Ok(unpopulated());
        }
        let schema = storage::schema_of(&state.columns)?;
        let urls: Vec<String> = state
            .files
            .iter()
            .map(|f| self.storage.file_url(name, &f.path))
            .collect();
        let version = Version::of_files(schema.clone(), &urls).map_err(PgError::from)?;
        Ok((schema, version))
    }

    /// Creates missing config-declared views (refreshed by the scheduler right
    /// away) and applies changed definitions.
    async fn reconcile_declared(&self) -> Result<(), PgError> {
        let declared: Vec<_> = self.config.views.clone();
        for decl in declared {
            let Some(name) = ViewName::parse(&decl.name) else {
                continue;
            };
            let definition = Definition {
                query: decl.query.clone(),
                refresh_every_secs: decl.refresh_every_secs,
                refresh_cron: decl.refresh_cron.clone(),
                incremental_column: decl.incremental_column.clone(),
                owner: "config".into(),
                created_at: Utc::now().to_rfc3339(),
                declared: true,
            };
            match self.get(&name) {
                Some(view) => {
                    let mut m = view.manifest();
                    let same = m.definition.query == definition.query
                        && m.definition.incremental_column == definition.incremental_column;
                    if same
                        && m.definition.refresh_every_secs == definition.refresh_every_secs
                        && m.definition.refresh_cron == definition.refresh_cron
                        && m.definition.declared
                    {
                        continue;
                    }
                    m.definition = Definition {
                        created_at: m.definition.created_at.clone(),
                        ..definition
                    };
                    if !same {
                        // A new query: the next refresh rebuilds from scratch.
                        m.state.high_water = None;
                        m.state.populated = false;
                        if let Ok(mut n) = view.next_due.lock() {
                            *n = Some(Utc::now());
                        }
                    }
                    self.storage.save(&mut m).await?;
                    view.set_manifest(m);
                    self.announce(&name).await;
                    if same {
                        view.plan_next(Utc::now());
                    }
                    tracing::info!(view = %name, "materialized view definition updated from the config");
                }
                None => {
                    let mut manifest = Manifest {
                        schema: name.schema.clone(),
                        name: name.name.clone(),
                        definition,
                        state: State::default(),
                        revision: 0,
                        stamp: 0,
                    };
                    if let Err(e) = self.storage.save_new(&mut manifest).await {
                        // Another gateway with this config created it just now: it
                        // makes the first refresh.
                        let stored = match self.storage.load(&name).await? {
                            Some(m) if e.code.0 == "42P07" => m,
                            _ => return Err(e),
                        };
                        let view = self.mount(name.clone(), stored).await?;
                        view.stored.store(true, Ordering::Release);
                        view.plan_next(Utc::now());
                        continue;
                    }
                    let view = self.mount(name.clone(), manifest).await?;
                    view.stored.store(true, Ordering::Release);
                    self.announce(&name).await;
                    if let Ok(mut n) = view.next_due.lock() {
                        *n = Some(Utc::now());
                    }
                    tracing::info!(view = %name, "materialized view declared in the config created; first refresh scheduled now");
                }
            }
        }
        Ok(())
    }

    /// `CREATE MATERIALIZED VIEW`: stored and (unless `WITH NO DATA`) populated
    /// before the command completes; a query that fails creates nothing.
    pub async fn create(
        &self,
        name: &ViewName,
        query: &str,
        options: &ViewOptions,
        with_data: bool,
        owner: &str,
        owner_may_write: bool,
    ) -> Result<Option<RefreshOutcome>, PgError> {
        // Text Sluice cannot parse runs upstream as written: like any unparsed
        // statement, only from a role that may write.
        if !owner_may_write {
            let parsed = self.engine.parse(query).map_err(|e| {
                PgError::new(
                    SqlState::INSUFFICIENT_PRIVILEGE,
                    format!(
                        "Sluice cannot parse this view query, so it cannot check that it only reads, and your roles are read-only ({})",
                        e.message
                    ),
                )
            })?;
            if parsed.len() != 1 || !crate::route::is_read_only(&parsed[0]) {
                return Err(PgError::new(
                    SqlState::INSUFFICIENT_PRIVILEGE,
                    "a materialized view is defined by one read-only SELECT",
                ));
            }
        }
        if self.get(name).is_some()
            || self
                .engine
                .lake_table_names(&name.schema)
                .contains(&name.name)
        {
            return Err(PgError::new(
                SqlState("42P07"),
                format!("relation \"{name}\" already exists"),
            ));
        }
        // Fail early on a query that cannot run (a lake query is planned now).
        if let ViewSource::Lake(stmt) = self.source_of(query)? {
            let qc = self.refresh_context();
            self.engine.plan(&stmt, &qc).await?;
        }
        let mut manifest = Manifest {
            revision: 0,
            stamp: 0,
            schema: name.schema.clone(),
            name: name.name.clone(),
            definition: Definition {
                query: query.to_owned(),
                refresh_every_secs: options.refresh_every_secs,
                refresh_cron: options.refresh_cron.clone(),
                incremental_column: options.incremental_column.clone(),
                owner: owner.to_owned(),
                created_at: Utc::now().to_rfc3339(),
                declared: false,
            },
            state: State::default(),
        };
        // Registered first (the name is taken atomically), stored second.
        let view = self.mount(name.clone(), manifest.clone()).await?;
        if let Err(e) = self.storage.save_new(&mut manifest).await {
            self.unmount(name);
            return Err(e);
        }
        view.set_manifest(manifest);
        view.stored.store(true, Ordering::Release);
        let outcome = if with_data {
            match self.refresh_view(&view, true).await {
                Ok(o) => Some(o),
                Err(e) => {
                    self.unmount(name);
                    let _ = self.storage.remove_view(name).await;
                    // Others may have read the unpopulated manifest meanwhile.
                    self.announce(name).await;
                    return Err(e);
                }
            }
        } else {
            None
        };
        view.plan_next(Utc::now());
        self.publish();
        self.announce(name).await;
        Ok(outcome)
    }

    /// `DROP MATERIALIZED VIEW`.
    pub async fn drop_view(&self, name: &ViewName, if_exists: bool) -> Result<bool, PgError> {
        let Some(view) = self.get(name) else {
            if if_exists {
                return Ok(false);
            }
            return Err(PgError::new(
                SqlState::UNDEFINED_TABLE,
                format!("materialized view \"{name}\" does not exist"),
            ));
        };
        if view.manifest().definition.declared {
            return Err(PgError::new(
                SqlState::FEATURE_NOT_SUPPORTED,
                format!(
                    "materialized view \"{name}\" is declared in the config file; remove it there"
                ),
            ));
        }
        // Wait for a running refresh, so it cannot store files after the delete.
        let _guard = view.refresh_lock.lock().await;
        // Another gateway may have refreshed it (its files are the ones to delete)
        // or dropped it already.
        if let Err(e) = self.catch_up(&view).await {
            return match e.code.0 {
                "42P01" if if_exists => Ok(false),
                _ => Err(e),
            };
        }
        {
            let _ddl = self.ddl.lock().await;
            // The storage first: if that fails the view stays, as stored.
            self.storage.remove_view(name).await?;
            view.dropped.store(true, Ordering::Release);
            self.unmount(name);
        }
        // Readers here or on other gateways may still be scanning its files.
        self.delete_later(name, &view.manifest().state.files);
        self.forget_leases(name).await;
        if let Some(r) = &self.results {
            r.invalidate(Some(std::slice::from_ref(&name.name)));
        }
        self.publish();
        self.announce(name).await;
        Ok(true)
    }

    fn unmount(&self, name: &ViewName) {
        if let Some(s) = self.schemas.get(&name.schema) {
            s.remove(&name.name);
        }
        if let Ok(mut views) = self.views.write() {
            views.remove(name);
        }
        self.publish();
    }

    /// Makes `pg_matviews` show the current views.
    fn publish(&self) {
        let Ok(views) = self.views.read() else {
            return;
        };
        let listing = views
            .values()
            .map(|v| {
                let m = v.manifest();
                MatViewListing {
                    schema: v.name.schema.clone(),
                    name: v.name.name.clone(),
                    owner: m.definition.owner.clone(),
                    populated: m.state.populated,
                    definition: m.definition.query.clone(),
                }
            })
            .collect();
        self.engine.set_matviews(listing);
    }

    /// Views whose scheduled refresh is due, with the tick that is due.
    fn due(&self, now: DateTime<Utc>) -> Vec<(Arc<View>, DateTime<Utc>)> {
        let Ok(views) = self.views.read() else {
            return Vec::new();
        };
        views
            .values()
            .filter(|v| !v.refreshing.load(Ordering::Acquire))
            .filter_map(|v| {
                let due = v.next_due.lock().ok().and_then(|n| *n)?;
                (due <= now).then(|| (v.clone(), due))
            })
            .collect()
    }
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn same_columns(a: &SchemaRef, b: &SchemaRef) -> bool {
    a.fields().len() == b.fields().len()
        && a.fields()
            .iter()
            .zip(b.fields())
            .all(|(x, y)| x.name() == y.name() && x.data_type() == y.data_type())
}
