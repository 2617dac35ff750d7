//! Gateway materialized views: the "RDS + dblink + materialized view" pattern done
//! on the gateway. A view's query runs on Redshift (verbatim, under the configured
//! refresh identity) or on the lake engine; its rows are stored as Parquet
//! (`storage`) and served by DataFusion as a table of a view schema (`table`).
//!
//! Every refresh writes a new version and swaps it in atomically: readers never
//! wait and never see a partial result, with or without `CONCURRENTLY`. A failed
//! refresh leaves the previous version serving and records why. Views with an
//! `incremental_column` append only rows past the stored high-water mark.

pub mod schedule;
pub mod storage;
pub mod table;

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
use storage::{DataFile, Definition, Manifest, ParquetSink, State, Storage};
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
        let storage = open_storage(config, mv, &engine)?;
        let mut schemas = HashMap::new();
        for name in &mv.schemas {
            let schema = Arc::new(MatViewSchema::default());
            engine.mount_view_schema(name, schema.clone())?;
            schemas.insert(name.clone(), schema);
        }
        let refresh_policy = Arc::new(Policy::resolve(&mv.refresh_roles, &config.roles));
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
        });
        views
            .load()
            .await
            .map_err(|e| format!("materialized_views.storage: {}", e.message))?;
        views.reconcile_declared().await.map_err(|e| e.message)?;
        views.publish();
        tokio::spawn(scheduler(Arc::downgrade(&views)));
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
                .delete_data_except(&name, &manifest.state.files)
                .await;
            let view = match self.mount(name.clone(), manifest).await {
                Ok(v) => v,
                Err(e) => {
                    tracing::error!(view = %name, error = %e.message, "cannot mount stored view");
                    continue;
                }
            };
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
                    self.storage.save(&m).await?;
                    view.set_manifest(m);
                    if same {
                        view.plan_next(Utc::now());
                    }
                    tracing::info!(view = %name, "materialized view definition updated from the config");
                }
                None => {
                    let manifest = Manifest {
                        schema: name.schema.clone(),
                        name: name.name.clone(),
                        definition,
                        state: State::default(),
                    };
                    self.storage.save(&manifest).await?;
                    let view = self.mount(name.clone(), manifest).await?;
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
        let manifest = Manifest {
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
        if let Err(e) = self.storage.save(&manifest).await {
            self.unmount(name);
            return Err(e);
        }
        let outcome = if with_data {
            match self.refresh_view(&view, true).await {
                Ok(o) => Some(o),
                Err(e) => {
                    self.unmount(name);
                    let _ = self.storage.remove_view(name).await;
                    return Err(e);
                }
            }
        } else {
            None
        };
        view.plan_next(Utc::now());
        self.publish();
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
        view.dropped.store(true, Ordering::Release);
        self.unmount(name);
        self.storage.remove_view(name).await?;
        if let Some(r) = &self.results {
            r.invalidate(Some(std::slice::from_ref(&name.name)));
        }
        self.publish();
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

    /// `REFRESH MATERIALIZED VIEW`.
    pub async fn refresh(
        &self,
        name: &ViewName,
        with_data: bool,
    ) -> Result<RefreshOutcome, PgError> {
        let view = self.get(name).ok_or_else(|| {
            PgError::new(
                SqlState::UNDEFINED_TABLE,
                format!("materialized view \"{name}\" does not exist"),
            )
        })?;
        let outcome = self.refresh_view(&view, with_data).await;
        view.plan_next(Utc::now());
        outcome
    }

    /// The identity a refresh runs with on the lake.
    fn refresh_context(&self) -> QueryContext {
        let remote = self.upstream.as_ref().and_then(|u| {
            let identity = self.refresh_identity()?;
            let remote: Arc<dyn crate::engine::RemoteTables> =
                Arc::new(crate::redshift::table::RemoteCatalog::new(
                    u.clone(),
                    identity,
                    &[("application_name".to_owned(), "sluice-matview".to_owned())],
                ));
            Some(remote)
        });
        QueryContext {
            user: self.config.refresh_user.clone(),
            search_path: "public".into(),
            time_zone: "UTC".into(),
            backend_pid: 0,
            policy: self.refresh_policy.clone(),
            remote,
            vars: Default::default(),
        }
    }

    /// The Redshift identity views refresh under.
    fn refresh_identity(&self) -> Option<crate::redshift::credentials::DbIdentity> {
        redshift::identity_for(
            &self.config.refresh_user,
            &self.config.refresh_roles,
            &self.roles,
        )
    }

    /// Where a view query runs: the lake when it names only lake tables (or no
    /// upstream exists), Redshift when it names no lake table. Text Sluice cannot
    /// parse is Redshift's.
    fn source_of(&self, query: &str) -> Result<ViewSource, PgError> {
        let lake = self.upstream.as_ref().map(|_| self.engine.lake_schemas());
        crate::route::decide::view_source(self.engine.parse(query), lake.as_ref())
    }

    /// Runs the view query into `sink`; returns the result schema and the engine.
    async fn run_query(
        &self,
        sql: &str,
        sink: &mut ParquetSink,
    ) -> Result<(SchemaRef, &'static str), PgError> {
        match self.source_of(sql)? {
            ViewSource::Lake(stmt) => {
                let qc = self.refresh_context();
                let plan = self.engine.plan(&stmt, &qc).await?;
                let schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
                let mut stream = self.engine.execute(plan, &qc).await?;
                while let Some(batch) = stream.next().await {
                    sink.write(&batch.map_err(PgError::from)?).await?;
                }
                Ok((schema, "lake"))
            }
            ViewSource::Upstream => {
                let Some(upstream) = &self.upstream else {
                    return Err(internal("no Redshift upstream is configured"));
                };
                let identity = self.refresh_identity().ok_or_else(|| {
                    PgError::new(
                        SqlState::INSUFFICIENT_PRIVILEGE,
                        "materialized_views.refresh_roles give no redshift_user, so views cannot read Redshift",
                    )
                })?;
                let params: Vec<(String, String)> = [
                    ("TimeZone", "UTC"),
                    ("DateStyle", "ISO, MDY"),
                    ("extra_float_digits", "3"),
                    ("application_name", "sluice-matview"),
                ]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
                let mut held = upstream.open(&identity, &params, false).await?;
                // Read-only: the view query (one statement) cannot change anything,
                // whatever the refresh identity may do.
                let result = match held.conn.run_quietly("START TRANSACTION READ ONLY").await {
                    Ok(()) => {
                        let r = rows::query_batches(&mut held.conn, sql, sink).await;
                        let end = held.conn.run_quietly("ROLLBACK").await;
                        r.and_then(|schema| end.map(|_| schema))
                    }
                    Err(e) => Err(e),
                };
                let clean = result.is_ok() && held.conn.status == b'I';
                upstream.release(held, clean).await;
                Ok((result?, "redshift"))
            }
        }
    }

    /// Refreshes one view (full, or incremental past the high-water mark), swapping
    /// the new version in only when everything is stored.
    async fn refresh_view(
        &self,
        view: &Arc<View>,
        with_data: bool,
    ) -> Result<RefreshOutcome, PgError> {
        let _turn = view.refresh_lock.lock().await;
        view.refreshing.store(true, Ordering::Release);
        let result = self.refresh_locked(view, with_data).await;
        view.refreshing.store(false, Ordering::Release);
        if let Err(e) = &result
            && !view.dropped.load(Ordering::Acquire)
        {
            tracing::warn!(view = %view.name, code = e.code.0, error = %e.message, "materialized view refresh failed; the previous version keeps serving");
            let mut m = view.manifest();
            m.state.last_error = Some(format!("{}: {}", e.code.0, e.message));
            m.state.last_attempt_at = Some(Utc::now().to_rfc3339());
            m.state.failures += 1;
            if let Err(save) = self.storage.save(&m).await {
                tracing::error!(view = %view.name, error = %save.message, "cannot record the failed refresh");
            }
            view.set_manifest(m);
        }
        self.publish();
        result
    }

    async fn refresh_locked(
        &self,
        view: &Arc<View>,
        with_data: bool,
    ) -> Result<RefreshOutcome, PgError> {
        if view.dropped.load(Ordering::Acquire) {
            return Err(PgError::new(
                SqlState::UNDEFINED_TABLE,
                format!("materialized view \"{}\" was dropped", view.name),
            ));
        }
        let started = Instant::now();
        let now = Utc::now().to_rfc3339();
        let mut manifest = view.manifest();
        let old_files = manifest.state.files.clone();
        if !with_data {
            manifest.state = State {
                generation: manifest.state.generation,
                refreshes: manifest.state.refreshes,
                failures: manifest.state.failures,
                last_attempt_at: Some(now),
                ..State::default()
            };
            self.storage.save(&manifest).await?;
            view.table.swap(
                Arc::new(datafusion::arrow::datatypes::Schema::empty()),
                Version::Unpopulated {
                    name: view.name.to_string(),
                },
            );
            view.set_manifest(manifest);
            self.after_swap(view, old_files);
            return Ok(RefreshOutcome {
                rows_added: 0,
                rows: 0,
                incremental: false,
                duration: started.elapsed(),
            });
        }
        let definition = &manifest.definition;
        let increment = match (&definition.incremental_column, &manifest.state.high_water) {
            (Some(col), Some(hw)) if manifest.state.populated => Some((col.clone(), hw.clone())),
            _ => None,
        };
        let sql = match &increment {
            Some((col, hw)) => format!(
                "SELECT * FROM ({}) AS sluice_increment WHERE {} > {hw}",
                definition.query,
                quote_ident(col)
            ),
            None => definition.query.clone(),
        };
        let generation = manifest.state.generation + 1;
        // Unique even across a drop and re-create of the same name (a replaced
        // version's delayed delete must never hit a new file).
        let relative = format!("data/{generation:08}-{:08x}.parquet", rand::random::<u32>());
        let path = self.storage.file_path(&view.name, &relative);
        let mut sink = ParquetSink::new(
            self.storage.store.clone(),
            path,
            definition.incremental_column.clone(),
        );
        let (schema, source) = match self.run_query(&sql, &mut sink).await {
            Ok(r) => r,
            Err(e) => {
                sink.abandon().await;
                return Err(e);
            }
        };
        let new_file = |rows, bytes| DataFile {
            path: relative.clone(),
            rows,
            bytes,
        };
        let (rows, bytes, max) = match sink.finish(schema.clone()).await {
            Ok(r) => r,
            Err(e) => {
                self.storage
                    .delete_files(&view.name, &[new_file(0, 0)])
                    .await;
                return Err(e);
            }
        };
        let mut files = Vec::new();
        let mut replaced = Vec::new();
        if increment.is_some() {
            let current = datafusion::catalog::TableProvider::schema(view.table.as_ref());
            if !same_columns(&current, &schema) {
                self.storage
                    .delete_files(&view.name, &[new_file(rows, bytes)])
                    .await;
                return Err(PgError::new(
                    SqlState::DATATYPE_MISMATCH,
                    format!(
                        "the columns of materialized view \"{}\" changed; rebuild it: REFRESH MATERIALIZED VIEW {} WITH NO DATA, then REFRESH",
                        view.name, view.name
                    ),
                ));
            }
            files.extend(old_files.iter().cloned());
            if rows > 0 {
                files.push(new_file(rows, bytes));
            } else {
                self.storage
                    .delete_files(&view.name, &[new_file(rows, bytes)])
                    .await;
            }
        } else {
            files.push(new_file(rows, bytes));
            replaced = old_files;
        }
        let high_water = match max {
            Some(v) => match storage::sql_literal(&v) {
                Some(l) => Some(l),
                None => {
                    self.storage
                        .delete_files(&view.name, &[new_file(rows, bytes)])
                        .await;
                    return Err(PgError::new(
                        SqlState::FEATURE_NOT_SUPPORTED,
                        format!(
                            "the highest {} value contains a backslash, which cannot be carried safely in the next refresh's filter",
                            definition.incremental_column.as_deref().unwrap_or("")
                        ),
                    )
                    .with_hint("use a numeric, date or timestamp incremental_column"));
                }
            },
            None => increment.as_ref().map(|(_, hw)| hw.clone()),
        };
        let total: u64 = files.iter().map(|f| f.rows).sum();
        manifest.state = State {
            populated: true,
            files,
            high_water,
            generation,
            refreshed_at: Some(now.clone()),
            last_duration_ms: Some(started.elapsed().as_millis() as u64),
            last_attempt_at: Some(now),
            last_error: None,
            refreshes: manifest.state.refreshes + 1,
            failures: manifest.state.failures,
            source: Some(source.into()),
            columns: storage::columns_of(&schema),
        };
        let (schema, version) = self.version_of(&view.name, &manifest.state).await?;
        if let Err(e) = self.storage.save(&manifest).await {
            if increment.is_none() || rows > 0 {
                self.storage
                    .delete_files(&view.name, &[new_file(rows, bytes)])
                    .await;
            }
            return Err(e);
        }
        view.table.swap(schema, version);
        view.set_manifest(manifest);
        self.after_swap(view, replaced);
        tracing::info!(view = %view.name, rows_added = rows, rows = total, ms = started.elapsed().as_millis() as u64, source, "materialized view refreshed");
        Ok(RefreshOutcome {
            rows_added: rows,
            rows: total,
            incremental: increment.is_some(),
            duration: started.elapsed(),
        })
    }

    /// After a new version is live: cached results that read the view go, and the
    /// replaced files are deleted once readers still scanning them are done.
    fn after_swap(&self, view: &Arc<View>, replaced: Vec<DataFile>) {
        if let Some(r) = &self.results {
            r.invalidate(Some(std::slice::from_ref(&view.name.name)));
        }
        if replaced.is_empty() {
            return;
        }
        let keep = Duration::from_secs(self.config.keep_replaced_secs);
        let store = self.storage.store.clone();
        let paths: Vec<_> = replaced
            .iter()
            .map(|f| self.storage.file_path(&view.name, &f.path))
            .collect();
        tokio::spawn(async move {
            tokio::time::sleep(keep).await;
            for p in paths {
                let _ = object_store::ObjectStoreExt::delete(store.as_ref(), &p).await;
            }
        });
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

    /// Rows of `SHOW sluice.materialized_views` for views `visible` accepts; the
    /// refresh error text only when `details`.
    pub fn show_rows(
        &self,
        visible: impl Fn(&ViewName) -> bool,
        details: bool,
    ) -> Vec<Vec<String>> {
        let Ok(views) = self.views.read() else {
            return Vec::new();
        };
        let now = Utc::now();
        let ago = |t: &Option<String>| {
            t.as_deref()
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                .map(|t| {
                    (now - t.with_timezone(&Utc))
                        .num_seconds()
                        .max(0)
                        .to_string()
                })
                .unwrap_or_default()
        };
        views
            .values()
            .filter(|v| visible(&v.name))
            .map(|v| {
                let m = v.manifest();
                let s = &m.state;
                let next = v
                    .next_due
                    .lock()
                    .ok()
                    .and_then(|n| *n)
                    .map(|n| (n - now).num_seconds().max(0).to_string())
                    .unwrap_or_default();
                let error = match &s.last_error {
                    Some(e) if details => e.clone(),
                    Some(_) => "failed (details for admins and in the log)".into(),
                    None => String::new(),
                };
                vec![
                    v.name.to_string(),
                    s.populated.to_string(),
                    s.rows().to_string(),
                    s.bytes().to_string(),
                    s.files.len().to_string(),
                    ago(&s.refreshed_at),
                    s.last_duration_ms
                        .map(|d| d.to_string())
                        .unwrap_or_default(),
                    schedule_of(&m.definition)
                        .map(|s| s.describe())
                        .unwrap_or_default(),
                    next,
                    m.definition.incremental_column.clone().unwrap_or_default(),
                    s.high_water.clone().unwrap_or_default(),
                    s.source.clone().unwrap_or_default(),
                    v.refreshing.load(Ordering::Acquire).to_string(),
                    s.refreshes.to_string(),
                    s.failures.to_string(),
                    error,
                    if m.definition.declared {
                        "config"
                    } else {
                        "sql"
                    }
                    .into(),
                    m.definition.owner.clone(),
                ]
            })
            .collect()
    }

    /// Views whose scheduled refresh is due.
    fn due(&self, now: DateTime<Utc>) -> Vec<Arc<View>> {
        let Ok(views) = self.views.read() else {
            return Vec::new();
        };
        views
            .values()
            .filter(|v| {
                !v.refreshing.load(Ordering::Acquire)
                    && v.next_due
                        .lock()
                        .ok()
                        .and_then(|n| *n)
                        .is_some_and(|n| n <= now)
            })
            .cloned()
            .collect()
    }
}

/// Column names of `SHOW sluice.materialized_views`.
pub const SHOW_COLUMNS: &[&str] = &[
    "view",
    "populated",
    "rows",
    "bytes",
    "files",
    "refreshed_secs_ago",
    "last_refresh_ms",
    "schedule",
    "next_refresh_in_secs",
    "incremental_column",
    "high_water",
    "source",
    "refreshing",
    "refreshes",
    "failures",
    "last_error",
    "defined_in",
    "owner",
];

/// Starts due refreshes once a second until the views are gone.
async fn scheduler(views: std::sync::Weak<MatViews>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(all) = views.upgrade() else {
            return;
        };
        let now = Utc::now();
        for view in all.due(now) {
            // Not due again until this run has finished and planned the next.
            if let Ok(mut n) = view.next_due.lock() {
                *n = None;
            }
            let all = all.clone();
            tokio::spawn(async move {
                let result = all.refresh_view(&view, true).await;
                view.plan_next(Utc::now());
                // A failure is already logged and recorded; a view that never loaded
                // retries on its schedule or, without one, in a minute.
                if result.is_err()
                    && view.schedule().is_none()
                    && !view.manifest().state.populated
                    && let Ok(mut n) = view.next_due.lock()
                {
                    *n = Some(Utc::now() + chrono::Duration::seconds(60));
                }
            });
        }
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

/// The object store and root for `materialized_views.storage`.
fn open_storage(config: &Config, mv: &MatViewsConfig, engine: &Engine) -> Result<Storage, String> {
    let key = |e: String| format!("materialized_views.storage: {e}");
    if mv.storage.starts_with("s3://") {
        let (store_url, path) =
            crate::lake::stores::split_location(&mv.storage).map_err(|e| key(e.to_string()))?;
        let store = engine
            .runtime()
            .object_store(store_object_url(&store_url)?)
            .map_err(|e| key(e.to_string()))?;
        return Ok(Storage::new(store, path, mv.storage.clone()));
    }
    let dir = config.resolve(std::path::Path::new(&mv.storage));
    std::fs::create_dir_all(&dir)
        .map_err(|e| key(format!("cannot create {}: {e}", dir.display())))?;
    let dir = dir
        .canonicalize()
        .map_err(|e| key(format!("{}: {e}", dir.display())))?;
    let path =
        object_store::path::Path::from_filesystem_path(&dir).map_err(|e| key(e.to_string()))?;
    let url = url::Url::from_directory_path(&dir)
        .map_err(|_| key(format!("{} is not an absolute directory", dir.display())))?;
    let store_url = url::Url::parse("file:///").map_err(|e| key(e.to_string()))?;
    let store = engine
        .runtime()
        .object_store(store_object_url(&store_url)?)
        .map_err(|e| key(e.to_string()))?;
    Ok(Storage::new(store, path, url.to_string()))
}

fn store_object_url(
    url: &url::Url,
) -> Result<datafusion::execution::object_store::ObjectStoreUrl, String> {
    datafusion::execution::object_store::ObjectStoreUrl::parse(url.as_str())
        .map_err(|e| format!("materialized_views.storage: {e}"))
}
