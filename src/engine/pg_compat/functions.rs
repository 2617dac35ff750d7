//! Catalog functions clients call that neither DataFusion nor datafusion-pg-catalog
//! provide. Sluice has no comments, user functions or on-disk relations, so most
//! answer a constant; the point is that client catalog queries plan and run.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int32Array, ListArray, StructArray};
use datafusion::arrow::datatypes::{DataType, Field, Fields, Int64Type};
use datafusion::common::{exec_err, plan_err};
use datafusion::error::Result;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;
use datafusion::scalar::ScalarValue;

/// Name of the scalar function `_pg_expandarray` is rewritten to (wrapped in
/// `unnest`); see `rewrite::expand_array`.
pub const EXPAND_ARRAY_UDF: &str = "pg_compat_expandarray";

pub fn register(ctx: &SessionContext) {
    let text = |v: Option<&str>| ScalarValue::Utf8(v.map(str::to_string));
    let constants = [
        // No user functions exist; PostgreSQL returns NULL for unknown oids.
        ("pg_get_function_result", text(None)),
        ("pg_get_function_arguments", text(None)),
        ("pg_get_function_identity_arguments", text(None)),
        // No indexes, views or triggers exist in the catalog of a lake.
        ("pg_get_indexdef", text(None)),
        ("pg_get_viewdef", text(None)),
        ("pg_get_triggerdef", text(None)),
        ("pg_get_ruledef", text(None)),
        ("pg_get_function_sqlbody", text(None)),
        ("pg_tablespace_location", text(Some(""))),
        // No comments exist.
        ("col_description", text(None)),
        ("obj_description", text(None)),
        ("shobj_description", text(None)),
        // Every object lives in a schema on the search path as far as clients care.
        ("pg_function_is_visible", ScalarValue::Boolean(Some(true))),
        ("pg_type_is_visible", ScalarValue::Boolean(Some(true))),
        // Lake tables have no local storage.
        ("pg_table_size", ScalarValue::Int64(Some(0))),
        ("pg_indexes_size", ScalarValue::Int64(Some(0))),
    ];
    for (name, value) in constants {
        ctx.register_udf(ScalarUDF::new_from_impl(Constant::new(name, value)));
    }
    ctx.register_udf(ScalarUDF::new_from_impl(SizePretty::new()));
    ctx.register_udf(ScalarUDF::new_from_impl(ExpandArray::new()));
}

/// A function of any arguments that always returns the same value.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Constant {
    name: String,
    value: ScalarValue,
    signature: Signature,
}

impl Constant {
    fn new(name: &str, value: ScalarValue) -> Self {
        Constant {
            name: name.to_string(),
            value,
            signature: Signature::variadic_any(Volatility::Stable),
        }
    }
}

impl ScalarUDFImpl for Constant {
    fn name(&self) -> &str {
        &self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(self.value.data_type())
    }
    fn invoke_with_args(&self, _: ScalarFunctionArgs) -> Result<ColumnarValue> {
        Ok(ColumnarValue::Scalar(self.value.clone()))
    }
}

/// `pg_size_pretty(bigint)`: PostgreSQL's human-readable byte count (units
/// switch once a value reaches 10240 of the smaller unit, rounding half up).
#[derive(Debug, PartialEq, Eq, Hash)]
struct SizePretty {
    signature: Signature,
}

impl SizePretty {
    fn new() -> Self {
        SizePretty {
            signature: Signature::exact(vec![DataType::Int64], Volatility::Immutable),
        }
    }
}

fn size_pretty(bytes: i64) -> String {
    const UNITS: [&str; 5] = ["kB", "MB", "GB", "TB", "PB"];
    if bytes.unsigned_abs() < 10 * 1024 {
        return format!("{bytes} bytes");
    }
    let mut value = bytes as f64;
    for (i, unit) in UNITS.iter().enumerate() {
        value /= 1024.0;
        if value.abs() < 10.0 * 1024.0 || i == UNITS.len() - 1 {
            return format!("{} {unit}", value.round() as i64);
        }
    }
    format!("{bytes} bytes")
}

impl ScalarUDFImpl for SizePretty {
    fn name(&self) -> &str {
        "pg_size_pretty"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [arg] = args.args.as_slice() else {
            return exec_err!("pg_size_pretty takes one argument");
        };
        let array = arg.to_array(args.number_rows)?;
        let Some(ints) = array.as_primitive_opt::<Int64Type>() else {
            return exec_err!("pg_size_pretty expects bigint");
        };
        let out: datafusion::arrow::array::StringArray =
            ints.iter().map(|v| v.map(size_pretty)).collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// `information_schema._pg_expandarray(anyarray)` is a set-returning function of
/// `(x, n)` rows (element, 1-based index). DataFusion has no set-returning scalar
/// functions, so this returns the array of `{x, n}` structs, and the rewrite wraps
/// the call in `unnest(...)`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct ExpandArray {
    signature: Signature,
}

impl ExpandArray {
    fn new() -> Self {
        ExpandArray {
            signature: Signature::any(1, Volatility::Immutable),
        }
    }

    fn struct_fields(element: &DataType) -> Fields {
        Fields::from(vec![
            Field::new("x", element.clone(), true),
            Field::new("n", DataType::Int32, false),
        ])
    }
}

impl ScalarUDFImpl for ExpandArray {
    fn name(&self) -> &str {
        EXPAND_ARRAY_UDF
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match arg_types {
            [DataType::List(f)] => Ok(DataType::new_list(
                DataType::Struct(Self::struct_fields(f.data_type())),
                true,
            )),
            [DataType::Null] => Ok(DataType::new_list(
                DataType::Struct(Self::struct_fields(&DataType::Int32)),
                true,
            )),
            other => plan_err!("_pg_expandarray expects an array, got {other:?}"),
        }
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [arg] = args.args.as_slice() else {
            return exec_err!("_pg_expandarray takes one argument");
        };
        let array = arg.to_array(args.number_rows)?;
        let list: ListArray = match array.as_list_opt::<i32>() {
            Some(l) => l.clone(),
            // An untyped NULL argument: all rows are NULL arrays of int4.
            None => ListArray::new_null(
                Arc::new(Field::new_list_field(DataType::Int32, true)),
                array.len(),
            ),
        };
        let values = Arc::clone(list.values());
        let offsets = list.offsets();
        // 1-based position of every element within its own list.
        let mut positions = vec![0i32; values.len()];
        for w in offsets.windows(2) {
            let (start, end) = (w[0].max(0) as usize, w[1].max(0) as usize);
            for (k, slot) in positions
                .iter_mut()
                .enumerate()
                .take(end.min(values.len()))
                .skip(start)
            {
                *slot = i32::try_from(k - start + 1).unwrap_or(i32::MAX);
            }
        }
        let fields = Self::struct_fields(values.data_type());
        let structs = StructArray::try_new(
            fields.clone(),
            vec![values, Arc::new(Int32Array::from(positions)) as ArrayRef],
            None,
        )?;
        let out = ListArray::try_new(
            Arc::new(Field::new_list_field(DataType::Struct(fields), true)),
            offsets.clone(),
            Arc::new(structs),
            list.nulls().cloned(),
        )?;
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_print_like_postgres() {
        assert_eq!(size_pretty(0), "0 bytes");
        assert_eq!(size_pretty(10239), "10239 bytes");
        assert_eq!(size_pretty(10240), "10 kB");
        assert_eq!(size_pretty(5 * 1024 * 1024 * 1024), "5120 MB");
        assert_eq!(size_pretty(20 * 1024 * 1024 * 1024), "20 GB");
    }
}
