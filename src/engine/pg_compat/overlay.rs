//! A schema provider that serves some tables itself and delegates the rest, so a
//! handful of `pg_catalog` tables can be corrected without forking
//! datafusion-pg-catalog's provider.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::error::DataFusionError;

type TableResult = Result<Option<Arc<dyn TableProvider>>, DataFusionError>;

pub struct OverlaySchema {
    inner: Arc<dyn SchemaProvider>,
    /// Lowercase table name → replacement (or additional) table.
    tables: HashMap<String, Arc<dyn TableProvider>>,
}

impl OverlaySchema {
    pub fn new(inner: Arc<dyn SchemaProvider>) -> Self {
        OverlaySchema {
            inner,
            tables: HashMap::new(),
        }
    }

    pub fn with_table(mut self, name: &str, table: Arc<dyn TableProvider>) -> Self {
        self.tables.insert(name.to_ascii_lowercase(), table);
        self
    }
}

impl fmt::Debug for OverlaySchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<_> = self.tables.keys().collect();
        names.sort();
        f.debug_struct("OverlaySchema")
            .field("inner", &self.inner)
            .field("tables", &names)
            .finish()
    }
}

// `SchemaProvider` is an `#[async_trait]` trait; the crate is not a dependency of
// Sluice, so `table` is written in the form that macro expands to.
impl SchemaProvider for OverlaySchema {
    fn owner_name(&self) -> Option<&str> {
        self.inner.owner_name()
    }

    fn table_names(&self) -> Vec<String> {
        let mut names = self.inner.table_names();
        for name in self.tables.keys() {
            if !names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
                names.push(name.clone());
            }
        }
        names
    }

    fn table<'a, 'b, 'r>(
        &'a self,
        name: &'b str,
    ) -> Pin<Box<dyn Future<Output = TableResult> + Send + 'r>>
    where
        'a: 'r,
        'b: 'r,
        Self: 'r,
    {
        Box::pin(async move {
            if let Some(table) = self.tables.get(&name.to_ascii_lowercase()) {
                return Ok(Some(Arc::clone(table)));
            }
            self.inner.table(name).await
        })
    }

    fn table_exist(&self, name: &str) -> bool {
        self.tables.contains_key(&name.to_ascii_lowercase()) || self.inner.table_exist(name)
    }
}
