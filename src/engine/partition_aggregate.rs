//! Aggregates grouped only by Hive partition columns (`GROUP BY month` over
//! `…/month=2024-03/…`), run the way DuckDB runs them: one ungrouped aggregate per
//! partition value instead of a hash table probed once per row.
//!
//! A partition column has one value per file, and a file scan never mixes files in a
//! batch, so each batch holds one run (or a few) of equal keys. The rule replaces
//! DataFusion's partial `AggregateExec` over such a scan with
//! [`PartitionAggregateExec`], which finds the runs in each batch (a linear compare of
//! adjacent keys), feeds each run whole to that key's accumulators — vectorised
//! `sum`/`count`/`avg` over the slice — and emits the same partial state the hash
//! aggregate would, so DataFusion's final aggregate above is unchanged. The answer
//! never depends on the runs being long: any batch is split correctly, only slower.
//!
//! Applies when: the aggregate is `Partial`, a plain `GROUP BY` (no grouping sets) of
//! columns that trace back through projections, filters and repartitions to the
//! partition columns of a file scan, with no `FILTER`, `DISTINCT` or ordered aggregates
//! and no group limit. Measured in README ("The lake engine's speed").

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::compute::{cast, partition};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Result, ScalarValue};
use datafusion::config::ConfigOptions;
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::Accumulator;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::expressions::Column;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, SendableRecordBatchStream,
    apply_expression_roots,
};
use futures::StreamExt;

/// The physical optimizer rule; runs after DataFusion's own.
#[derive(Debug, Default)]
pub struct PartitionAggregateRule;

impl PhysicalOptimizerRule for PartitionAggregateRule {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(aggregate) = node.downcast_ref::<AggregateExec>() else {
                return Ok(Transformed::no(node));
            };
            Ok(match PartitionAggregateExec::replacing(aggregate) {
                Some(exec) => Transformed::yes(Arc::new(exec) as Arc<dyn ExecutionPlan>),
                None => Transformed::no(node),
            })
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "sluice_partition_aggregate"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Whether output column `index` of `plan` is a partition column of a file scan below.
fn is_partition_column(plan: &Arc<dyn ExecutionPlan>, index: usize) -> bool {
    if let Some(scan) = plan.downcast_ref::<DataSourceExec>() {
        let Some(config) = scan.data_source().downcast_ref::<FileScanConfig>() else {
            return false;
        };
        let schema = plan.schema();
        let Some(field) = schema.fields().get(index) else {
            return false;
        };
        return config
            .table_partition_cols()
            .iter()
            .any(|p| p.name() == field.name());
    }
    if let Some(projection) = plan.downcast_ref::<ProjectionExec>() {
        return match projection.expr().get(index) {
            Some(e) => match e.expr.downcast_ref::<Column>() {
                Some(c) => is_partition_column(projection.input(), c.index()),
                None => false,
            },
            None => false,
        };
    }
    if let Some(filter) = plan.downcast_ref::<FilterExec>() {
        let input_index = match filter.projection() {
            Some(p) => match p.get(index) {
                Some(i) => *i,
                None => return false,
            },
            None => index,
        };
        return is_partition_column(filter.input(), input_index);
    }
    // Moves rows between partitions and keeps each row's values.
    if let Some(r) = plan.downcast_ref::<RepartitionExec>() {
        return is_partition_column(r.input(), index);
    }
    false
}

/// A partial aggregate by partition columns: see the module comment.
#[derive(Debug)]
pub struct PartitionAggregateExec {
    input: Arc<dyn ExecutionPlan>,
    group_by: Vec<(Arc<dyn PhysicalExpr>, String)>,
    aggregates: Vec<Arc<AggregateFunctionExpr>>,
    /// The replaced aggregate's: same schema, partitioning and ordering guarantees.
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl PartitionAggregateExec {
    /// The replacement for `aggregate`, when it qualifies (module comment).
    pub fn replacing(aggregate: &AggregateExec) -> Option<PartitionAggregateExec> {
        let group_by = aggregate.group_expr();
        let qualifies = *aggregate.mode() == AggregateMode::Partial
            && group_by.is_single()
            && !group_by.expr().is_empty()
            && aggregate.limit_options().is_none()
            && aggregate.filter_expr().iter().all(Option::is_none)
            && aggregate
                .aggr_expr()
                .iter()
                .all(|a| !a.is_distinct() && a.order_bys().is_empty())
            && group_by.expr().iter().all(|(e, _)| {
                e.downcast_ref::<Column>()
                    .is_some_and(|c| is_partition_column(aggregate.input(), c.index()))
            });
        qualifies.then(|| PartitionAggregateExec {
            input: aggregate.input().clone(),
            group_by: group_by.expr().to_vec(),
            aggregates: aggregate.aggr_expr().to_vec(),
            properties: aggregate.properties().clone(),
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }
}

impl DisplayAs for PartitionAggregateExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let keys: Vec<&str> = self.group_by.iter().map(|(_, n)| n.as_str()).collect();
        let aggregates: Vec<&str> = self.aggregates.iter().map(|a| a.name()).collect();
        write!(
            f,
            "PartitionAggregateExec: mode=Partial, gby=[{}], aggr=[{}]",
            keys.join(", "),
            aggregates.join(", ")
        )
    }
}

impl ExecutionPlan for PartitionAggregateExec {
    fn name(&self) -> &str {
        "PartitionAggregateExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        let arguments: Vec<Arc<dyn PhysicalExpr>> = self
            .aggregates
            .iter()
            .flat_map(|a| a.expressions())
            .collect();
        apply_expression_roots(
            self.group_by.iter().map(|(e, _)| e).chain(arguments.iter()),
            f,
        )
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let input = match (children.pop(), children.is_empty()) {
            (Some(input), true) => input,
            _ => {
                return Err(datafusion::error::DataFusionError::Internal(
                    "PartitionAggregateExec has exactly one input".into(),
                ));
            }
        };
        Ok(Arc::new(PartitionAggregateExec {
            input,
            group_by: self.group_by.clone(),
            aggregates: self.aggregates.clone(),
            properties: self.properties.clone(),
            metrics: ExecutionPlanMetricsSet::new(),
        }))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let mut input = self.input.execute(partition, context)?;
        let schema = self.schema();
        let mut groups = Groups {
            keys: self.group_by.iter().map(|(e, _)| e.clone()).collect(),
            aggregates: self.aggregates.clone(),
            index: HashMap::new(),
            accumulators: Vec::new(),
        };
        let metrics = BaselineMetrics::new(&self.metrics, partition);
        let out_schema = schema.clone();
        let output = futures::stream::once(async move {
            while let Some(batch) = input.next().await {
                let batch = batch?;
                let _timer = metrics.elapsed_compute().timer();
                groups.update(&batch)?;
            }
            let _timer = metrics.elapsed_compute().timer();
            let batch = groups.emit(&out_schema)?;
            metrics.record_output(batch.num_rows());
            Ok(batch)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, output)))
    }
}

/// One partition's groups: each key's accumulators, in first-seen order.
struct Groups {
    keys: Vec<Arc<dyn PhysicalExpr>>,
    aggregates: Vec<Arc<AggregateFunctionExpr>>,
    index: HashMap<Vec<ScalarValue>, usize>,
    accumulators: Vec<(Vec<ScalarValue>, Vec<Box<dyn Accumulator>>)>,
}

impl Groups {
    fn update(&mut self, batch: &RecordBatch) -> Result<()> {
        let rows = batch.num_rows();
        if rows == 0 {
            return Ok(());
        }
        let keys = self
            .keys
            .iter()
            .map(|e| e.evaluate(batch)?.into_array(rows))
            .collect::<Result<Vec<ArrayRef>>>()?;
        let arguments = self
            .aggregates
            .iter()
            .map(|a| {
                a.expressions()
                    .iter()
                    .map(|e| e.evaluate(batch)?.into_array(rows))
                    .collect::<Result<Vec<ArrayRef>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        for run in partition(&keys)?.ranges() {
            let key = keys
                .iter()
                .map(|k| ScalarValue::try_from_array(k, run.start))
                .collect::<Result<Vec<_>>>()?;
            let slot = match self.index.get(&key) {
                Some(slot) => *slot,
                None => {
                    let accumulators = self
                        .aggregates
                        .iter()
                        .map(|a| a.create_accumulator())
                        .collect::<Result<Vec<_>>>()?;
                    self.accumulators.push((key.clone(), accumulators));
                    self.index.insert(key, self.accumulators.len() - 1);
                    self.accumulators.len() - 1
                }
            };
            let whole = run.start == 0 && run.end == rows;
            for (accumulator, args) in self.accumulators[slot].1.iter_mut().zip(&arguments) {
                if whole {
                    accumulator.update_batch(args)?;
                } else {
                    let sliced: Vec<ArrayRef> = args
                        .iter()
                        .map(|a| a.slice(run.start, run.end - run.start))
                        .collect();
                    accumulator.update_batch(&sliced)?;
                }
            }
        }
        Ok(())
    }

    /// The partial aggregate's output: the keys, then each aggregate's state fields.
    fn emit(&mut self, schema: &SchemaRef) -> Result<RecordBatch> {
        if self.accumulators.is_empty() {
            return Ok(RecordBatch::new_empty(schema.clone()));
        }
        let mut columns: Vec<Vec<ScalarValue>> = vec![Vec::new(); schema.fields().len()];
        for (key, accumulators) in &mut self.accumulators {
            let mut values = key.clone();
            for accumulator in accumulators.iter_mut() {
                values.extend(accumulator.state()?);
            }
            if values.len() != columns.len() {
                return Err(datafusion::error::DataFusionError::Internal(format!(
                    "partition aggregate produced {} values for {} columns",
                    values.len(),
                    columns.len()
                )));
            }
            for (column, value) in columns.iter_mut().zip(values) {
                column.push(value);
            }
        }
        let arrays = columns
            .into_iter()
            .zip(schema.fields())
            .map(|(values, field)| {
                let array = ScalarValue::iter_to_array(values)?;
                if array.data_type() == field.data_type() {
                    Ok(array)
                } else {
                    Ok(cast(&array, field.data_type())?)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(RecordBatch::try_new(schema.clone(), arrays)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Float64Array, Int64Array};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::file_format::parquet::ParquetFormat;
    use datafusion::datasource::listing::ListingOptions;
    use datafusion::execution::session_state::SessionStateBuilder;
    use datafusion::prelude::{SessionConfig, SessionContext};

    /// `t/region=…/day=…/part.parquet` with a few batches each, and a context over it
    /// with or without the rule.
    async fn context(dir: &std::path::Path, with_rule: bool) -> SessionContext {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("x", DataType::Float64, true),
        ]));
        let mut id = 0i64;
        for region in ["east", "west"] {
            for day in 1..=3 {
                let path = dir.join(format!("t/region={region}/day={day}"));
                std::fs::create_dir_all(&path).unwrap();
                let file = std::fs::File::create(path.join("part.parquet")).unwrap();
                let mut writer =
                    datafusion::parquet::arrow::ArrowWriter::try_new(file, schema.clone(), None)
                        .unwrap();
                for _ in 0..3 {
                    let ids: Vec<i64> = (0..100)
                        .map(|_| {
                            id += 1;
                            id
                        })
                        .collect();
                    let xs: Vec<Option<f64>> = ids
                        .iter()
                        .map(|i| (i % 7 != 0).then_some(*i as f64 * 0.5))
                        .collect();
                    let batch = RecordBatch::try_new(
                        schema.clone(),
                        vec![
                            Arc::new(Int64Array::from(ids)),
                            Arc::new(Float64Array::from(xs)),
                        ],
                    )
                    .unwrap();
                    writer.write(&batch).unwrap();
                }
                writer.close().unwrap();
            }
        }
        // Small batches: many per file, and the two files of a partition group share
        // nothing but the scan.
        let config = SessionConfig::new()
            .with_target_partitions(2)
            .with_batch_size(64);
        let mut builder = SessionStateBuilder::new()
            .with_config(config)
            .with_default_features();
        if with_rule {
            builder = builder.with_physical_optimizer_rule(Arc::new(PartitionAggregateRule));
        }
        let ctx = SessionContext::new_with_state(builder.build());
        let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
            .with_file_extension(".parquet")
            .with_table_partition_cols(vec![
                ("region".into(), crate::lake::PARTITION_TEXT),
                ("day".into(), DataType::Int32),
            ]);
        ctx.register_listing_table("t", format!("{}/t/", dir.display()), options, None, None)
            .await
            .unwrap();
        ctx
    }

    async fn run(ctx: &SessionContext, sql: &str) -> String {
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        datafusion::arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string()
    }

    #[tokio::test]
    async fn grouping_by_partition_columns_answers_as_the_hash_aggregate_does() {
        let dir = tempfile::tempdir().unwrap();
        let plain = context(dir.path(), false).await;
        let ruled = context(dir.path(), true).await;
        for (sql, applies) in [
            (
                "SELECT region, count(*), count(x), sum(x), avg(x), min(x), max(id) \
                 FROM t GROUP BY region ORDER BY region",
                true,
            ),
            (
                "SELECT region, day, count(*), sum(x) FROM t WHERE x > 10 \
                 GROUP BY day, region ORDER BY region, day",
                true,
            ),
            (
                "SELECT day, avg(x) FROM (SELECT day, x * 2 AS x FROM t) s \
                 GROUP BY day ORDER BY day",
                true,
            ),
            // Not by partition columns only, DISTINCT, FILTER: the hash aggregate stays.
            (
                "SELECT id % 3 AS k, count(*) FROM t GROUP BY 1 ORDER BY 1",
                false,
            ),
            (
                "SELECT region, count(DISTINCT id % 5) FROM t GROUP BY region ORDER BY 1",
                false,
            ),
            (
                "SELECT region, count(*) FILTER (WHERE x > 3) FROM t GROUP BY region ORDER BY 1",
                false,
            ),
        ] {
            assert_eq!(run(&ruled, sql).await, run(&plain, sql).await, "{sql}");
            let plan = run(&ruled, &format!("EXPLAIN {sql}")).await;
            assert_eq!(
                plan.contains("PartitionAggregateExec"),
                applies,
                "{sql}\n{plan}"
            );
        }
    }
}
