//! `current_setting(name [, missing_ok])` and `set_config(name, value, is_local)` for
//! lake statements. Settings belong to the session, not the engine: the session hands
//! each statement a snapshot of its values and a shared list in which `set_config`
//! records changes; the session applies (and validates) them when the statement ends.
//! asyncpg's type introspection and many ORMs call both.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{Array, AsArray, StringArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::exec_err;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, TypeSignature, Volatility,
};
use datafusion::scalar::ScalarValue;

use crate::error::{PgError, SqlState};

/// A setting change made by `set_config`: name, value (`None`: back to the default),
/// and whether it is local to the transaction.
pub type SettingChange = (String, Option<String>, bool);

/// What a statement sees of its session's settings.
#[derive(Debug, Default)]
pub struct SessionVars {
    /// Lower-cased name → value, custom `prefix.name` settings included.
    pub values: HashMap<String, String>,
    /// Changes `set_config` made; the session drains and applies them.
    pub changes: Arc<Mutex<Vec<SettingChange>>>,
    /// The `datafusion.*` options this session may set (`[engine]`), when it is
    /// restricted (not an admin role): `set_config` refuses others with 42501.
    pub engine_settable: Option<Arc<crate::config::EngineConfig>>,
}

impl SessionVars {
    fn lookup(&self, name: &str) -> Option<String> {
        let key = name.to_ascii_lowercase();
        // A change earlier in the same statement wins over the snapshot.
        if let Ok(changes) = self.changes.lock()
            && let Some((_, Some(v), _)) = changes.iter().rev().find(|(n, _, _)| *n == key)
        {
            return Some(v.clone());
        }
        self.values.get(&key).cloned()
    }

    fn known(&self, name: &str) -> bool {
        self.values.contains_key(&name.to_ascii_lowercase()) || name.contains('.')
    }
}

fn unrecognized(name: &str) -> DataFusionError {
    DataFusionError::External(Box::new(PgError::new(
        SqlState::UNDEFINED_OBJECT,
        format!("unrecognized configuration parameter \"{name}\""),
    )))
}

fn strings(arg: &ColumnarValue, rows: usize) -> Result<StringArray> {
    let array = arg.to_array(rows)?;
    let array = datafusion::arrow::compute::cast(&array, &DataType::Utf8)?;
    Ok(array.as_string::<i32>().clone())
}

#[derive(Debug)]
pub struct CurrentSetting {
    vars: Arc<SessionVars>,
    signature: Signature,
}

impl CurrentSetting {
    pub fn new(vars: Arc<SessionVars>) -> Self {
        CurrentSetting {
            vars,
            signature: Signature::one_of(
                vec![
                    TypeSignature::Exact(vec![DataType::Utf8]),
                    TypeSignature::Exact(vec![DataType::Utf8, DataType::Boolean]),
                ],
                Volatility::Stable,
            ),
        }
    }
}

impl PartialEq for CurrentSetting {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.vars, &other.vars)
    }
}
impl Eq for CurrentSetting {}
impl std::hash::Hash for CurrentSetting {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        Arc::as_ptr(&self.vars).hash(state);
    }
}

impl ScalarUDFImpl for CurrentSetting {
    fn name(&self) -> &str {
        "current_setting"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let names = match args.args.first() {
            Some(a) => strings(a, rows)?,
            None => return exec_err!("current_setting takes a setting name"),
        };
        let missing_ok = match args.args.get(1) {
            Some(ColumnarValue::Scalar(ScalarValue::Boolean(b))) => b.unwrap_or(false),
            Some(_) => return exec_err!("current_setting's missing_ok must be a constant"),
            None => false,
        };
        let mut out = Vec::with_capacity(names.len());
        for name in names.iter() {
            let Some(name) = name else {
                out.push(None);
                continue;
            };
            match self.vars.lookup(name) {
                Some(v) => out.push(Some(v)),
                None if missing_ok => out.push(None),
                None => return Err(unrecognized(name)),
            }
        }
        Ok(ColumnarValue::Array(Arc::new(StringArray::from(out))))
    }
}

#[derive(Debug)]
pub struct SetConfig {
    vars: Arc<SessionVars>,
    signature: Signature,
}

impl SetConfig {
    pub fn new(vars: Arc<SessionVars>) -> Self {
        SetConfig {
            vars,
            signature: Signature::exact(
                vec![DataType::Utf8, DataType::Utf8, DataType::Boolean],
                Volatility::Volatile,
            ),
        }
    }
}

impl PartialEq for SetConfig {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.vars, &other.vars)
    }
}
impl Eq for SetConfig {}
impl std::hash::Hash for SetConfig {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        Arc::as_ptr(&self.vars).hash(state);
    }
}

impl ScalarUDFImpl for SetConfig {
    fn name(&self) -> &str {
        "set_config"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let [name, value, local] = args.args.as_slice() else {
            return exec_err!("set_config takes (name, value, is_local)");
        };
        let names = strings(name, rows)?;
        let values = strings(value, rows)?;
        let local = local.to_array(rows)?;
        let local = local.as_boolean();
        let mut out = Vec::with_capacity(rows);
        for i in 0..names.len() {
            if names.is_null(i) {
                return Err(DataFusionError::External(Box::new(PgError::new(
                    SqlState("22004"),
                    "SET requires parameter name",
                ))));
            }
            let name = names.value(i);
            if !self.vars.known(name) {
                return Err(unrecognized(name));
            }
            let lower = name.to_ascii_lowercase();
            if lower.starts_with("datafusion.")
                && let Some(allowed) = &self.vars.engine_settable
                && !allowed.user_may_set(&lower)
            {
                return Err(DataFusionError::External(Box::new(
                    PgError::new(
                        SqlState::INSUFFICIENT_PRIVILEGE,
                        format!("permission denied to set parameter \"{lower}\""),
                    )
                    .with_hint(
                        "lake engine settings are for roles with admin = true; others may set \
                         only those listed in the gateway's [engine] user_settable",
                    ),
                )));
            }
            // A NULL value resets to the default, as in PostgreSQL.
            let v = (!values.is_null(i)).then(|| values.value(i).to_owned());
            let is_local = !local.is_null(i) && local.value(i);
            if let Ok(mut changes) = self.vars.changes.lock() {
                changes.push((name.to_ascii_lowercase(), v.clone(), is_local));
            }
            out.push(v);
        }
        Ok(ColumnarValue::Array(Arc::new(StringArray::from(out))))
    }
}

/// Whether the engine knows option `name` (`datafusion.…`) and accepts `value`:
/// 42704 for an unknown option, 22023 for a value it refuses.
pub fn check_engine_option(name: &str, value: &str) -> std::result::Result<(), PgError> {
    let mut options = datafusion::config::ConfigOptions::default();
    options.set(name, value).map_err(|e| {
        let message = e.to_string();
        let lower = message.to_lowercase();
        if lower.contains("not found") || lower.contains("could not find") {
            PgError::new(
                SqlState::UNDEFINED_OBJECT,
                format!("unrecognized configuration parameter \"{name}\""),
            )
        } else {
            PgError::new(
                SqlState::INVALID_PARAMETER_VALUE,
                format!("invalid value for parameter \"{name}\": \"{value}\""),
            )
            .with_detail(message)
        }
    })
}

/// Applies the session's `datafusion.*` settings (checked when they were set) to a
/// statement's engine options.
pub fn apply_engine_options(
    vars: &SessionVars,
    options: &mut datafusion::config::ConfigOptions,
) -> std::result::Result<(), PgError> {
    for (name, value) in vars.values.iter() {
        if name.starts_with("datafusion.") {
            options.set(name, value).map_err(|e| {
                PgError::new(
                    SqlState::INVALID_PARAMETER_VALUE,
                    format!("the session's setting {name} = '{value}' is not valid: {e}"),
                )
            })?;
        }
    }
    Ok(())
}
