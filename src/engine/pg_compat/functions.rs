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
/// Name of the function a LIKE pattern with a non-backslash `ESCAPE` character is
/// rewritten through (see `rewrite::like_escape_to_backslash`).
pub const LIKE_ESCAPE_UDF: &str = "pg_compat_like_escape";
/// Name of the scalar function `generate_subscripts(a, dim)` is rewritten to
/// (wrapped in `unnest`): the array's subscripts along `dim` as an array.
pub const SUBSCRIPTS_UDF: &str = "pg_compat_subscripts";

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
        // No sequences exist (SQLAlchemy asks for identity columns' sequences).
        ("pg_get_serial_sequence", text(None)),
        ("pg_tablespace_location", text(Some(""))),
        // No comments exist.
        ("col_description", text(None)),
        ("obj_description", text(None)),
        ("shobj_description", text(None)),
        // Every object lives in a schema on the search path as far as clients care.
        ("pg_function_is_visible", ScalarValue::Boolean(Some(true))),
        ("pg_type_is_visible", ScalarValue::Boolean(Some(true))),
        ("pg_collation_is_visible", ScalarValue::Boolean(Some(true))),
        // Lake tables have no local storage.
        ("pg_table_size", ScalarValue::Int64(Some(0))),
        ("pg_indexes_size", ScalarValue::Int64(Some(0))),
    ];
    for (name, value) in constants {
        ctx.register_udf(ScalarUDF::new_from_impl(Constant::new(name, value)));
    }
    ctx.register_udf(ScalarUDF::new_from_impl(SizePretty::new()));
    ctx.register_udf(ScalarUDF::new_from_impl(ToRegtype::new()));
    ctx.register_udf(ScalarUDF::new_from_impl(LikeEscape::new()));
    ctx.register_udf(ScalarUDF::new_from_impl(Subscripts::new()));
    ctx.register_udf(ScalarUDF::new_from_impl(JsonBuildObject::new()));
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

/// `to_regtype(text)`: the type's oid, or NULL when no such type exists (psycopg's
/// `TypeInfo.fetch`, which SQLAlchemy runs at connect, looks up `hstore` this way).
/// Lake catalogs hold only built-in types, so a fixed table of PostgreSQL's names and
/// aliases answers it; `pg_catalog.` qualification, case, and a type modifier such as
/// `varchar(10)` are ignored as PostgreSQL ignores them.
#[derive(Debug, PartialEq, Eq, Hash)]
struct ToRegtype {
    signature: Signature,
}

impl ToRegtype {
    fn new() -> Self {
        ToRegtype {
            signature: Signature::exact(vec![DataType::Utf8], Volatility::Stable),
        }
    }
}

/// The oid of a built-in type named as `to_regtype` and `::regtype` accept it.
pub fn builtin_type_oid(name: &str) -> Option<i32> {
    let mut n = name.trim().to_ascii_lowercase();
    if let Some(open) = n.find('(') {
        // `varchar(10)`, `numeric(10,2)`, `timestamp(3) with time zone`
        if let Some(close) = n[open..].find(')') {
            n.replace_range(open..open + close + 1, "");
        }
    }
    let n = n.trim().trim_start_matches("pg_catalog.").trim_matches('"');
    let (base, array) = match n.strip_suffix("[]") {
        Some(b) => (b.trim(), true),
        None => match n.strip_prefix('_') {
            Some(b) => (b, true),
            None => (n, false),
        },
    };
    let base = base.split_whitespace().collect::<Vec<_>>().join(" ");
    let (oid, array_oid) = match base.as_str() {
        "bool" | "boolean" => (16, 1000),
        "bytea" => (17, 1001),
        "char" => (18, 1002),
        "name" => (19, 1003),
        "int8" | "bigint" => (20, 1016),
        "int2" | "smallint" => (21, 1005),
        "int2vector" => (22, 1006),
        "int4" | "integer" | "int" => (23, 1007),
        "regproc" => (24, 1008),
        "text" => (25, 1009),
        "oid" => (26, 1028),
        "oidvector" => (30, 1013),
        "json" => (114, 199),
        "xml" => (142, 143),
        "float4" | "real" => (700, 1021),
        "float8" | "double precision" => (701, 1022),
        "bpchar" | "character" => (1042, 1014),
        "varchar" | "character varying" => (1043, 1015),
        "date" => (1082, 1182),
        "time" | "time without time zone" => (1083, 1183),
        "timestamp" | "timestamp without time zone" => (1114, 1115),
        "timestamptz" | "timestamp with time zone" => (1184, 1185),
        "interval" => (1186, 1187),
        "timetz" | "time with time zone" => (1266, 1270),
        "numeric" | "decimal" => (1700, 1231),
        "regclass" => (2205, 2210),
        "regtype" => (2206, 2211),
        "uuid" => (2950, 2951),
        "jsonb" => (3802, 3807),
        "record" => (2249, 2287),
        "unknown" => (705, -1),
        _ => return None,
    };
    match array {
        false => Some(oid),
        true if array_oid > 0 => Some(array_oid),
        true => None,
    }
}

impl ScalarUDFImpl for ToRegtype {
    fn name(&self) -> &str {
        "to_regtype"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int32)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [arg] = args.args.as_slice() else {
            return exec_err!("to_regtype takes one argument");
        };
        let array = arg.to_array(args.number_rows)?;
        let Some(names) = array.as_string_opt::<i32>() else {
            return exec_err!("to_regtype expects text");
        };
        let out: Int32Array = names.iter().map(|n| n.and_then(builtin_type_oid)).collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// `pg_compat_like_escape(pattern, escape)`: the LIKE pattern written with `escape`
/// as its escape character, rewritten to use the backslash. An empty escape means
/// none (every `\\` becomes literal).
#[derive(Debug, PartialEq, Eq, Hash)]
struct LikeEscape {
    signature: Signature,
}

impl LikeEscape {
    fn new() -> Self {
        LikeEscape {
            signature: Signature::exact(
                vec![DataType::Utf8, DataType::Utf8],
                Volatility::Immutable,
            ),
        }
    }
}

pub fn like_with_backslash(pattern: &str, escape: Option<char>) -> String {
    let mut out = String::with_capacity(pattern.len() + 4);
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if Some(c) == escape {
            match chars.next() {
                Some(next @ ('%' | '_' | '\\')) => {
                    out.push('\\');
                    out.push(next);
                }
                Some(next) => out.push(next),
                None => {}
            }
        } else if c == '\\' {
            out.push_str("\\\\");
        } else {
            out.push(c);
        }
    }
    out
}

impl ScalarUDFImpl for LikeEscape {
    fn name(&self) -> &str {
        LIKE_ESCAPE_UDF
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [pattern, escape] = args.args.as_slice() else {
            return exec_err!("{LIKE_ESCAPE_UDF} takes two arguments");
        };
        let escape = match escape {
            ColumnarValue::Scalar(ScalarValue::Utf8(e)) => {
                e.as_deref().and_then(|e| e.chars().next())
            }
            _ => return exec_err!("LIKE ... ESCAPE needs a constant escape character"),
        };
        let patterns = pattern.to_array(args.number_rows)?;
        let Some(patterns) = patterns.as_string_opt::<i32>() else {
            return exec_err!("LIKE pattern must be text");
        };
        let out: datafusion::arrow::array::StringArray = patterns
            .iter()
            .map(|p| p.map(|p| like_with_backslash(p, escape)))
            .collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// `pg_compat_subscripts(a, dim)`: `[1, …, len(a)]` for `dim = 1` (arrays are
/// one-dimensional in Sluice), an empty array otherwise, NULL for a NULL array. With
/// `unnest` around it, this is PostgreSQL's set-returning `generate_subscripts`, and
/// several `unnest`s in one select list are zipped as PostgreSQL zips SRFs.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Subscripts {
    signature: Signature,
}

impl Subscripts {
    fn new() -> Self {
        Subscripts {
            signature: Signature::any(2, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for Subscripts {
    fn name(&self) -> &str {
        SUBSCRIPTS_UDF
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::new_list(DataType::Int32, true))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [array, dim] = args.args.as_slice() else {
            return exec_err!("generate_subscripts takes (array, dimension)");
        };
        let rows = args.number_rows;
        let array = array.to_array(rows)?;
        let dims = datafusion::arrow::compute::cast(&dim.to_array(rows)?, &DataType::Int64)?;
        let dims = dims.as_primitive::<Int64Type>();
        let lengths: Vec<Option<usize>> = match array.data_type() {
            DataType::List(_) => {
                let l = array.as_list::<i32>();
                (0..l.len())
                    .map(|i| (!l.is_null(i)).then(|| l.value_length(i).max(0) as usize))
                    .collect()
            }
            DataType::LargeList(_) => {
                let l = array.as_list::<i64>();
                (0..l.len())
                    .map(|i| (!l.is_null(i)).then(|| l.value_length(i).max(0) as usize))
                    .collect()
            }
            DataType::Null => vec![None; rows],
            other => return exec_err!("generate_subscripts expects an array, got {other}"),
        };
        let mut builder = datafusion::arrow::array::ListBuilder::new(
            datafusion::arrow::array::Int32Builder::new(),
        );
        for (i, len) in lengths.into_iter().enumerate() {
            match len {
                None => builder.append_null(),
                Some(n) => {
                    if !dims.is_null(i) && dims.value(i) == 1 {
                        for k in 1..=n {
                            builder
                                .values()
                                .append_value(i32::try_from(k).unwrap_or(i32::MAX));
                        }
                    }
                    builder.append(true);
                }
            }
        }
        Ok(ColumnarValue::Array(Arc::new(builder.finish())))
    }
}

/// `json_build_object(k1, v1, …)`: a JSON object text from alternating keys and
/// values (numbers and booleans as JSON literals, everything else as strings).
#[derive(Debug, PartialEq, Eq, Hash)]
struct JsonBuildObject {
    signature: Signature,
}

impl JsonBuildObject {
    fn new() -> Self {
        JsonBuildObject {
            signature: Signature::variadic_any(Volatility::Stable),
        }
    }
}

impl ScalarUDFImpl for JsonBuildObject {
    fn name(&self) -> &str {
        "json_build_object"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        if !args.args.len().is_multiple_of(2) {
            return exec_err!("argument list must have even number of elements");
        }
        let rows = args.number_rows;
        let arrays = args
            .args
            .iter()
            .map(|a| a.to_array(rows))
            .collect::<Result<Vec<_>>>()?;
        let mut out = Vec::with_capacity(rows);
        for row in 0..rows {
            let mut object = serde_json::Map::new();
            for pair in arrays.chunks(2) {
                let key = ScalarValue::try_from_array(&pair[0], row)?;
                if key.is_null() {
                    return exec_err!("null value not allowed for object key");
                }
                let value = ScalarValue::try_from_array(&pair[1], row)?;
                object.insert(scalar_text(&key), scalar_json(&value));
            }
            out.push(Some(serde_json::Value::Object(object).to_string()));
        }
        Ok(ColumnarValue::Array(Arc::new(
            datafusion::arrow::array::StringArray::from(out),
        )))
    }
}

fn scalar_text(v: &ScalarValue) -> String {
    match v {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => s.clone(),
        other => other.to_string(),
    }
}

fn scalar_json(v: &ScalarValue) -> serde_json::Value {
    use serde_json::Value as J;
    if v.is_null() {
        return J::Null;
    }
    match v {
        ScalarValue::Boolean(Some(b)) => J::Bool(*b),
        ScalarValue::Int8(Some(n)) => J::from(*n),
        ScalarValue::Int16(Some(n)) => J::from(*n),
        ScalarValue::Int32(Some(n)) => J::from(*n),
        ScalarValue::Int64(Some(n)) => J::from(*n),
        ScalarValue::UInt8(Some(n)) => J::from(*n),
        ScalarValue::UInt16(Some(n)) => J::from(*n),
        ScalarValue::UInt32(Some(n)) => J::from(*n),
        ScalarValue::UInt64(Some(n)) => J::from(*n),
        ScalarValue::Float32(Some(f)) => {
            serde_json::Number::from_f64(f64::from(*f)).map_or(J::Null, J::Number)
        }
        ScalarValue::Float64(Some(f)) => {
            serde_json::Number::from_f64(*f).map_or(J::Null, J::Number)
        }
        other => J::String(scalar_text(other)),
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
    fn to_regtype_knows_names_aliases_and_arrays() {
        assert_eq!(builtin_type_oid("int4"), Some(23));
        assert_eq!(builtin_type_oid("Integer"), Some(23));
        assert_eq!(builtin_type_oid("pg_catalog.int4"), Some(23));
        assert_eq!(builtin_type_oid("character varying(10)"), Some(1043));
        assert_eq!(builtin_type_oid("int4[]"), Some(1007));
        assert_eq!(builtin_type_oid("_int4"), Some(1007));
        assert_eq!(builtin_type_oid("timestamp(3) with time zone"), Some(1184));
        assert_eq!(builtin_type_oid("hstore"), None);
        assert_eq!(builtin_type_oid("nosuch_schema.t"), None);
    }

    #[test]
    fn like_patterns_are_reescaped_with_backslashes() {
        assert_eq!(like_with_backslash("pg/_", Some('/')), "pg\\_");
        assert_eq!(like_with_backslash("a//b", Some('/')), "a/b");
        assert_eq!(like_with_backslash("50/%", Some('/')), "50\\%");
        assert_eq!(like_with_backslash("c:\\x%", Some('/')), "c:\\\\x%");
        assert_eq!(like_with_backslash("a\\b", None), "a\\\\b");
    }

    #[test]
    fn sizes_print_like_postgres() {
        assert_eq!(size_pretty(0), "0 bytes");
        assert_eq!(size_pretty(10239), "10239 bytes");
        assert_eq!(size_pretty(10240), "10 kB");
        assert_eq!(size_pretty(5 * 1024 * 1024 * 1024), "5120 MB");
        assert_eq!(size_pretty(20 * 1024 * 1024 * 1024), "20 GB");
    }
}
