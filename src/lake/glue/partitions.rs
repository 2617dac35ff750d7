//! Partition pruning for Glue tables, in two steps: the filters on partition columns
//! become a Glue `GetPartitions` `Expression`, so Glue returns (and Sluice lists)
//! only matching partitions; then the same filters are evaluated on the returned
//! partition values, so the answer never depends on how much of the expression Glue
//! understood.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BooleanArray, StringArray};
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::{FieldRef, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, DFSchema, Result, ScalarValue};
use datafusion::execution::context::ExecutionProps;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator};
use datafusion::physical_expr::create_physical_expr;

/// Glue's limit on the length of a `GetPartitions` expression.
const MAX_EXPRESSION_LEN: usize = 2048;

/// Hive writes NULL partition values as this directory name.
const HIVE_NULL: &str = "__HIVE_DEFAULT_PARTITION__";

/// A partition key of a Glue table.
#[derive(Debug, Clone)]
pub struct PartitionKey {
    pub field: FieldRef,
    /// The Hive type, lower case (`string`, `int`, …).
    pub hive_type: String,
}

/// Whether `expr` can be decided from partition values alone.
pub fn is_partition_filter(expr: &Expr, keys: &[PartitionKey]) -> bool {
    let refs = expr.column_refs();
    !refs.is_empty()
        && refs
            .iter()
            .all(|c| keys.iter().any(|k| k.field.name() == &c.name))
        && !expr.is_volatile()
}

/// The Glue expression for those filters that translate; `None` when none do.
/// Filters are ANDed; an untranslatable conjunct is left out (which only widens
/// what Glue returns), an untranslatable OR branch drops the whole OR.
pub fn glue_expression(filters: &[&Expr], keys: &[PartitionKey]) -> Option<String> {
    let parts: Vec<String> = filters
        .iter()
        .flat_map(|f| split_and(f))
        .filter_map(|e| translate(e, keys))
        .collect();
    if parts.is_empty() {
        return None;
    }
    let text = parts.join(" AND ");
    (text.len() <= MAX_EXPRESSION_LEN).then_some(text)
}

fn split_and(e: &Expr) -> Vec<&Expr> {
    match e {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::And,
            right,
        }) => {
            let mut v = split_and(left);
            v.extend(split_and(right));
            v
        }
        other => vec![other],
    }
}

fn translate(e: &Expr, keys: &[PartitionKey]) -> Option<String> {
    match e {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
            Operator::And => Some(format!(
                "({} AND {})",
                translate(left, keys)?,
                translate(right, keys)?
            )),
            Operator::Or => Some(format!(
                "({} OR {})",
                translate(left, keys)?,
                translate(right, keys)?
            )),
            Operator::Eq
            | Operator::NotEq
            | Operator::Lt
            | Operator::LtEq
            | Operator::Gt
            | Operator::GtEq => {
                let (key, value, op) = match (left.as_ref(), right.as_ref()) {
                    (Expr::Column(c), Expr::Literal(v, _)) => (key_of(c, keys)?, v, *op),
                    (Expr::Literal(v, _), Expr::Column(c)) => (key_of(c, keys)?, v, op.swap()?),
                    _ => return None,
                };
                let symbol = match op {
                    Operator::Eq => "=",
                    Operator::NotEq => "<>",
                    Operator::Lt => "<",
                    Operator::LtEq => "<=",
                    Operator::Gt => ">",
                    _ => ">=",
                };
                Some(format!(
                    "{} {symbol} {}",
                    key.field.name(),
                    literal(key, value)?
                ))
            }
            _ => None,
        },
        Expr::InList(list) => {
            let Expr::Column(c) = list.expr.as_ref() else {
                return None;
            };
            let key = key_of(c, keys)?;
            let values = list
                .list
                .iter()
                .map(|v| match v {
                    Expr::Literal(v, _) => literal(key, v),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()?;
            if values.is_empty() {
                return None;
            }
            let not = if list.negated { "NOT " } else { "" };
            Some(format!(
                "{} {not}IN ({})",
                key.field.name(),
                values.join(", ")
            ))
        }
        Expr::Between(b) => {
            let (Expr::Column(c), Expr::Literal(low, _), Expr::Literal(high, _)) =
                (b.expr.as_ref(), b.low.as_ref(), b.high.as_ref())
            else {
                return None;
            };
            let key = key_of(c, keys)?;
            let not = if b.negated { "NOT " } else { "" };
            Some(format!(
                "{} {not}BETWEEN {} AND {}",
                key.field.name(),
                literal(key, low)?,
                literal(key, high)?
            ))
        }
        _ => None,
    }
}

fn key_of<'a>(c: &Column, keys: &'a [PartitionKey]) -> Option<&'a PartitionKey> {
    keys.iter().find(|k| {
        k.field.name() == &c.name
            && c.name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    })
}

/// A literal in Glue's expression syntax, only where its type matches the key's.
fn literal(key: &PartitionKey, v: &ScalarValue) -> Option<String> {
    let is_text = matches!(
        key.hive_type.split('(').next(),
        Some("string" | "varchar" | "char")
    );
    let is_integer = matches!(
        key.hive_type.as_str(),
        "tinyint" | "smallint" | "int" | "integer" | "bigint"
    );
    match v {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s))
            if is_text && !s.contains('\'') && !s.contains('\\') =>
        {
            Some(format!("'{s}'"))
        }
        ScalarValue::Int8(Some(_))
        | ScalarValue::Int16(Some(_))
        | ScalarValue::Int32(Some(_))
        | ScalarValue::Int64(Some(_))
        | ScalarValue::UInt8(Some(_))
        | ScalarValue::UInt16(Some(_))
        | ScalarValue::UInt32(Some(_))
        | ScalarValue::UInt64(Some(_))
            if is_integer =>
        {
            Some(v.to_string())
        }
        _ => None,
    }
}

/// One partition as Glue describes it.
#[derive(Debug, Clone)]
pub struct GluePartition {
    pub values: Vec<String>,
    pub location: String,
}

/// Typed partition values for each partition that passes `filters`.
pub fn prune(
    partitions: &[GluePartition],
    keys: &[PartitionKey],
    filters: &[&Expr],
) -> Result<Vec<(Vec<ScalarValue>, String)>> {
    let rows = partitions.len();
    let schema = Arc::new(Schema::new(
        keys.iter().map(|k| k.field.clone()).collect::<Vec<_>>(),
    ));
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(keys.len());
    for (i, key) in keys.iter().enumerate() {
        let text: StringArray = partitions
            .iter()
            .map(|p| {
                p.values
                    .get(i)
                    .map(String::as_str)
                    .filter(|v| *v != HIVE_NULL)
            })
            .collect();
        // A value that does not fit the key's type reads as NULL, as in Hive.
        let options = CastOptions {
            safe: true,
            ..Default::default()
        };
        columns.push(cast_with_options(&text, key.field.data_type(), &options)?);
    }
    let batch = RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &datafusion::arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(rows)),
    )?;
    let mut keep = BooleanArray::from(vec![true; rows]);
    if !filters.is_empty() {
        let df_schema = DFSchema::try_from(schema.as_ref().clone())?;
        let props = ExecutionProps::new();
        for filter in filters {
            let unqualified = (*filter)
                .clone()
                .transform_up(|e| {
                    Ok(match e {
                        Expr::Column(c) => {
                            Transformed::yes(Expr::Column(Column::new_unqualified(c.name)))
                        }
                        other => Transformed::no(other),
                    })
                })?
                .data;
            let physical =
                create_physical_expr(&unqualified, &df_schema, &props, &Default::default())?;
            let result = physical.evaluate(&batch)?.into_array(rows)?;
            let Some(mask) = result.as_any().downcast_ref::<BooleanArray>() else {
                continue; // not a predicate: cannot prune on it
            };
            keep = datafusion::arrow::compute::and_kleene(&keep, mask)?;
        }
    }
    let mut out = Vec::new();
    for (row, partition) in partitions.iter().enumerate() {
        if datafusion::arrow::array::Array::is_valid(&keep, row) && keep.value(row) {
            let values = batch
                .columns()
                .iter()
                .map(|c| ScalarValue::try_from_array(c, row))
                .collect::<Result<Vec<_>>>()?;
            out.push((values, partition.location.clone()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{DataType, Field};
    use datafusion::prelude::{col, lit};

    fn keys() -> Vec<PartitionKey> {
        vec![
            PartitionKey {
                field: Arc::new(Field::new("year", DataType::Utf8, true)),
                hive_type: "string".into(),
            },
            PartitionKey {
                field: Arc::new(Field::new("day", DataType::Int32, true)),
                hive_type: "int".into(),
            },
        ]
    }

    #[test]
    fn filters_become_glue_expressions() {
        let k = keys();
        let f1 = col("year").eq(lit("2017"));
        let f2 = col("day").in_list(vec![lit(1i32), lit(2i32)], false);
        let f3 = lit(5i32).lt(col("day")).or(col("year").gt_eq(lit("2018")));
        assert_eq!(
            glue_expression(&[&f1, &f2, &f3], &k).unwrap(),
            "year = '2017' AND day IN (1, 2) AND (day > 5 OR year >= '2018')"
        );
        // A string literal against an int key, a quote, or a non-partition column:
        // no expression for that conjunct.
        let odd = col("day").eq(lit("1"));
        let quoted = col("year").eq(lit("20'17"));
        let mixed = col("year").eq(lit("2017")).and(col("fare").gt(lit(1)));
        assert_eq!(glue_expression(&[&odd, &quoted], &k), None);
        assert_eq!(glue_expression(&[&mixed], &k).unwrap(), "year = '2017'");
        let half_or = col("year").eq(lit("2017")).or(col("fare").gt(lit(1)));
        assert_eq!(glue_expression(&[&half_or], &k), None);
        let between = col("day").between(lit(1i32), lit(3i32));
        assert_eq!(
            glue_expression(&[&between], &k).unwrap(),
            "day BETWEEN 1 AND 3"
        );
    }

    #[test]
    fn pruning_evaluates_filters_on_typed_values() {
        let parts: Vec<GluePartition> = [
            ("2017", "1"),
            ("2017", "2"),
            ("2018", "1"),
            (HIVE_NULL, "x"),
        ]
        .iter()
        .map(|(y, d)| GluePartition {
            values: vec![y.to_string(), d.to_string()],
            location: format!("s3://b/{y}/{d}/"),
        })
        .collect();
        let k = keys();
        let f = col("day").gt(lit(1i32)).or(col("year").eq(lit("2018")));
        let kept = prune(&parts, &k, &[&f]).unwrap();
        let locations: Vec<&str> = kept.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(locations, ["s3://b/2017/2/", "s3://b/2018/1/"]);
        assert_eq!(
            kept[0].0,
            vec![ScalarValue::from("2017"), ScalarValue::Int32(Some(2))]
        );
        let all = prune(&parts, &k, &[]).unwrap();
        assert_eq!(all.len(), 4);
        assert_eq!(
            all[3].0,
            vec![ScalarValue::Utf8(None), ScalarValue::Int32(None)]
        );
        assert!(is_partition_filter(&f, &k));
        assert!(!is_partition_filter(&col("fare").gt(lit(1)), &k));
    }
}
