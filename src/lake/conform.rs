//! A table whose schema moves under the catalog: Delta and Iceberg tables add
//! columns between the catalog's refresh (which fixed the schema clients see) and a
//! query (which reads the newest snapshot). `scan` asks the snapshot's provider for
//! the columns the query needs by name and conforms its output to the schema the
//! planner was promised: a column the snapshot lacks is NULL, a type that moved
//! (int widened to long) is cast, and columns the catalog does not know yet stay
//! invisible until the next refresh.

use std::sync::Arc;

use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{Result, ScalarValue, project_schema};
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::expressions::{CastExpr, Column, Literal};
use datafusion::physical_plan::projection::{ProjectionExec, ProjectionExpr};

/// Scans `inner` for the columns of `target` that `projection` selects, with the
/// filters `inner` has every column of (the rest are applied above the scan, as
/// every lake filter is pushed down inexactly), and conforms the output to `target`.
pub async fn scan(
    inner: &dyn TableProvider,
    target: &SchemaRef,
    state: &dyn Session,
    projection: Option<&Vec<usize>>,
    filters: &[Expr],
    limit: Option<usize>,
) -> Result<Arc<dyn ExecutionPlan>> {
    let wanted = project_schema(target, projection)?;
    let have = inner.schema();
    if have.fields() == target.fields() {
        return inner.scan(state, projection, filters, limit).await;
    }
    // Indices into `inner`'s schema, in order of first use.
    let mut inner_projection: Vec<usize> = Vec::with_capacity(wanted.fields().len());
    let mut sources: Vec<Option<usize>> = Vec::with_capacity(wanted.fields().len());
    for field in wanted.fields() {
        let source = have.index_of(field.name()).ok().map(|i| {
            match inner_projection.iter().position(|&j| j == i) {
                Some(p) => p,
                None => {
                    inner_projection.push(i);
                    inner_projection.len() - 1
                }
            }
        });
        sources.push(source);
    }
    let usable: Vec<Expr> = filters
        .iter()
        .filter(|f| {
            f.column_refs()
                .iter()
                .all(|c| have.index_of(c.name()).is_ok())
        })
        .cloned()
        .collect();
    let limit = if usable.len() == filters.len() {
        limit
    } else {
        None
    };
    let plan = inner
        .scan(state, Some(&inner_projection), &usable, limit)
        .await?;
    conform(plan, &wanted, &sources)
}

/// Output column `i` of the result is `sources[i]` of `plan` (cast to `wanted`'s
/// type when it differs), or NULL.
fn conform(
    plan: Arc<dyn ExecutionPlan>,
    wanted: &Schema,
    sources: &[Option<usize>],
) -> Result<Arc<dyn ExecutionPlan>> {
    let input = plan.schema();
    let mut exprs = Vec::with_capacity(sources.len());
    for (field, source) in wanted.fields().iter().zip(sources) {
        let expr: Arc<dyn PhysicalExpr> = match source {
            Some(i) => {
                let from = input.field(*i);
                let column: Arc<dyn PhysicalExpr> = Arc::new(Column::new(from.name(), *i));
                if from.data_type() == field.data_type() {
                    column
                } else {
                    Arc::new(CastExpr::new(column, field.data_type().clone(), None))
                }
            }
            None => Arc::new(Literal::new(ScalarValue::try_from(field.data_type())?)),
        };
        exprs.push(ProjectionExpr::new(expr, field.name().clone()));
    }
    Ok(Arc::new(ProjectionExec::try_new(exprs, plan)?))
}
