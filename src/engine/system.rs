//! The `sluice` schema: tables served from the gateway's live state (query groups,
//! job runs) rather than from the lake. The server supplies them at start
//! ([`Engine::set_system_tables`]); only admin policies' contexts get the schema
//! (other roles' catalog listings never show it).

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{
    CatalogProvider, MemorySchemaProvider, SchemaProvider, Session, TableProvider,
};
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

use crate::auth::policy::Policy;
use crate::error::{PgError, SqlState};

/// The schema name the system tables live in (also a lake schema for routing).
pub const SCHEMA: &str = "sluice";

pub trait SystemTables: Send + Sync {
    /// The tables a context for `policy` shows in the `sluice` schema.
    fn tables(&self, policy: &Arc<Policy>) -> Vec<(&'static str, Arc<dyn TableProvider>)>;
}

/// The tables of several providers (query groups, job runs), in order.
pub struct Several(pub Vec<Arc<dyn SystemTables>>);

impl SystemTables for Several {
    fn tables(&self, policy: &Arc<Policy>) -> Vec<(&'static str, Arc<dyn TableProvider>)> {
        self.0.iter().flat_map(|t| t.tables(policy)).collect()
    }
}

/// A `sluice` table only admin policies may read, its rows computed when scanned
/// (one batch). [`AdminOnly`] makes it a DataFusion table.
#[async_trait]
pub trait AdminTable: Send + Sync + 'static {
    /// `sluice.<name>`, as the refusal names it.
    fn name(&self) -> &'static str;
    /// Why it is for admins (the refusal's hint).
    fn hint(&self) -> &'static str;
    fn schema(&self) -> SchemaRef;
    async fn batch(&self) -> datafusion::error::Result<RecordBatch>;
}

/// An [`AdminTable`] as a context for one policy sees it: other policies' scans
/// are refused with 42501 (their contexts have no `sluice` schema at all; this
/// checks again, in case a context is ever built otherwise).
pub struct AdminOnly<T> {
    pub table: T,
    pub admin: bool,
}

impl<T: AdminTable> std::fmt::Debug for AdminOnly<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.table.name())
    }
}

#[async_trait]
impl<T: AdminTable> TableProvider for AdminOnly<T> {
    fn schema(&self) -> SchemaRef {
        self.table.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        if !self.admin {
            let e = PgError::new(
                SqlState::INSUFFICIENT_PRIVILEGE,
                format!("permission denied for table {}", self.table.name()),
            )
            .with_hint(self.table.hint());
            return Err(DataFusionError::External(Box::new(e)));
        }
        let batch = self.table.batch().await?;
        Ok(MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            self.table.schema(),
            projection.cloned(),
        )?)
    }
}

/// Adds the `sluice` schema to a policy's catalog view.
pub(super) fn install(
    catalog: &dyn CatalogProvider,
    tables: &dyn SystemTables,
    policy: &Arc<Policy>,
) -> Result<(), String> {
    // Other roles do not see the schema at all (catalog listings stay theirs).
    if !policy.admin {
        return Ok(());
    }
    let schema = MemorySchemaProvider::new();
    for (name, table) in tables.tables(policy) {
        schema
            .register_table(name.to_owned(), table)
            .map_err(|e| format!("cannot register sluice.{name}: {e}"))?;
    }
    catalog
        .register_schema(SCHEMA, Arc::new(schema))
        .map_err(|e| format!("cannot register the sluice schema: {e}"))?;
    Ok(())
}

impl super::Engine {
    /// Supplies the `sluice` schema's tables (once, at start; contexts built before
    /// are rebuilt).
    pub fn set_system_tables(&self, tables: Arc<dyn SystemTables>) {
        if self.system.set(tables).is_ok()
            && let Ok(mut contexts) = self.contexts.lock()
        {
            contexts.clear();
        }
    }
}
