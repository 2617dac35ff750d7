//! `pg_matviews`: the gateway materialized views a session's roles may read.

use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use datafusion::arrow::array::{BooleanArray, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::Result;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

use crate::auth::policy::Policy;
use crate::engine::MatViewListing;

#[derive(Debug)]
pub struct MatViews {
    pub listing: Arc<RwLock<Vec<MatViewListing>>>,
    pub policy: Arc<Policy>,
}

fn schema() -> SchemaRef {
    let text = |n: &str| Field::new(n, DataType::Utf8, true);
    Arc::new(Schema::new(vec![
        text("schemaname"),
        text("matviewname"),
        text("matviewowner"),
        text("tablespace"),
        Field::new("hasindexes", DataType::Boolean, true),
        Field::new("ispopulated", DataType::Boolean, true),
        text("definition"),
    ]))
}

#[async_trait]
impl TableProvider for MatViews {
    fn schema(&self) -> SchemaRef {
        schema()
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
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let rows: Vec<MatViewListing> = self
            .listing
            .read()
            .map(|l| {
                l.iter()
                    .filter(|v| self.policy.can_read(&v.schema, &v.name))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let text = |f: &dyn Fn(&MatViewListing) -> Option<String>| {
            Arc::new(StringArray::from(rows.iter().map(f).collect::<Vec<_>>()))
        };
        let batch = RecordBatch::try_new(
            schema(),
            vec![
                text(&|v| Some(v.schema.clone())),
                text(&|v| Some(v.name.clone())),
                text(&|v| Some(v.owner.clone())),
                text(&|_| None),
                Arc::new(BooleanArray::from(vec![false; rows.len()])),
                Arc::new(BooleanArray::from(
                    rows.iter().map(|v| v.populated).collect::<Vec<_>>(),
                )),
                text(&|v| Some(v.definition.clone())),
            ],
        )?;
        Ok(MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            schema(),
            projection.cloned(),
        )?)
    }
}
