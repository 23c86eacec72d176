//! How every spiderpool-rs process logs, so that the operator, the agent and the CNI installer read
//! alike and upstream users' log pipelines keep working:
//!
//! - **Format** (`SPIDERPOOL_LOG_FORMAT`: `json`, `text` or `auto`, the default): `auto` writes JSON
//!   lines when stderr is not a terminal (in a cluster, where the container runtime collects them) and
//!   readable text on a terminal. The JSON is upstream's (zap's production encoder): `level` (`INFO`,
//!   ...), `ts` (ISO 8601, UTC, milliseconds), `logger` (the module), `caller` (`file:line`), `msg`, then
//!   the event's fields, then `spans` (the enclosing spans and their fields).
//! - **Level** (`SPIDERPOOL_LOG_LEVEL`, upstream's variable and values: `debug`, `info`, `warn`,
//!   `error`, `fatal`, `panic`; Helm `spiderpoolAgent.debug.logLevel` / `spiderpoolController.debug.logLevel`).
//!   The Kubernetes client libraries stay at `warn` or quieter whatever the level, because they log
//!   every 404 and 409 the controllers expect. `RUST_LOG`, when set, replaces all of this with its own
//!   filter.

use std::fmt;
use std::io::IsTerminal as _;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Environment variable choosing the log format.
pub const FORMAT_ENV: &str = "SPIDERPOOL_LOG_FORMAT";
/// Environment variable choosing the log level (upstream's).
pub const LEVEL_ENV: &str = "SPIDERPOOL_LOG_LEVEL";

/// Libraries whose logs are capped at `warn` (they log expected API errors as errors, and every
/// connection at debug).
const NOISY: [&str; 6] = [
    "kube_client",
    "kube_runtime",
    "hyper_util",
    "rustls",
    "tower",
    "h2",
];

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Upstream's JSON lines.
    Json,
    /// tracing's human-readable lines.
    Text,
}

/// The format `SPIDERPOOL_LOG_FORMAT` asks for (`None`, empty or `auto`: JSON unless stderr is a
/// terminal).
pub fn format_from(value: Option<&str>, stderr_is_terminal: bool) -> Result<Format, String> {
    match value.map(str::trim).unwrap_or("") {
        "" | "auto" => Ok(if stderr_is_terminal {
            Format::Text
        } else {
            Format::Json
        }),
        "json" => Ok(Format::Json),
        "text" | "console" => Ok(Format::Text),
        other => Err(format!(
            "{FORMAT_ENV}={other:?} is not a log format; use json, text or auto"
        )),
    }
}

/// The filter directives for upstream's level names (`None` or empty: `info`).
pub fn filter_for_level(level: Option<&str>) -> Result<String, String> {
    let level = match level.map(|l| l.trim().to_ascii_lowercase()).as_deref() {
        None | Some("") | Some("info") => "info",
        Some("debug") => "debug",
        Some("warn") | Some("warning") => "warn",
        Some("error") | Some("dpanic") | Some("panic") | Some("fatal") => "error",
        Some("trace") => "trace",
        Some(other) => {
            return Err(format!(
                "{LEVEL_ENV}={other:?} is not a log level; use debug, info, warn, error, fatal or panic"
            ));
        }
    };
    let libraries = if level == "error" { "error" } else { "warn" };
    let mut directives = level.to_string();
    for target in NOISY {
        directives.push_str(&format!(",{target}={libraries}"));
    }
    Ok(directives)
}

/// Installs the global subscriber for a process (once; later calls do nothing). Bad values of the
/// environment variables are reported on stderr and replaced by the defaults, as upstream does, so
/// that a typo in a Helm value never stops a node's IPAM.
pub fn init(component: &str) {
    let mut complaints = Vec::new();
    let format = format_from(
        std::env::var(FORMAT_ENV).ok().as_deref(),
        std::io::stderr().is_terminal(),
    )
    .unwrap_or_else(|err| {
        complaints.push(err);
        Format::Json
    });
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => EnvFilter::new(directives),
        _ => {
            let directives =
                filter_for_level(std::env::var(LEVEL_ENV).ok().as_deref()).unwrap_or_else(|err| {
                    complaints.push(err);
                    filter_for_level(None).unwrap_or_else(|_| "info".to_string())
                });
            EnvFilter::new(directives)
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // Colour codes only on a terminal: a span's fields are formatted once, when it opens, with the
    // builder's setting, and JSON lines would carry the codes in their `spans`.
    let installed = match format {
        Format::Json => builder.with_ansi(false).event_format(UpstreamJson).try_init(),
        Format::Text => builder.with_ansi(std::io::stderr().is_terminal()).try_init(),
    };
    if installed.is_ok() {
        for complaint in complaints {
            tracing::warn!(component, "{complaint}; using the default");
        }
    }
}

/// Formats events as upstream's zap JSON lines.
#[derive(Debug, Clone, Copy, Default)]
pub struct UpstreamJson;

impl<S, N> FormatEvent<S, N> for UpstreamJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut fields = FieldMap::default();
        event.record(&mut fields);
        let mut spans = Vec::new();
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                let recorded = extensions
                    .get::<FormattedFields<N>>()
                    .map(|f| f.fields.as_str())
                    .unwrap_or("");
                spans.push(if recorded.is_empty() {
                    span.name().to_string()
                } else {
                    format!("{}{{{recorded}}}", span.name())
                });
            }
        }
        let line = json_line(
            *meta.level(),
            SystemTime::now(),
            meta.target(),
            meta.file().zip(meta.line()),
            fields,
            &spans,
        );
        writeln!(writer, "{line}")
    }
}

/// One JSON line, in upstream's key order.
fn json_line(
    level: Level,
    at: SystemTime,
    target: &str,
    caller: Option<(&str, u32)>,
    fields: FieldMap,
    spans: &[String],
) -> Value {
    let mut line = Map::new();
    line.insert("level".into(), Value::from(level_name(level)));
    line.insert("ts".into(), Value::from(iso8601(at)));
    line.insert("logger".into(), Value::from(target));
    if let Some((file, number)) = caller {
        line.insert("caller".into(), Value::from(format!("{file}:{number}")));
    }
    line.insert("msg".into(), Value::from(fields.message.unwrap_or_default()));
    for (key, value) in fields.others {
        // A field named like one of the fixed keys must not replace it.
        let key = if line.contains_key(&key) {
            format!("field.{key}")
        } else {
            key
        };
        line.insert(key, value);
    }
    if !spans.is_empty() {
        line.insert("spans".into(), Value::from(spans.join(":")));
    }
    Value::Object(line)
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::TRACE => "DEBUG",
        Level::DEBUG => "DEBUG",
        Level::INFO => "INFO",
        Level::WARN => "WARN",
        Level::ERROR => "ERROR",
    }
}

/// zap's ISO 8601 encoder in UTC: `2026-11-25T12:34:56.789Z`.
fn iso8601(at: SystemTime) -> String {
    let since_epoch = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since_epoch.as_secs();
    let (days, of_day) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60,
        since_epoch.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar (Howard
/// Hinnant's `civil_from_days`, for non-negative day counts).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// An event's fields as JSON values; `message` apart.
#[derive(Debug, Default)]
struct FieldMap {
    message: Option<String>,
    others: Vec<(String, Value)>,
}

impl FieldMap {
    fn put(&mut self, field: &Field, value: Value) {
        if field.name() == "message" {
            self.message = Some(match value {
                Value::String(text) => text,
                other => other.to_string(),
            });
        } else {
            self.others.push((field.name().to_string(), value));
        }
    }
}

impl Visit for FieldMap {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::from(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::from(value.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn auto_format_follows_the_terminal() {
        assert_eq!(format_from(None, false), Ok(Format::Json));
        assert_eq!(format_from(Some("auto"), true), Ok(Format::Text));
        assert_eq!(format_from(Some("json"), true), Ok(Format::Json));
        assert_eq!(format_from(Some("text"), false), Ok(Format::Text));
        assert!(format_from(Some("yaml"), false).is_err_and(|e| e.contains("SPIDERPOOL_LOG_FORMAT")));
    }

    #[test]
    fn upstream_levels_map_to_filters_and_libraries_stay_quiet() {
        assert_eq!(
            filter_for_level(None).as_deref(),
            Ok("info,kube_client=warn,kube_runtime=warn,hyper_util=warn,rustls=warn,tower=warn,h2=warn")
        );
        assert!(filter_for_level(Some("debug")).is_ok_and(|f| f.starts_with("debug,kube_client=warn")));
        assert!(filter_for_level(Some("fatal")).is_ok_and(|f| f.starts_with("error,kube_client=error")));
        assert!(filter_for_level(Some("PANIC")).is_ok_and(|f| f.starts_with("error,")));
        assert!(filter_for_level(Some("loud")).is_err_and(|e| e.contains("SPIDERPOOL_LOG_LEVEL")));
    }

    #[test]
    fn timestamps_are_iso8601_utc_with_milliseconds() {
        let at = UNIX_EPOCH + Duration::from_millis(1_795_609_296_789);
        assert_eq!(iso8601(at), "2026-11-25T12:21:36.789Z");
        assert_eq!(iso8601(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        // A leap day.
        assert_eq!(
            iso8601(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000Z"
        );
    }

    #[test]
    fn json_lines_have_upstreams_keys_in_order() {
        let fields = FieldMap {
            message: Some("pool released".into()),
            others: vec![
                ("pool".into(), Value::from("default-v4")),
                ("msg".into(), Value::from("clash")),
                ("addresses".into(), Value::from(3)),
            ],
        };
        let line = json_line(
            Level::INFO,
            UNIX_EPOCH,
            "spiderpool_operator::controller::ippool",
            Some(("operator/src/controller/ippool.rs", 325)),
            fields,
            &["reconcile{pool=default-v4}".to_string()],
        );
        assert_eq!(
            line.to_string(),
            r#"{"level":"INFO","ts":"1970-01-01T00:00:00.000Z","logger":"spiderpool_operator::controller::ippool","caller":"operator/src/controller/ippool.rs:325","msg":"pool released","pool":"default-v4","field.msg":"clash","addresses":3,"spans":"reconcile{pool=default-v4}"}"#
        );
    }
}
