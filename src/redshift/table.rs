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
use datafusion::arrow::datatypes::{Schema, SchemaRef};
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
use crate::error::{PgError, SqlState};

/// Where a session's upstream tables come from: its upstream and identity.
#[derive(Clone)]
pub struct RemoteCatalog {
    upstream: Arc<Upstream>,
    identity: DbIdentity,
    params: Vec<(String, String)>,
    /// The network runtime: upstream sessions live there, not on the query runtime.
    io: tokio::runtime::Handle,
}

#[async_trait]
impl crate::engine::RemoteTables for RemoteCatalog {
    async fn table(
        &self,
        schema: Option<&str>,
        table: &str,
    ) -> Result<Option<Arc<dyn TableProvider>>, PgError> {
        RemoteCatalog::table(self, schema, table).await
    }
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
                "timezone"
                    | "datestyle"
                    | "extra_float_digits"
                    | "options"
                    | "standard_conforming_strings"
            )
        })
        .cloned()
        .collect();
    p.push(("TimeZone".into(), "UTC".into()));
    p.push(("DateStyle".into(), "ISO, MDY".into()));
    p.push(("extra_float_digits".into(), "3".into()));
    p.push(("standard_conforming_strings".into(), "on".into()));
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

/// How a filter may go upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Push {
    /// Both engines select exactly the same rows.
    Exact,
    /// The upstream may return more rows, never fewer: DataFusion filters again.
    Superset,
}

/// Upstream types whose comparisons mean the same in both engines.
fn comparable(oid: u32) -> bool {
    // bool, int8, int2, int4, numeric, date, timestamp.
    matches!(oid, 16 | 20 | 21 | 23 | 1700 | 1082 | 1114)
}

/// Upstream text types: equality is pushed as a superset only (Redshift ignores
/// trailing blanks in comparisons, so it may find more equal values, never fewer).
fn texty(oid: u32) -> bool {
    matches!(oid, 25 | 1043)
}

impl RedshiftTable {
    fn pushdown(&self, e: &Expr) -> Option<Push> {
        Pushdown(&self.schema).pushdown(e)
    }
}

/// Pushdown decisions over a table's columns (and their upstream types).
struct Pushdown<'a>(&'a Schema);

impl Pushdown<'_> {
    fn column_oid(&self, e: &Expr) -> Option<u32> {
        let Expr::Column(c) = e else {
            return None;
        };
        let field = self.0.field_with_name(&c.name).ok()?;
        rows::field_oid(field)
    }

    /// Whether (and how) a filter can be evaluated upstream.
    fn pushdown(&self, e: &Expr) -> Option<Push> {
        match e {
            Expr::IsNull(inner) | Expr::IsNotNull(inner) => {
                self.column_oid(inner).map(|_| Push::Exact)
            }
            Expr::BinaryExpr(b) if matches!(b.op, Operator::And | Operator::Or) => {
                let (l, r) = (self.pushdown(&b.left)?, self.pushdown(&b.right)?);
                Some(if l == Push::Exact && r == Push::Exact {
                    Push::Exact
                } else {
                    Push::Superset
                })
            }
            Expr::BinaryExpr(b) => {
                let (column, literal) = match (self.column_oid(&b.left), self.column_oid(&b.right))
                {
                    (Some(oid), None) => (oid, &*b.right),
                    (None, Some(oid)) => (oid, &*b.left),
                    _ => return None,
                };
                let Expr::Literal(value, _) = literal else {
                    return None;
                };
                if comparable(column) && safe_literal(value, false) {
                    return matches!(
                        b.op,
                        Operator::Eq
                            | Operator::NotEq
                            | Operator::Lt
                            | Operator::LtEq
                            | Operator::Gt
                            | Operator::GtEq
                    )
                    .then_some(Push::Exact);
                }
                (texty(column) && b.op == Operator::Eq && safe_literal(value, true))
                    .then_some(Push::Superset)
            }
            Expr::InList(l) if !l.negated => {
                let oid = self.column_oid(&l.expr)?;
                let literals = l.list.iter().all(|v| match v {
                    Expr::Literal(value, _) => safe_literal(value, texty(oid)),
                    _ => false,
                });
                if !literals {
                    return None;
                }
                if comparable(oid) {
                    Some(Push::Exact)
                } else {
                    texty(oid).then_some(Push::Superset)
                }
            }
            _ => None,
        }
    }
}

/// Literals whose SQL text means the same upstream: integers, decimals, booleans,
/// dates and timestamps; strings only where `text` allows and without backslashes
/// (Redshift reads backslashes in literals as escapes). Never floats.
fn safe_literal(v: &ScalarValue, text: bool) -> bool {
    match v {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::Utf8View(Some(s))
        | ScalarValue::LargeUtf8(Some(s)) => text && !s.contains('\\'),
        ScalarValue::Int8(Some(_))
        | ScalarValue::Int16(Some(_))
        | ScalarValue::Int32(Some(_))
        | ScalarValue::Int64(Some(_))
        | ScalarValue::Boolean(Some(_))
        | ScalarValue::Decimal128(Some(_), _, _)
        | ScalarValue::Date32(Some(_))
        | ScalarValue::TimestampMicrosecond(Some(_), None)
        | ScalarValue::TimestampMillisecond(Some(_), None)
        | ScalarValue::TimestampSecond(Some(_), None)
        | ScalarValue::TimestampNanosecond(Some(_), None) => !text,
        _ => false,
    }
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
            .map(|f| match (self.pushdown(f), filter_sql(f)) {
                (Some(Push::Exact), Some(_)) => TableProviderFilterPushDown::Exact,
                (Some(Push::Superset), Some(_)) => TableProviderFilterPushDown::Inexact,
                _ => TableProviderFilterPushDown::Unsupported,
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
        // DataFusion hands over every filter of the query, including ones this table
        // declined: only the accepted ones go upstream.
        let conditions: Vec<String> = filters
            .iter()
            .filter(|f| self.pushdown(f).is_some())
            .filter_map(filter_sql)
            .collect();
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
            // A query that stops reading (LIMIT reached, cancelled) stops the scan,
            // also while it still waits for a pool slot or a connection.
            let result = tokio::select! {
                _ = tx.closed() => return,
                r = catalog.run(sql, sink) => r,
            };
            if let Err(e) = result
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
    use datafusion::arrow::datatypes::DataType;
    use datafusion::logical_expr::{col, lit};

    #[test]
    fn filters_go_upstream_only_where_both_engines_agree() {
        let oid = |name: &str, oid: u32, ty: DataType| {
            datafusion::arrow::datatypes::Field::new(name, ty, true).with_metadata(
                std::collections::HashMap::from([(rows::OID_KEY.to_owned(), oid.to_string())]),
            )
        };
        let schema = Schema::new(vec![
            oid("id", 23, DataType::Int32),
            oid("region", 1043, DataType::Utf8),
            oid("code", 1042, DataType::Utf8),
            oid("price", 701, DataType::Float64),
        ]);
        let table = Pushdown(&schema);
        let exact = col("id").gt(lit(5)).and(col("id").not_eq(lit(9)));
        assert_eq!(table.pushdown(&exact), Some(Push::Exact));
        assert_eq!(
            filter_sql(&exact).as_deref(),
            Some("((\"id\" > 5) AND (\"id\" <> 9))")
        );
        assert_eq!(
            table.pushdown(&col("region").eq(lit("east"))),
            Some(Push::Superset)
        );
        assert_eq!(
            table.pushdown(&col("region").not_eq(lit("east"))),
            None,
            "a subset upstream"
        );
        assert_eq!(
            table.pushdown(&col("region").lt(lit("m"))),
            None,
            "collation order"
        );
        assert_eq!(
            table.pushdown(&col("region").eq(lit("a\\' OR 1=1"))),
            None,
            "backslash"
        );
        assert_eq!(table.pushdown(&col("code").eq(lit("x"))), None, "bpchar");
        assert_eq!(table.pushdown(&col("price").gt(lit(1))), None, "floats");
        assert_eq!(
            table.pushdown(&col("id").eq(col("id"))),
            None,
            "column to column"
        );
        assert_eq!(
            table.pushdown(&col("id").in_list(vec![lit(1), lit(2)], false)),
            Some(Push::Exact)
        );
        assert_eq!(table.pushdown(&col("region").like(lit("a%"))), None);
        assert_eq!(table.pushdown(&col("region").is_null()), Some(Push::Exact));
    }
}
