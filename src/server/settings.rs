//! Session parameters (GUCs) clients set, show and reset, with PostgreSQL's
//! validation for the ones whose value changes what Sluice sends.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::error::{PgError, SqlState};
use crate::wire::rows::Tz;

pub use crate::wire::SERVER_VERSION;

/// Parameters PostgreSQL reports with ParameterStatus at startup and on change.
const REPORTED: &[&str] = &[
    "application_name",
    "client_encoding",
    "DateStyle",
    "default_transaction_read_only",
    "in_hot_standby",
    "integer_datetimes",
    "IntervalStyle",
    "is_superuser",
    "server_encoding",
    "server_version",
    "session_authorization",
    "standard_conforming_strings",
    "TimeZone",
];

/// Startup parameters Amazon's Redshift drivers send that are not settings: they
/// describe the driver and its IdP plugin, and are accepted and not applied (nor
/// forwarded to an upstream, which would expect a native-IdP exchange).
pub const REDSHIFT_DRIVER_PARAMS: &[&str] = &[
    "client_protocol_version",
    "driver_version",
    "os_version",
    "driver_discovery_version",
    "plugin_name",
    "idp_type",
    "provider_name",
    "token_type",
    "identity_namespace",
    "idc_client_display_name",
];

/// The `server_version` Redshift reports; its drivers parse it (Python as a PEP 440
/// version) and pick their code paths by it.
pub const REDSHIFT_SERVER_VERSION: &str = "8.0.2";

/// The startup ParameterStatus set a Redshift driver expects (ANCHORS, drivers'
/// sources): Redshift's `server_version`; `datashare_enabled`/`external_database`
/// as on/off (the JDBC driver refuses other values; off = single-database
/// metadata); no `server_protocol_version`, so every driver stays on the standard
/// RowDescription and PostgreSQL's binary formats. `show_discovery` 4 selects the
/// drivers' `SHOW SCHEMAS/TABLES/COLUMNS` metadata path, which Sluice answers for
/// the lake; forwarding sessions leave it out, so metadata queries go to the
/// upstream's own catalog.
pub fn redshift_shape(reported: &mut Vec<(String, String)>, forwarding: bool) {
    for (k, v) in reported.iter_mut() {
        if k == "server_version" {
            *v = REDSHIFT_SERVER_VERSION.to_owned();
        }
    }
    reported.push(("datashare_enabled".into(), "off".into()));
    reported.push(("external_database".into(), "off".into()));
    if !forwarding {
        reported.push(("show_discovery".into(), "4".into()));
    }
}

/// Known parameters and their defaults; the canonical spelling is what SHOW prints as
/// column name and ParameterStatus carries.
const DEFAULTS: &[(&str, &str)] = &[
    ("application_name", ""),
    ("bytea_output", "hex"),
    ("client_encoding", "UTF8"),
    ("client_min_messages", "notice"),
    ("DateStyle", "ISO, MDY"),
    ("default_transaction_isolation", "read committed"),
    ("default_transaction_read_only", "on"),
    ("extra_float_digits", "1"),
    ("idle_in_transaction_session_timeout", "0"),
    ("idle_session_timeout", "0"),
    ("in_hot_standby", "off"),
    ("integer_datetimes", "on"),
    ("IntervalStyle", "postgres"),
    ("is_superuser", "off"),
    ("jit", "off"),
    ("lc_messages", "C"),
    ("lc_monetary", "C"),
    ("lc_numeric", "C"),
    ("lc_time", "C"),
    ("lock_timeout", "0"),
    ("max_identifier_length", "63"),
    // Redshift's workload label (`SET query_group TO 'etl'`): Sluice's query groups
    // and audit trail carry it too.
    ("query_group", "default"),
    ("search_path", "\"$user\", public"),
    ("server_encoding", "UTF8"),
    ("server_version", SERVER_VERSION),
    ("server_version_num", "150000"),
    ("session_authorization", ""),
    ("standard_conforming_strings", "on"),
    ("statement_timeout", "0"),
    ("TimeZone", "UTC"),
    ("transaction_isolation", "read committed"),
    ("transaction_read_only", "on"),
    ("work_mem", "4MB"),
];

/// Parameters a client may not change.
const READ_ONLY: &[&str] = &[
    "in_hot_standby",
    "integer_datetimes",
    "is_superuser",
    "max_identifier_length",
    "server_encoding",
    "server_version",
    "server_version_num",
    "session_authorization",
];

fn canonical(name: &str) -> Option<&'static str> {
    DEFAULTS
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(n, _)| *n)
}

/// One session's parameter values.
#[derive(Debug, Clone)]
pub struct Settings {
    values: BTreeMap<String, String>,
    /// Custom `prefix.name` parameters, as PostgreSQL allows.
    custom: BTreeMap<String, String>,
    pub time_zone: Option<Tz>,
    pub statement_timeout: Option<Duration>,
    /// `idle_session_timeout` / `idle_in_transaction_session_timeout` when set
    /// (non-zero); the role's and server's apply otherwise (`server::hygiene`).
    pub idle_session_timeout: Option<Duration>,
    pub idle_in_transaction_session_timeout: Option<Duration>,
    /// Which `datafusion.*` settings this session may change (`None`: any).
    engine_guard: Option<super::hygiene::EngineGuard>,
}

impl Settings {
    pub fn new(user: &str) -> Settings {
        let mut values: BTreeMap<String, String> = DEFAULTS
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        values.insert("session_authorization".into(), user.to_owned());
        Settings {
            values,
            custom: BTreeMap::new(),
            time_zone: None,
            statement_timeout: None,
            idle_session_timeout: None,
            idle_in_transaction_session_timeout: None,
            engine_guard: None,
        }
    }

    /// What this session may set of the lake engine's options (`None`: anything).
    pub fn engine_guard(&self) -> Option<&super::hygiene::EngineGuard> {
        self.engine_guard.as_ref()
    }

    /// From now on `datafusion.*` settings go through `guard` (the session's roles).
    pub fn guard_engine(&mut self, guard: super::hygiene::EngineGuard) {
        self.engine_guard = Some(guard);
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        match canonical(name) {
            Some(c) => self.values.get(c).map(String::as_str),
            None => self.custom.get(&name.to_lowercase()).map(String::as_str),
        }
    }

    /// `get` for a name spelled as in the defaults (`application_name`,
    /// `query_group`): one map lookup, without `get`'s case-insensitive search of
    /// the defaults. For the record stage, which reads two settings per statement.
    pub fn get_canonical(&self, name: &'static str) -> Option<&str> {
        debug_assert_eq!(canonical(name), Some(name), "not a canonical name");
        self.values.get(name).map(String::as_str)
    }

    /// Every value (custom ones included, `sluice.cache` aside) as one string: what
    /// the result cache keys answers by.
    pub fn fingerprint(&self) -> String {
        let mut f = String::with_capacity(512);
        for (k, v) in self.values.iter().chain(
            self.custom
                .iter()
                .filter(|(k, _)| k.as_str() != "sluice.cache"),
        ) {
            f.push_str(k);
            f.push('=');
            f.push_str(v);
            f.push('\0');
        }
        f
    }

    /// Every setting by lower-cased name (custom ones included), for `current_setting`.
    pub fn all_lowercase(&self) -> std::collections::HashMap<String, String> {
        self.values
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .chain(self.custom.iter().map(|(k, v)| (k.clone(), v.clone())))
            .collect()
    }

    /// Every reported parameter with its value, for the startup ParameterStatus burst.
    pub fn reported(&self) -> impl Iterator<Item = (&'static str, &str)> {
        REPORTED
            .iter()
            .map(|&n| (n, self.values.get(n).map(String::as_str).unwrap_or("")))
    }

    /// A forwarding session reports what its upstream will apply, not the lake
    /// engine's limits: a role that may write is not in a read-only session
    /// (libpq's `target_session_attrs` trusts this), and the upstream converts to the
    /// client_encoding the client asked for.
    pub fn forwarding(&mut self, write: bool, client_encoding: Option<&str>) {
        if write {
            for name in ["default_transaction_read_only", "transaction_read_only"] {
                self.values.insert(name.to_owned(), "off".to_owned());
            }
        }
        if let Some(name) = client_encoding.and_then(encoding_name) {
            self.values
                .insert("client_encoding".to_owned(), name.to_owned());
        }
    }

    /// Applies `SET name = value` (`None` = DEFAULT). Returns the canonical name and new
    /// value when the parameter is reported, so the caller can send ParameterStatus.
    pub fn set(
        &mut self,
        name: &str,
        value: Option<&str>,
    ) -> Result<Option<(&'static str, String)>, PgError> {
        let Some(canon) = canonical(name) else {
            if name.contains('.') {
                let key = name.to_lowercase();
                if key.starts_with("datafusion.") {
                    super::hygiene::check_engine_setting(self.engine_guard.as_ref(), &key, value)?;
                }
                if key == crate::engine::distributed::SETTING
                    && let Some(v) = value
                    && crate::engine::distributed::EngineChoice::parse(v).is_none()
                {
                    return Err(PgError::new(
                        SqlState::INVALID_PARAMETER_VALUE,
                        format!("invalid value for parameter \"{key}\": \"{v}\""),
                    )
                    .with_hint("Available values: auto, local, distributed."));
                }
                match value {
                    Some(v) => self.custom.insert(key, v.to_owned()),
                    None => self.custom.remove(&key),
                };
                return Ok(None);
            }
            return Err(PgError::new(
                SqlState::UNDEFINED_OBJECT,
                format!("unrecognized configuration parameter \"{name}\""),
            ));
        };
        if READ_ONLY.contains(&canon) {
            return Err(PgError::new(
                SqlState("55P02"),
                format!("parameter \"{canon}\" cannot be changed"),
            ));
        }
        let default = DEFAULTS
            .iter()
            .find(|(n, _)| *n == canon)
            .map(|(_, v)| *v)
            .unwrap_or("");
        let raw = value.unwrap_or(default);
        let normalized = self.validate(canon, raw)?;
        self.values.insert(canon.to_owned(), normalized.clone());
        Ok(REPORTED.contains(&canon).then_some((canon, normalized)))
    }

    /// `RESET name` / `RESET ALL`: returns the reported parameters that changed.
    pub fn reset(&mut self, name: Option<&str>) -> Result<Vec<(&'static str, String)>, PgError> {
        match name {
            Some(n) => Ok(self.set(n, None)?.into_iter().collect()),
            None => {
                let mut changed = Vec::new();
                for (n, default) in DEFAULTS {
                    if READ_ONLY.contains(n) {
                        continue;
                    }
                    if self.values.get(*n).map(String::as_str) != Some(*default)
                        && let Some(r) = self.set(n, None)?
                    {
                        changed.push(r);
                    }
                }
                self.custom.clear();
                Ok(changed)
            }
        }
    }

    fn validate(&mut self, name: &'static str, value: &str) -> Result<String, PgError> {
        let invalid = |hint: &str| {
            PgError::new(
                SqlState::INVALID_PARAMETER_VALUE,
                format!("invalid value for parameter \"{name}\": \"{value}\""),
            )
            .with_hint(hint.to_owned())
        };
        Ok(match name {
            "client_encoding" => match encoding_name(value) {
                Some("UTF8" | "SQL_ASCII") => "UTF8".into(),
                Some(other) => {
                    return Err(PgError::new(
                        SqlState::FEATURE_NOT_SUPPORTED,
                        format!("client_encoding \"{other}\" is not supported: Sluice sends and receives UTF8 only"),
                    )
                    .with_hint("set client_encoding to UTF8 and convert in the client"));
                }
                None => return Err(invalid("an encoding name such as UTF8")),
            },
            "DateStyle" => {
                let upper = value.to_ascii_uppercase();
                if upper
                    .split(',')
                    .any(|p| matches!(p.trim(), "SQL" | "POSTGRES" | "GERMAN"))
                {
                    return Err(invalid("Sluice prints dates in ISO style only"));
                }
                let order = if upper.contains("DMY") || upper.contains("EURO") {
                    "DMY"
                } else if upper.contains("YMD") {
                    "YMD"
                } else {
                    "MDY"
                };
                format!("ISO, {order}")
            }
            "IntervalStyle" => {
                if !value.eq_ignore_ascii_case("postgres") {
                    return Err(invalid("Sluice supports IntervalStyle postgres only"));
                }
                "postgres".into()
            }
            "bytea_output" => {
                if !value.eq_ignore_ascii_case("hex") {
                    return Err(invalid("Sluice supports bytea_output hex only"));
                }
                "hex".into()
            }
            "standard_conforming_strings" => {
                if !matches!(value.to_ascii_lowercase().as_str(), "on" | "true" | "1") {
                    return Err(invalid("standard_conforming_strings is always on"));
                }
                "on".into()
            }
            "extra_float_digits" => {
                let n: i32 = value
                    .trim()
                    .parse()
                    .map_err(|_| invalid("an integer from -15 to 3"))?;
                if !(-15..=3).contains(&n) {
                    return Err(invalid("an integer from -15 to 3"));
                }
                n.to_string()
            }
            "TimeZone" => {
                let tz = parse_time_zone(value).ok_or_else(|| {
                    invalid("an IANA zone such as Europe/Paris, UTC, or an offset such as +02:00")
                })?;
                self.time_zone = tz;
                value.to_owned()
            }
            "statement_timeout" => {
                let d = parse_duration_ms(value).ok_or_else(|| {
                    invalid("milliseconds, or a number with a unit such as 5s or 1min")
                })?;
                self.statement_timeout = (!d.is_zero()).then_some(d);
                d.as_millis().to_string()
            }
            "idle_session_timeout" | "idle_in_transaction_session_timeout" => {
                let d = parse_duration_ms(value).ok_or_else(|| {
                    invalid("milliseconds, or a number with a unit such as 5s or 1min")
                })?;
                let d = (!d.is_zero()).then_some(d);
                if name == "idle_session_timeout" {
                    self.idle_session_timeout = d;
                } else {
                    self.idle_in_transaction_session_timeout = d;
                }
                d.map_or(0, |d| d.as_millis()).to_string()
            }
            "default_transaction_read_only" | "transaction_read_only" => {
                if !matches!(
                    value.to_ascii_lowercase().as_str(),
                    "on" | "true" | "1" | "yes"
                ) {
                    return Err(PgError::new(
                        SqlState::FEATURE_NOT_SUPPORTED,
                        "Sluice's lake engine only runs read-only transactions",
                    ));
                }
                "on".into()
            }
            "application_name" => {
                // PostgreSQL keeps NAMEDATALEN - 1 bytes and drops non-ASCII.
                let mut v: String = value
                    .chars()
                    .filter(|c| c.is_ascii() && !c.is_ascii_control())
                    .collect();
                v.truncate(63);
                v
            }
            _ => {
                if value.len() > 4096 {
                    return Err(invalid("values are limited to 4096 bytes"));
                }
                value.to_owned()
            }
        })
    }
}

/// PostgreSQL's canonical name for an encoding as clients may spell it: like its
/// `clean_encoding_name`, only letters and digits count, case-insensitively, so
/// `UTF8`, `utf-8`, `'utf-8'` (asyncpg's spelling) and `Unicode` are all UTF8.
pub fn encoding_name(value: &str) -> Option<&'static str> {
    let key: String = value
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    // PostgreSQL's encoding-name table (src/common/encnames.c), aliases included.
    Some(match key.as_str() {
        "utf8" | "unicode" => "UTF8",
        "sqlascii" => "SQL_ASCII",
        "abc" | "tcvn" | "tcvn5712" | "vscii" | "win1258" | "windows1258" => "WIN1258",
        "alt" | "win866" | "windows866" => "WIN866",
        "big5" | "win950" | "windows950" => "BIG5",
        "euccn" => "EUC_CN",
        "eucjis2004" => "EUC_JIS_2004",
        "eucjp" => "EUC_JP",
        "euckr" => "EUC_KR",
        "euctw" => "EUC_TW",
        "gb18030" => "GB18030",
        "gbk" | "win936" | "windows936" => "GBK",
        "iso88591" | "latin1" => "LATIN1",
        "iso88592" | "latin2" => "LATIN2",
        "iso88593" | "latin3" => "LATIN3",
        "iso88594" | "latin4" => "LATIN4",
        "iso88599" | "latin5" => "LATIN5",
        "iso885910" | "latin6" => "LATIN6",
        "iso885913" | "latin7" => "LATIN7",
        "iso885914" | "latin8" => "LATIN8",
        "iso885915" | "latin9" => "LATIN9",
        "iso885916" | "latin10" => "LATIN10",
        "iso88595" => "ISO_8859_5",
        "iso88596" => "ISO_8859_6",
        "iso88597" => "ISO_8859_7",
        "iso88598" => "ISO_8859_8",
        "johab" => "JOHAB",
        "koi8" | "koi8r" => "KOI8R",
        "koi8u" => "KOI8U",
        "mskanji" | "shiftjis" | "sjis" | "win932" | "windows932" => "SJIS",
        "shiftjis2004" => "SHIFT_JIS_2004",
        "muleinternal" => "MULE_INTERNAL",
        "uhc" | "win949" | "windows949" => "UHC",
        "win" | "win1251" | "windows1251" => "WIN1251",
        "win1250" | "windows1250" => "WIN1250",
        "win1252" | "windows1252" => "WIN1252",
        "win1253" | "windows1253" => "WIN1253",
        "win1254" | "windows1254" => "WIN1254",
        "win1255" | "windows1255" => "WIN1255",
        "win1256" | "windows1256" => "WIN1256",
        "win1257" | "windows1257" => "WIN1257",
        "win874" | "windows874" => "WIN874",
        _ => return None,
    })
}

/// `None` inside `Some` means UTC (no conversion needed).
fn parse_time_zone(value: &str) -> Option<Option<Tz>> {
    let v = value.trim();
    if v.eq_ignore_ascii_case("utc")
        || v.eq_ignore_ascii_case("gmt")
        || v == "Z"
        || v == "+00:00"
        || v == "0"
    {
        return Some(None);
    }
    v.parse::<Tz>().ok().map(Some)
}

/// PostgreSQL time units for statement_timeout: plain numbers are milliseconds.
fn parse_duration_ms(value: &str) -> Option<Duration> {
    let v = value.trim().trim_matches('\'');
    let split = v
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: f64 = num.parse().ok()?;
    if n < 0.0 {
        return None;
    }
    let ms = match unit.trim() {
        "" | "ms" => n,
        "s" => n * 1000.0,
        "min" => n * 60_000.0,
        "h" => n * 3_600_000.0,
        "d" => n * 86_400_000.0,
        "us" => n / 1000.0,
        _ => return None,
    };
    Some(Duration::from_micros((ms * 1000.0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_show_reset() {
        let mut s = Settings::new("demo");
        assert_eq!(
            s.set("application_name", Some("psql")).unwrap(),
            Some(("application_name", "psql".into()))
        );
        assert_eq!(s.get("APPLICATION_NAME"), Some("psql"));
        assert_eq!(s.set("extra_float_digits", Some("3")).unwrap(), None);
        assert!(s.set("extra_float_digits", Some("9")).is_err());
        assert_eq!(
            s.set("nonsense", Some("1")).unwrap_err().code,
            SqlState::UNDEFINED_OBJECT
        );
        s.set("myapp.tag", Some("x")).unwrap();
        assert_eq!(s.get("myapp.tag"), Some("x"));
        let changed = s.reset(None).unwrap();
        assert!(
            changed
                .iter()
                .any(|(n, v)| *n == "application_name" && v.is_empty())
        );
        assert_eq!(s.get("myapp.tag"), None);
    }

    #[test]
    fn values_are_validated() {
        let mut s = Settings::new("demo");
        s.set("TimeZone", Some("Europe/Paris")).unwrap();
        assert!(s.time_zone.is_some());
        assert!(s.set("TimeZone", Some("Mars/Olympus")).is_err());
        s.set("statement_timeout", Some("5s")).unwrap();
        assert_eq!(s.statement_timeout, Some(Duration::from_secs(5)));
        assert_eq!(s.get("statement_timeout"), Some("5000"));
        s.set("statement_timeout", Some("0")).unwrap();
        assert_eq!(s.statement_timeout, None);
        assert!(s.set("DateStyle", Some("German")).is_err());
        assert_eq!(
            s.set("DateStyle", Some("ISO")).unwrap().unwrap().1,
            "ISO, MDY"
        );
        assert_eq!(
            s.set("client_encoding", Some("LATIN1")).unwrap_err().code,
            SqlState::FEATURE_NOT_SUPPORTED
        );
        assert_eq!(
            s.set("client_encoding", Some("klingon")).unwrap_err().code,
            SqlState::INVALID_PARAMETER_VALUE
        );
        for utf8 in ["UTF8", "utf-8", "'utf-8'", "Unicode", "utf_8"] {
            assert_eq!(
                s.set("client_encoding", Some(utf8)).unwrap(),
                Some(("client_encoding", "UTF8".into())),
                "{utf8}"
            );
        }
        assert!(s.set("server_version", Some("1")).is_err());
    }
}
