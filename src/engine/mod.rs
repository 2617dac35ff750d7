//! The local query engine: one shared DataFusion context holding the lake catalog,
//! `pg_catalog` and `information_schema`; each statement gets a cheap per-session
//! copy of its state (default schema, time zone, who is asking).
//!
//! (A little over 600 lines: construction, the per-policy contexts, planning and
//! execution belong together; the catalog parts live in `visibility`, `federated`,
//! `system` and `pg_compat`.)

pub mod distributed;
mod execute;
mod federated;
pub mod memory;
pub use execute::{Launched, PhysicalQuery};
pub use federated::RemoteTables;
pub mod params;
pub mod pg_compat;
pub mod session_vars;
pub mod shortcut_aggregate;
pub mod system;
pub mod visibility;

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::catalog::{CatalogProvider, MemoryCatalogProvider, MemorySchemaProvider};
use datafusion::execution::cache::cache_manager::CacheManagerConfig;
use datafusion::execution::context::SQLOptions;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::session_state::SessionState;
use datafusion::logical_expr::{ColumnarValue, LogicalPlan, ScalarUDF, Volatility, create_udf};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::scalar::ScalarValue;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::Statement;
use datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_pg_catalog::pg_catalog::setup_pg_catalog;
use datafusion_pg_catalog::sql::PostgresCompatibilityParser;

use crate::auth::policy::Policy;
use crate::config::Config;
use crate::error::{PgError, SqlState};
use crate::lake;

/// The version string `version()` returns; clients parse the leading "PostgreSQL x.y".
pub fn version_string() -> String {
    format!(
        "PostgreSQL {} (Sluice {}) on {}-linux, compiled by rustc",
        crate::wire::SERVER_VERSION,
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH
    )
}

/// Who is asking and with which session settings: everything that changes how a
/// statement is planned.
#[derive(Debug, Clone)]
pub struct QueryContext {
    pub user: String,
    pub search_path: String,
    pub time_zone: String,
    pub backend_pid: i32,
    /// What the session's roles may read.
    pub policy: Arc<Policy>,
    /// Upstream tables, for statements that join them with the lake (forwarding
    /// sessions and view refreshes): found under this identity.
    pub remote: Option<Arc<dyn RemoteTables>>,
    /// The session's settings, for `current_setting` and `set_config`.
    pub vars: Arc<session_vars::SessionVars>,
}

/// A dedicated runtime for query execution. DataFusion operators can run for a long
/// time between yields; on their own threads they cannot starve the network I/O of
/// other sessions, cancel requests or statement timeouts.
struct CpuRuntime(Option<tokio::runtime::Runtime>);

impl Drop for CpuRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            // Dropping a runtime inside async code would panic; this never blocks.
            rt.shutdown_background();
        }
    }
}

pub struct Engine {
    /// The lake as loaded (every schema and table); sessions see it through a
    /// per-policy view.
    lake: Arc<MemoryCatalogProvider>,
    session_config: SessionConfig,
    /// One DataFusion context per distinct policy: its catalog view, `pg_catalog` and
    /// `information_schema` show only what the policy may read.
    contexts: std::sync::Mutex<HashMap<Policy, SessionContext>>,
    cpu: CpuRuntime,
    database: String,
    parser: PostgresCompatibilityParser,
    /// Object stores (local disk, S3 buckets), caches and the spill disk manager,
    /// shared by every context; contexts of a role with a memory share get a copy
    /// with that role's pool.
    runtime: Arc<RuntimeEnv>,
    /// The lake queries' memory pool and the roles' budgets.
    memory: Arc<memory::LakeMemory>,
    glue: Option<Arc<lake::glue::GlueCatalog>>,
    /// Moves when gateway view schemas or views appear or go.
    local_generation: std::sync::atomic::AtomicU64,
    /// Gateway materialized views, for `pg_matviews`.
    matviews: Arc<std::sync::RwLock<Vec<MatViewListing>>>,
    /// The `sluice` schema's tables, once the server supplies them.
    system: std::sync::OnceLock<Arc<dyn system::SystemTables>>,
    /// The Ballista cluster big statements run on (`[engine.distributed]`).
    distributed: Option<Arc<distributed::Cluster>>,
}

/// One gateway materialized view as `pg_matviews` lists it.
#[derive(Debug, Clone)]
pub struct MatViewListing {
    pub schema: String,
    pub name: String,
    pub owner: String,
    pub populated: bool,
    pub definition: String,
}

impl Engine {
    pub async fn new(config: &Config) -> Result<Engine, String> {
        let database = config.server.database.clone();
        let session_config = SessionConfig::new()
            .with_information_schema(true)
            .with_create_default_catalog_and_schema(false)
            .with_default_catalog_and_schema(&database, "public");
        // One AWS set-up (credential chain, region) for the Glue client and S3.
        let aws = match &config.lake.glue {
            Some(g) => {
                Some(crate::aws::sdk_config(g.region.as_deref(), g.aws_endpoint.as_deref()).await)
            }
            None => None,
        };
        let memory = Arc::new(memory::LakeMemory::from_config(config));
        let runtime = lake_runtime(config, aws.as_ref(), &memory)?;
        let loader = SessionContext::new_with_config_rt(session_config.clone(), runtime.clone());
        let lake = Arc::new(MemoryCatalogProvider::new());
        lake.register_schema("public", Arc::new(MemorySchemaProvider::new()))
            .map_err(|e| e.to_string())?;

        if let Some(local) = &config.lake.local {
            let root = config.resolve(&local.root);
            if local.demo_data {
                if lake::demo::ensure(&root)? {
                    tracing::info!(root = %root.display(), "generated demo data");
                }
            } else if !root.is_dir() {
                return Err(format!(
                    "lake.local.root: {} is not a directory (set demo_data = true to generate the demo data there)",
                    root.display()
                ));
            }
            for (name, schema) in lake::local::discover(&loader, &root).await? {
                if matches!(
                    name.as_str(),
                    "public" | "pg_catalog" | "information_schema"
                ) {
                    tracing::warn!(database = %name, "lake database name is reserved; skipped");
                    continue;
                }
                lake.register_schema(&name, schema)
                    .map_err(|e| e.to_string())?;
            }
        }

        let glue = match config.lake.glue.as_ref().zip(aws.as_ref()) {
            Some((g, sdk)) => {
                Some(lake::glue::GlueCatalog::start(g, sdk, lake.clone(), runtime.clone()).await)
            }
            None => None,
        };

        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        let cpu = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("sluice-query")
            // I/O too: storage clients may touch sockets from operator code.
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start query runtime: {e}"))?;
        #[cfg(feature = "distributed")]
        let distributed = match &config.engine.distributed {
            Some(d) => Some(Arc::new(distributed::Cluster::connect(d, |p| {
                config.resolve(p)
            })?)),
            None => None,
        };
        #[cfg(not(feature = "distributed"))]
        let distributed = None;
        let engine = Engine {
            distributed,
            lake,
            session_config,
            contexts: std::sync::Mutex::new(HashMap::new()),
            cpu: CpuRuntime(Some(cpu)),
            database,
            parser: PostgresCompatibilityParser::new(),
            runtime,
            memory,
            glue,
            local_generation: std::sync::atomic::AtomicU64::new(0),
            matviews: Arc::new(std::sync::RwLock::new(Vec::new())),
            system: std::sync::OnceLock::new(),
        };
        // Build one view now, so catalog set-up problems stop start-up.
        engine
            .context_for(&Policy::all())
            .await
            .map_err(|e| format!("cannot set up the catalog: {}", e.message))?;
        Ok(engine)
    }

    /// The DataFusion context for a policy, created on first use.
    async fn context_for(&self, policy: &Policy) -> Result<SessionContext, PgError> {
        if let Some(ctx) = self
            .contexts
            .lock()
            .ok()
            .and_then(|m| m.get(policy).cloned())
        {
            return Ok(ctx);
        }
        let internal = |e: String| PgError::new(SqlState::INTERNAL_ERROR, e);
        let state = datafusion::execution::session_state::SessionStateBuilder::new()
            .with_config(self.session_config.clone())
            .with_runtime_env(self.runtime_for(policy).map_err(internal)?)
            .with_default_features()
            .with_physical_optimizer_rules(shortcut_aggregate::physical_optimizer_rules())
            .build();
        let ctx = SessionContext::new_with_state(state);
        let view = visibility::PolicyCatalog::new(self.lake.clone(), Arc::new(policy.clone()));
        if let Some(tables) = self.system.get() {
            system::install(&view, tables.as_ref(), &Arc::new(policy.clone())).map_err(internal)?;
        }
        ctx.register_catalog(&self.database, Arc::new(view));
        setup_pg_catalog(&ctx, &self.database, EmptyContextProvider)
            .map_err(|e| internal(format!("cannot set up pg_catalog: {e}")))?;
        pg_compat::install(
            &ctx,
            &self.database,
            pg_compat::MatViews {
                listing: self.matviews.clone(),
                policy: Arc::new(policy.clone()),
            },
        )
        .await
        .map_err(internal)?;
        if let Ok(mut m) = self.contexts.lock() {
            // Two sessions may race to build the same view; keep the first.
            return Ok(m.entry(policy.clone()).or_insert(ctx).clone());
        }
        Ok(ctx)
    }

    /// The runtime a policy's context runs in: the shared one, or, when its roles
    /// have a memory share, a copy reserving through that role's budget (object
    /// stores, caches and the spill disk manager stay shared).
    fn runtime_for(&self, policy: &Policy) -> Result<Arc<RuntimeEnv>, String> {
        match &policy.memory {
            None => Ok(self.runtime.clone()),
            Some(share) => {
                let pool = self.memory.pool_for(Some(share));
                let execution = &self.session_config.options().execution;
                memory::warn_if_too_small(
                    share,
                    &pool,
                    execution.target_partitions,
                    execution.sort_spill_reservation_bytes,
                );
                RuntimeEnvBuilder::from_runtime_env(&self.runtime)
                    .with_memory_pool(pool)
                    .build_arc()
                    .map_err(|e| format!("cannot set up the query runtime: {e}"))
            }
        }
    }

    /// The lake queries' memory (pool, role budgets), for the metrics.
    pub fn memory(&self) -> &memory::LakeMemory {
        &self.memory
    }

    /// Changes whenever the set of lake schemas or gateway views may have changed
    /// (Glue refreshes, views created or dropped).
    pub fn lake_generation(&self) -> u64 {
        self.glue.as_ref().map(|g| g.generation()).unwrap_or(0)
            + self
                .local_generation
                .load(std::sync::atomic::Ordering::Acquire)
    }

    /// The runtime environment (object stores) every context shares.
    pub fn runtime(&self) -> &Arc<RuntimeEnv> {
        &self.runtime
    }

    /// Mounts a gateway view schema into the lake catalog. Its name must be free.
    pub fn mount_view_schema(
        &self,
        name: &str,
        schema: Arc<dyn datafusion::catalog::SchemaProvider>,
    ) -> Result<(), String> {
        if self.lake.schema(name).is_some() {
            return Err(format!(
                "materialized_views.schemas: `{name}` is already a lake database; pick another schema name"
            ));
        }
        self.lake
            .register_schema(name, schema)
            .map_err(|e| e.to_string())?;
        self.local_generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Ok(())
    }

    /// Replaces the `pg_matviews` listing (and tells sessions the catalog moved).
    pub fn set_matviews(&self, listing: Vec<MatViewListing>) {
        let mut current = match self.matviews.write() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        let names = |l: &[MatViewListing]| {
            l.iter()
                .map(|v| (v.schema.clone(), v.name.clone()))
                .collect::<Vec<_>>()
        };
        // Only a change of names moves the generation (cached lake results are
        // keyed by it); a refresh invalidates its own entries.
        let moved = names(&current) != names(&listing);
        *current = listing;
        if moved {
            self.local_generation
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
    }

    /// The Glue catalog, when `[lake.glue]` is configured.
    pub fn glue(&self) -> Option<&Arc<lake::glue::GlueCatalog>> {
        self.glue.as_ref()
    }

    pub fn database(&self) -> &str {
        &self.database
    }

    /// Tables of one lake schema, whoever may see them.
    pub fn lake_table_names(&self, schema: &str) -> Vec<String> {
        self.lake
            .schema(schema)
            .map(|s| s.table_names())
            .unwrap_or_default()
    }

    /// Lake databases and gateway view schemas (lower case), whoever may see them:
    /// the names that make a statement the lake engine's. PostgreSQL's own schemas
    /// belong to the upstream in a forwarding session.
    pub fn lake_schemas(&self) -> std::collections::HashSet<String> {
        self.lake
            .schema_names()
            .into_iter()
            .map(|s| s.to_lowercase())
            .filter(|s| !matches!(s.as_str(), "public" | "pg_catalog" | "information_schema"))
            .chain(self.system.get().map(|_| system::SCHEMA.to_owned()))
            .collect()
    }

    /// Parses a query string (possibly several statements) in PostgreSQL's dialect,
    /// with the rewrites that let common client catalog queries run on DataFusion.
    pub fn parse(&self, sql: &str) -> Result<Vec<Statement>, PgError> {
        let show = pg_compat::redshift_show(sql);
        let sql = match (&show, pg_compat::known_query(sql)) {
            (Some(query), _) => query.as_str(),
            (None, Some(known)) => known.sql,
            (None, None) => sql,
        };
        check_complexity(sql)?;
        let statements = self
            .parser
            .parse(sql)
            .map_err(|e| PgError::new(SqlState::SYNTAX_ERROR, parser_message(&e.to_string())))?;
        Ok(statements.into_iter().map(pg_compat::rewrite).collect())
    }

    async fn state_for(&self, qc: &QueryContext) -> Result<SessionState, PgError> {
        let ctx = self.context_for(&qc.policy).await?;
        // Only schemas this policy may see count, so search_path reveals nothing.
        let visible = ctx
            .catalog(&self.database)
            .map(|c| c.schema_names())
            .unwrap_or_default();
        let mut state = ctx.state();
        let schema = default_schema(&qc.search_path, &visible);
        let options = state.config_mut().options_mut();
        options.catalog.default_schema = schema.clone();
        if !qc.time_zone.eq_ignore_ascii_case("utc") {
            options.execution.time_zone = Some(qc.time_zone.clone());
        }
        session_vars::apply_engine_options(&qc.vars, options)?;
        let constant = |name: &str, value: String| {
            let v = ScalarValue::Utf8(Some(value));
            Arc::new(create_udf(
                name,
                vec![],
                DataType::Utf8,
                Volatility::Stable,
                Arc::new(move |_| Ok(ColumnarValue::Scalar(v.clone()))),
            ))
        };
        use datafusion::execution::FunctionRegistry;
        let _ = state.register_udf(constant("session_user", qc.user.clone()));
        let _ = state.register_udf(constant("current_user", qc.user.clone()));
        let _ = state.register_udf(constant("current_schema", schema));
        let _ = state.register_udf(constant("version", version_string()));
        let _ = state.register_udf(Arc::new(ScalarUDF::new_from_impl(
            session_vars::CurrentSetting::new(qc.vars.clone()),
        )));
        let _ = state.register_udf(Arc::new(ScalarUDF::new_from_impl(
            session_vars::SetConfig::new(qc.vars.clone()),
        )));
        let pid = ScalarValue::Int32(Some(qc.backend_pid));
        let _ = state.register_udf(Arc::new(create_udf(
            "pg_backend_pid",
            vec![],
            DataType::Int32,
            Volatility::Stable,
            Arc::new(move |_| Ok(ColumnarValue::Scalar(pid.clone()))),
        )));
        Ok(state)
    }

    /// Plans one statement. Only read-only queries are allowed through.
    pub async fn plan(&self, stmt: &Statement, qc: &QueryContext) -> Result<LogicalPlan, PgError> {
        let state = self.state_for(qc).await?;
        let statement = DFStatement::Statement(Box::new(stmt.clone()));
        let state = match &qc.remote {
            Some(remote) => self.federate(state, &statement, remote).await?,
            None => state,
        };
        let plan = state.statement_to_plan(statement).await?;
        SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false)
            .verify_plan(&plan)
            .map_err(|e| PgError::new(SqlState::READ_ONLY_SQL_TRANSACTION, e.to_string()))?;
        Ok(plan)
    }

    /// Lays the upstream tables a statement names (those that are not lake tables)
    /// over the lake catalog, for this statement's planning only.
    async fn federate(
        &self,
        state: SessionState,
        statement: &DFStatement,
        remote: &Arc<dyn RemoteTables>,
    ) -> Result<SessionState, PgError> {
        use datafusion::catalog::{CatalogProviderList, SchemaProvider};
        use datafusion::common::TableReference;
        let references = state.resolve_table_references(statement)?;
        let Some(local) = state.catalog_list().catalog(&self.database) else {
            return Ok(state);
        };
        let default_schema = state.config().options().catalog.default_schema.clone();
        let lake = self.lake_schemas();
        let mut found: HashMap<String, Arc<MemorySchemaProvider>> = HashMap::new();
        for reference in references {
            let (schema, table, explicit) = match &reference {
                TableReference::Bare { table } => {
                    (default_schema.clone(), table.to_string(), false)
                }
                TableReference::Partial { schema, table } => {
                    (schema.to_string(), table.to_string(), true)
                }
                TableReference::Full {
                    catalog,
                    schema,
                    table,
                } => {
                    if catalog.as_ref() != self.database {
                        continue;
                    }
                    (schema.to_string(), table.to_string(), true)
                }
            };
            if lake.contains(&schema)
                || matches!(schema.as_str(), "pg_catalog" | "information_schema")
                || local.schema(&schema).is_some_and(|s| s.table_exist(&table))
            {
                continue;
            }
            let name = explicit.then_some(schema.as_str());
            let Some(provider) = remote.table(name, &table).await? else {
                continue;
            };
            let target = found
                .entry(schema.clone())
                .or_insert_with(|| Arc::new(MemorySchemaProvider::new()));
            target.register_table(table, provider)?;
        }
        if found.is_empty() {
            return Ok(state);
        }
        let catalogs = Arc::new(datafusion::catalog::MemoryCatalogProviderList::new());
        catalogs.register_catalog(
            self.database.clone(),
            Arc::new(federated::FederatedCatalog::new(local, found)),
        );
        Ok(
            datafusion::execution::session_state::SessionStateBuilder::new_from_existing(state)
                .with_catalog_list(catalogs)
                .build(),
        )
    }
}

/// The runtime environment every context shares: its object store registry creates
/// an S3 store per bucket on first use (credentials from the AWS standard chain).
fn lake_runtime(
    config: &Config,
    aws: Option<&aws_config::SdkConfig>,
    memory: &memory::LakeMemory,
) -> Result<Arc<RuntimeEnv>, String> {
    let s3 = match (&config.lake.glue, aws) {
        (Some(glue), Some(sdk)) => {
            let region = glue.s3.region.clone().or_else(|| glue.region.clone());
            Some(lake::stores::S3Settings {
                io: tokio::runtime::Handle::current(),
                region: region
                    .or_else(|| sdk.region().map(|r| r.to_string()))
                    .unwrap_or_else(|| "us-east-1".into()),
                endpoint: glue.s3.endpoint.clone(),
                path_style: glue.s3.path_style,
                credentials: sdk.credentials_provider(),
            })
        }
        _ => None,
    };
    // Spill files go under the spill directory, in a `datafusion-*` directory of
    // this process's own (removed when the engine goes).
    let spill_dir = config.engine.spill_dir(|p| config.resolve(p));
    std::fs::create_dir_all(&spill_dir).map_err(|e| {
        format!(
            "engine.spill_dir: cannot create {}: {e}",
            spill_dir.display()
        )
    })?;
    let spill_max = config.engine.spill_max_mb.saturating_mul(1024 * 1024);
    tracing::info!(spill_dir = %spill_dir.display(), spill_max_mb = config.engine.spill_max_mb, "lake query spill directory");
    // Footers and per-file statistics are cached by path, size and modification time
    // (a changed file is read again); a local table's file listing for
    // `[lake.local] listing_ttl_secs`, as Glue listings are, so new files show up.
    let listing_ttl = config
        .lake
        .local
        .as_ref()
        .map_or(60, |l| l.listing_ttl_secs);
    let caches = if listing_ttl == 0 {
        CacheManagerConfig::default().with_list_files_cache_limit(0)
    } else {
        CacheManagerConfig::default()
            .with_list_files_cache_ttl(Some(std::time::Duration::from_secs(listing_ttl)))
    };
    RuntimeEnvBuilder::new()
        .with_cache_manager(caches)
        .with_object_store_registry(Arc::new(lake::stores::LakeStores::new(s3)))
        .with_memory_pool(memory.unshared())
        .with_disk_manager_builder(
            DiskManagerBuilder::default()
                .with_mode(DiskManagerMode::Directories(vec![spill_dir.clone()]))
                .with_max_temp_directory_size(spill_max),
        )
        .build_arc()
        .map_err(|e| {
            format!(
                "cannot set up the query runtime (engine.spill_dir {}): {e}",
                spill_dir.display()
            )
        })
}

/// The first schema on the search path that exists, like PostgreSQL.
fn default_schema(search_path: &str, names: &[String]) -> String {
    search_path
        .split(',')
        .map(|s| s.trim().trim_matches('"').to_lowercase())
        .find(|s| s != "$user" && names.iter().any(|n| n == s))
        .unwrap_or_else(|| "public".into())
}

/// Most binary operators one query string may contain. Operator chains parse into
/// trees as deep as they are long, and walking or dropping such a tree recurses: an
/// absurd chain would overflow a thread's stack and take the process down.
const MAX_OPERATORS: usize = 20_000;

fn check_complexity(sql: &str) -> Result<(), PgError> {
    let bytes = sql.as_bytes();
    let mut operators = bytes
        .iter()
        .filter(|b| {
            matches!(
                b,
                b'+' | b'-' | b'*' | b'/' | b'%' | b'<' | b'>' | b'=' | b'|' | b'&' | b'^'
            )
        })
        .count();
    // AND / OR chains as whole words.
    for w in bytes.split(|b| !b.is_ascii_alphanumeric() && *b != b'_') {
        if w.eq_ignore_ascii_case(b"and") || w.eq_ignore_ascii_case(b"or") {
            operators += 1;
        }
    }
    if operators > MAX_OPERATORS {
        return Err(PgError::new(
            SqlState("54001"),
            format!("statement too complex: more than {MAX_OPERATORS} operators"),
        )
        .with_hint("split the statement, or use IN (…) lists instead of long OR chains"));
    }
    Ok(())
}

/// sqlparser's messages read "sql parser error: Expected: …"; keep the useful part.
fn parser_message(s: &str) -> String {
    let s = s.strip_prefix("sql parser error: ").unwrap_or(s);
    format!("syntax error: {s}")
}
