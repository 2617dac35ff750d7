//! Two shapes of partial aggregate that DataFusion runs with a hash table probed
//! once per row, although their groups are known without hashing:
//!
//! - **By Hive partition columns** (`GROUP BY month` over `…/month=2024-03/…`), run
//!   the way DuckDB runs them: a partition column has one value per file and a file
//!   scan never mixes files in a batch, so each batch holds a run (or a few) of equal
//!   keys. The runs are found by comparing adjacent keys, and each run is fed whole to
//!   its key's accumulators (vectorised `sum`/`count`/`avg` over a slice).
//! - **By a `CASE` of literals** (`CASE WHEN r < 0.05 THEN 'low' … ELSE 'high' END`,
//!   the brief's tip buckets): each row's group is the branch it takes. The WHENs are
//!   evaluated as `CASE` does, each only on the rows no earlier WHEN took, and each
//!   branch's rows are fed to that literal's accumulators, without building the
//!   strings at all.
//!
//! [`ShortcutAggregateExec`] emits the same partial state the hash aggregate would,
//! so DataFusion's final aggregate above is unchanged, and the answer never depends
//! on the shortcut paying off (any batch is split correctly, only more slowly).
//!
//! Applies to `Partial` aggregates with a plain `GROUP BY` (no grouping sets), no
//! `FILTER`, `DISTINCT` or ordered aggregates and no group limit; the partition shape
//! when every key traces back through projections, filters and repartitions to a file
//! scan's partition columns, the CASE shape when the one key is a projection's CASE
//! whose results are all literals. Measured in README ("The lake engine's speed").
//!
//! Its groups are as many as the partition values or CASE branches a statement
//! reads — a few accumulators each — so they are not reserved from the memory pool.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch};
use datafusion::arrow::compute::kernels::boolean::not;
use datafusion::arrow::compute::{cast, filter_record_batch, partition, prep_null_mask_filter};
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
use datafusion::physical_plan::expressions::{CaseExpr, Column, Literal};
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

/// The physical optimizer rule.
#[derive(Debug, Default)]
pub struct ShortcutAggregateRule;

/// DataFusion's physical optimizer rules with [`ShortcutAggregateRule`] placed before
/// the first projection pushdown: after that, a CASE computed for the aggregate may
/// have moved into the file scan, out of the rule's sight.
pub fn physical_optimizer_rules() -> Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>> {
    let mut rules = datafusion::physical_optimizer::optimizer::PhysicalOptimizer::new().rules;
    let at = rules
        .iter()
        .position(|r| r.name() == "ProjectionPushdown")
        .unwrap_or(rules.len());
    rules.insert(at, Arc::new(ShortcutAggregateRule));
    rules
}

impl PhysicalOptimizerRule for ShortcutAggregateRule {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(aggregate) = node.downcast_ref::<AggregateExec>() else {
                return Ok(Transformed::no(node));
            };
            Ok(match ShortcutAggregateExec::replacing(aggregate) {
                Some(exec) => Transformed::yes(Arc::new(exec) as Arc<dyn ExecutionPlan>),
                None => Transformed::no(node),
            })
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "sluice_shortcut_aggregate"
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
pub struct ShortcutAggregateExec {
    input: Arc<dyn ExecutionPlan>,
    keys: Keys,
    aggregates: Vec<Arc<AggregateFunctionExpr>>,
    /// The replaced aggregate's: same schema, partitioning and ordering guarantees.
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl ShortcutAggregateExec {
    /// The replacement for `aggregate`, when it qualifies (module comment).
    pub fn replacing(aggregate: &AggregateExec) -> Option<ShortcutAggregateExec> {
        if !Self::plain_partial(aggregate) {
            return None;
        }
        let group_by = aggregate.group_expr();
        let by_partition = group_by.expr().iter().all(|(e, _)| {
            e.downcast_ref::<Column>()
                .is_some_and(|c| is_partition_column(aggregate.input(), c.index()))
        });
        if by_partition {
            return Some(ShortcutAggregateExec {
                input: aggregate.input().clone(),
                keys: Keys::Runs(group_by.expr().to_vec()),
                aggregates: aggregate.aggr_expr().to_vec(),
                properties: aggregate.properties().clone(),
                metrics: ExecutionPlanMetricsSet::new(),
            });
        }
        Self::by_case(aggregate)
    }

    /// What both shapes need: a `Partial` aggregate with a plain, non-empty `GROUP BY`,
    /// no group limit, and no `FILTER`, `DISTINCT` or ordered aggregates.
    fn plain_partial(aggregate: &AggregateExec) -> bool {
        let group_by = aggregate.group_expr();
        *aggregate.mode() == AggregateMode::Partial
            && group_by.is_single()
            && !group_by.expr().is_empty()
            && aggregate.limit_options().is_none()
            && aggregate.filter_expr().iter().all(Option::is_none)
            && aggregate
                .aggr_expr()
                .iter()
                .all(|a| !a.is_distinct() && a.order_bys().is_empty())
    }

    /// The CASE shape: the one key is a CASE of literals computed by the projection
    /// below, which is skipped (its other outputs are inlined into the arguments).
    fn by_case(aggregate: &AggregateExec) -> Option<ShortcutAggregateExec> {
        let group_by = aggregate.group_expr();
        if group_by.expr().len() != 1 {
            return None;
        }
        let projection = aggregate.input().downcast_ref::<ProjectionExec>()?;
        let key = group_by.expr()[0].0.downcast_ref::<Column>()?;
        let case = projection
            .expr()
            .get(key.index())?
            .expr
            .downcast_ref::<CaseExpr>()?;
        if case.expr().is_some() {
            return None;
        }
        let literal =
            |e: &Arc<dyn PhysicalExpr>| e.downcast_ref::<Literal>().map(|l| l.value().clone());
        let mut whens = Vec::new();
        let mut values = Vec::new();
        for (when, then) in case.when_then_expr() {
            whens.push(when.clone());
            values.push(literal(then)?);
        }
        let key_type = aggregate.schema().field(0).data_type().clone();
        let otherwise = match case.else_expr() {
            Some(e) => literal(e)?,
            None => ScalarValue::try_from(&key_type).ok()?,
        };
        values.push(otherwise);
        // The aggregates' arguments, over the projection's input instead of its output.
        let outputs: Vec<Arc<dyn PhysicalExpr>> =
            projection.expr().iter().map(|p| p.expr.clone()).collect();
        let mut aggregates = Vec::with_capacity(aggregate.aggr_expr().len());
        for a in aggregate.aggr_expr() {
            let inlined = a
                .expressions()
                .into_iter()
                .map(|e| inline_columns(e, &outputs))
                .collect::<Option<Vec<_>>>()?;
            aggregates.push(Arc::new(a.with_new_expressions(inlined, vec![])?));
        }
        Some(ShortcutAggregateExec {
            input: projection.input().clone(),
            keys: Keys::CaseBranches { whens, values },
            aggregates,
            properties: aggregate.properties().clone(),
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }
}

/// `expr` with each column replaced by the projection expression it names.
fn inline_columns(
    expr: Arc<dyn PhysicalExpr>,
    outputs: &[Arc<dyn PhysicalExpr>],
) -> Option<Arc<dyn PhysicalExpr>> {
    let mut missing = false;
    let inlined = expr
        .transform_up(|e| {
            Ok(match e.downcast_ref::<Column>() {
                Some(c) => match outputs.get(c.index()) {
                    Some(o) => Transformed::yes(o.clone()),
                    None => {
                        missing = true;
                        Transformed::no(e)
                    }
                },
                None => Transformed::no(e),
            })
        })
        .ok()?
        .data;
    (!missing).then_some(inlined)
}

/// How the groups of a batch are found.
#[derive(Debug, Clone)]
enum Keys {
    /// Runs of equal values of these key expressions.
    Runs(Vec<(Arc<dyn PhysicalExpr>, String)>),
    /// The branch of `CASE WHEN whens[0] THEN values[0] … ELSE values[last] END`.
    CaseBranches {
        whens: Vec<Arc<dyn PhysicalExpr>>,
        values: Vec<ScalarValue>,
    },
}

impl DisplayAs for ShortcutAggregateExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let by = match &self.keys {
            Keys::Runs(keys) => {
                let names: Vec<&str> = keys.iter().map(|(_, n)| n.as_str()).collect();
                format!("partition runs of [{}]", names.join(", "))
            }
            Keys::CaseBranches { values, .. } => format!("{} CASE branches", values.len()),
        };
        let aggregates: Vec<&str> = self.aggregates.iter().map(|a| a.name()).collect();
        write!(
            f,
            "ShortcutAggregateExec: mode=Partial, by={by}, aggr=[{}]",
            aggregates.join(", ")
        )
    }
}

impl ExecutionPlan for ShortcutAggregateExec {
    fn name(&self) -> &str {
        "ShortcutAggregateExec"
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
        let keys: Vec<&Arc<dyn PhysicalExpr>> = match &self.keys {
            Keys::Runs(keys) => keys.iter().map(|(e, _)| e).collect(),
            Keys::CaseBranches { whens, .. } => whens.iter().collect(),
        };
        apply_expression_roots(keys.into_iter().chain(arguments.iter()), f)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let input = match (children.pop(), children.is_empty()) {
            (Some(input), true) => input,
            _ => {
                return Err(datafusion::error::DataFusionError::Internal(
                    "ShortcutAggregateExec has exactly one input".into(),
                ));
            }
        };
        Ok(Arc::new(ShortcutAggregateExec {
            input,
            keys: self.keys.clone(),
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
            keys: self.keys.clone(),
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

/// One group's accumulators, one per aggregate.
type Accumulators = Vec<Box<dyn Accumulator>>;

/// One partition's groups: each key's accumulators, in first-seen order.
struct Groups {
    keys: Keys,
    aggregates: Vec<Arc<AggregateFunctionExpr>>,
    index: HashMap<Vec<ScalarValue>, usize>,
    accumulators: Vec<(Vec<ScalarValue>, Accumulators)>,
}

impl Groups {
    fn update(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        match &self.keys {
            Keys::Runs(keys) => {
                let rows = batch.num_rows();
                let keys = keys
                    .iter()
                    .map(|(e, _)| e.evaluate(batch)?.into_array(rows))
                    .collect::<Result<Vec<ArrayRef>>>()?;
                let arguments = self.arguments(batch)?;
                for run in partition(&keys)?.ranges() {
                    let key = keys
                        .iter()
                        .map(|k| ScalarValue::try_from_array(k, run.start))
                        .collect::<Result<Vec<_>>>()?;
                    let slot = self.slot(key)?;
                    if run.start == 0 && run.end == rows {
                        self.feed(slot, &arguments)?;
                        continue;
                    }
                    let sliced: Vec<Vec<ArrayRef>> = arguments
                        .iter()
                        .map(|args| {
                            args.iter()
                                .map(|a| a.slice(run.start, run.end - run.start))
                                .collect()
                        })
                        .collect();
                    self.feed(slot, &sliced)?;
                }
            }
            Keys::CaseBranches { whens, values } => {
                let (whens, values) = (whens.clone(), values.clone());
                // As CASE evaluates: each WHEN only on the rows no earlier one took.
                let mut rest = batch.clone();
                for (when, value) in whens.iter().zip(&values) {
                    if rest.num_rows() == 0 {
                        return Ok(());
                    }
                    let hit = when.evaluate(&rest)?.into_array(rest.num_rows())?;
                    let Some(hit) = hit.as_any().downcast_ref::<BooleanArray>() else {
                        return Err(datafusion::error::DataFusionError::Internal(
                            "CASE WHEN is not boolean".into(),
                        ));
                    };
                    // NULL is not a match (and `not` keeps NULL NULL): make it false.
                    let hit = if hit.null_count() > 0 {
                        prep_null_mask_filter(hit)
                    } else {
                        hit.clone()
                    };
                    if hit.true_count() > 0 {
                        let taken = filter_record_batch(&rest, &hit)?;
                        let arguments = self.arguments(&taken)?;
                        let slot = self.slot(vec![value.clone()])?;
                        self.feed(slot, &arguments)?;
                        rest = filter_record_batch(&rest, &not(&hit)?)?;
                    }
                }
                if rest.num_rows() > 0 {
                    let arguments = self.arguments(&rest)?;
                    let otherwise = values.last().cloned().unwrap_or(ScalarValue::Null);
                    let slot = self.slot(vec![otherwise])?;
                    self.feed(slot, &arguments)?;
                }
            }
        }
        Ok(())
    }

    /// Each aggregate's arguments evaluated over `batch`.
    fn arguments(&self, batch: &RecordBatch) -> Result<Vec<Vec<ArrayRef>>> {
        let rows = batch.num_rows();
        self.aggregates
            .iter()
            .map(|a| {
                a.expressions()
                    .iter()
                    .map(|e| e.evaluate(batch)?.into_array(rows))
                    .collect::<Result<Vec<ArrayRef>>>()
            })
            .collect()
    }

    /// The accumulators' index for `key`, created on first sight.
    fn slot(&mut self, key: Vec<ScalarValue>) -> Result<usize> {
        if let Some(slot) = self.index.get(&key) {
            return Ok(*slot);
        }
        let accumulators = self
            .aggregates
            .iter()
            .map(|a| a.create_accumulator())
            .collect::<Result<Vec<_>>>()?;
        self.accumulators.push((key.clone(), accumulators));
        self.index.insert(key, self.accumulators.len() - 1);
        Ok(self.accumulators.len() - 1)
    }

    fn feed(&mut self, slot: usize, arguments: &[Vec<ArrayRef>]) -> Result<()> {
        for (accumulator, args) in self.accumulators[slot].1.iter_mut().zip(arguments) {
            accumulator.update_batch(args)?;
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
mod tests;
