//! Redshift tables inside DataFusion plans, for statements that join them with lake
//! tables or gateway views (cross-engine queries).
//!
//! [`RemoteCatalog`] finds a table's columns upstream (`SELECT * … LIMIT 0`) under
//! the session's own minted identity; [`RedshiftTable`] scans it with a query that
//! carries the projection, the filters both engines evaluate alike, and the limit.
//! Each scan runs on its own pooled upstream session of that identity (the client's
//! pinned session may be busy), on the network runtime.
//!
//! `datafusion-table-providers` has a PostgreSQL provider, but it brings its own
//! connection pool and authentication; these tables must use Sluice's minted
//! credentials, pool limits, TLS policy and error mapping, so the provider is ours.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{RecordBatch, RecordBatchOptions};
use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, ScalarValue};
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::sql::unparser::Unparser;
use datafusion::sql::unparser::dialect::PostgreSqlDialect;

use super::credentials::DbIdentity;
use super::rows::{self, BatchSink};
use super::{Held, Upstream};
use crate::server::error::{PgError, SqlState};

/// Where a session's upstream tables come from: its upstream and identity.
#[derive(Clone)]
pub struct RemoteCatalog {
    upstream: Arc<Upstream>,
    identity: DbIdentity,
    params: Vec<(String, String)>,
    /// The network runtime: upstream sessions live there, not on the query runtime.
    io: tokio::runtime::Handle,
}

impl std::fmt::Debug for RemoteCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RemoteCatalog({}, {})",
            self.upstream.name(),
            self.identity.user
        )
    }
}

/// Startup parameters of scan sessions: text values Sluice can parse.
fn scan_params(params: &[(String, String)]) -> Vec<(String, String)> {
    let mut p: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| {
            !matches!(
                k.to_lowercase().as_str(),
                "timezone" | "datestyle" | "extra_float_digits" | "options"
            )
        })
        .cloned()
        .collect();
    p.push(("TimeZone".into(), "UTC".into()));
    p.push(("DateStyle".into(), "ISO, MDY".into()));
    p.push(("extra_float_digits".into(), "3".into()));
    p
}

impl RemoteCatalog {
    pub fn new(
        upstream: Arc<Upstream>,
        identity: DbIdentity,
        params: &[(String, String)],
    ) -> RemoteCatalog {
        RemoteCatalog {
            upstream,
            identity,
            params: scan_params(params),
            io: tokio::runtime::Handle::current(),
        }
    }

    /// Runs `sql` on a pooled session of this identity, delivering batches to `sink`.
    async fn run(
        &self,
        sql: String,
        mut sink: impl BatchSink + 'static,
    ) -> Result<SchemaRef, PgError> {
        let this = self.clone();
        let task = self.io.spawn(async move {
            let mut held: Held = this
                .upstream
                .open(&this.identity, &this.params, false)
                .await?;
            let result = rows::query_batches(&mut held.conn, &sql, &mut sink).await;
            let clean = result.is_ok() && held.conn.status == b'I';
            this.upstream.release(held, clean).await;
            result
        });
        task.await.map_err(|e| {
            PgError::new(
                SqlState::INTERNAL_ERROR,
                format!("the Redshift scan task failed: {e}"),
            )
        })?
    }

    /// The upstream table `schema.table` (or `table` on the upstream's search
    /// path), or `None` when it does not exist there.
    pub async fn table(
        &self,
        schema: Option<&str>,
        table: &str,
    ) -> Result<Option<Arc<dyn TableProvider>>, PgError> {
        let relation = match schema {
            Some(s) => format!("{}.{}", quote(s), quote(table)),
            None => quote(table),
        };
        let columns = match self
            .run(format!("SELECT * FROM {relation} LIMIT 0"), Discard)
            .await
        {
            Ok(s) => s,
            Err(e) if e.code.0 == "42P01" || e.code.0 == "3F000" => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(Some(Arc::new(RedshiftTable {
            relation,
            schema: columns,
            catalog: self.clone(),
        })))
    }
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// A sink that drops batches (schema discovery).
struct Discard;

impl BatchSink for Discard {
    async fn accept(&mut self, _batch: RecordBatch) -> Result<(), PgError> {
        Ok(())
    }
}

/// A sink that passes batches to a DataFusion stream; a consumer that went away
/// stops the upstream read.
struct ChannelSink {
    tx: tokio::sync::mpsc::Sender<Result<RecordBatch>>,
    /// Zero-column output (`count(*)`): only row counts travel.
    counts_only: Option<SchemaRef>,
}

impl BatchSink for ChannelSink {
    async fn accept(&mut self, batch: RecordBatch) -> Result<(), PgError> {
        let batch = match &self.counts_only {
            Some(empty) => RecordBatch::try_new_with_options(
                empty.clone(),
                vec![],
                &RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
            )
            .map_err(|e| PgError::new(SqlState::INTERNAL_ERROR, e.to_string()))?,
            None => batch,
        };
        self.tx
            .send(Ok(batch))
            .await
            .map_err(|_| PgError::new(SqlState::QUERY_CANCELED, "the query stopped reading"))
    }
}

/// One upstream table.
#[derive(Debug)]
pub struct RedshiftTable {
    relation: String,
    schema: SchemaRef,
    catalog: RemoteCatalog,
}

/// Whether both engines give `e` the same meaning: comparisons of columns with
/// literals, AND/OR/NOT, NULL tests, IN lists. Ordering comparisons on text are
/// left out (the upstream's collation may order strings differently).
fn same_on_both(e: &Expr) -> bool {
    match e {
        Expr::Column(_) => true,
        Expr::Literal(v, _) => !matches!(v, ScalarValue::Float32(_) | ScalarValue::Float64(_)),
        Expr::Not(inner) | Expr::IsNull(inner) | Expr::IsNotNull(inner) => same_on_both(inner),
        Expr::Cast(c) => {
            matches!(
                c.field.data_type(),
                DataType::Int16 | DataType::Int32 | DataType::Int64
            ) && same_on_both(&c.expr)
        }
        Expr::BinaryExpr(b) => match b.op {
            Operator::And | Operator::Or | Operator::Eq | Operator::NotEq => {
                same_on_both(&b.left) && same_on_both(&b.right)
            }
            Operator::Lt | Operator::LtEq | Operator::Gt | Operator::GtEq => {
                !is_text(&b.left)
                    && !is_text(&b.right)
                    && same_on_both(&b.left)
                    && same_on_both(&b.right)
            }
            _ => false,
        },
        Expr::InList(l) => same_on_both(&l.expr) && l.list.iter().all(same_on_both),
        _ => false,
    }
}

fn is_text(e: &Expr) -> bool {
    matches!(
        e,
        Expr::Literal(
            ScalarValue::Utf8(_) | ScalarValue::Utf8View(_) | ScalarValue::LargeUtf8(_),
            _
        )
    )
}

/// A filter as upstream SQL (columns unqualified).
fn filter_sql(e: &Expr) -> Option<String> {
    let bare = e
        .clone()
        .transform(|e| {
            Ok(match e {
                Expr::Column(c) => Transformed::yes(Expr::Column(Column::new_unqualified(c.name))),
                other => Transformed::no(other),
            })
        })
        .ok()?
        .data;
    let dialect = PostgreSqlDialect {};
    Unparser::new(&dialect)
        .expr_to_sql(&bare)
        .ok()
        .map(|s| s.to_string())
}

#[async_trait]
impl TableProvider for RedshiftTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| {
                if same_on_both(f) && filter_sql(f).is_some() {
                    TableProviderFilterPushDown::Exact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let schema = match projection {
            Some(p) => Arc::new(self.schema.project(p)?),
            None => self.schema.clone(),
        };
        let columns = if schema.fields().is_empty() {
            "1".to_owned()
        } else {
            schema
                .fields()
                .iter()
                .map(|f| quote(f.name()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut sql = format!("SELECT {columns} FROM {}", self.relation);
        let conditions = filters
            .iter()
            .map(|f| {
                filter_sql(f).ok_or_else(|| {
                    DataFusionError::Internal(format!("filter {f} cannot be sent upstream"))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        if let Some(n) = limit {
            sql.push_str(&format!(" LIMIT {n}"));
        }
        let partition = Arc::new(RemoteScan {
            schema: schema.clone(),
            sql,
            catalog: self.catalog.clone(),
        });
        Ok(Arc::new(StreamingTableExec::try_new(
            schema,
            vec![partition],
            None,
            Vec::new(),
            false,
            None,
        )?))
    }
}

/// The upstream query of one scan.
#[derive(Debug)]
struct RemoteScan {
    schema: SchemaRef,
    sql: String,
    catalog: RemoteCatalog,
}

impl PartitionStream for RemoteScan {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let sink = ChannelSink {
            tx: tx.clone(),
            counts_only: self
                .schema
                .fields()
                .is_empty()
                .then(|| Arc::new(Schema::empty()) as SchemaRef),
        };
        let catalog = self.catalog.clone();
        let sql = self.sql.clone();
        tracing::debug!(sql = %sql, "cross-engine scan");
        self.catalog.io.spawn(async move {
            if let Err(e) = catalog.run(sql, sink).await
                && e.code != SqlState::QUERY_CANCELED
            {
                let _ = tx.send(Err(DataFusionError::External(Box::new(e)))).await;
            }
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), stream))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::logical_expr::{col, lit};

    #[test]
    fn only_filters_both_engines_agree_on_are_pushed() {
        let pushed = col("id").gt(lit(5)).and(col("region").eq(lit("east")));
        assert!(same_on_both(&pushed));
        assert_eq!(
            filter_sql(&pushed).as_deref(),
            Some("((\"id\" > 5) AND (\"region\" = 'east'))")
        );
        assert!(!same_on_both(&col("region").lt(lit("m"))), "text ordering");
        assert!(!same_on_both(&col("x").eq(lit(1.5))), "float literals");
        assert!(same_on_both(
            &col("id").in_list(vec![lit(1), lit(2)], false)
        ));
        assert!(!same_on_both(&col("name").like(lit("a%"))));
    }
}
