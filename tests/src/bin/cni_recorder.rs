//! `cni-recorder`: a CNI plugin for tests that records what the runtime handed it.
//!
//! For every invocation it writes `{"env": {CNI_*...}, "stdin": <config>}` to
//! `<recordDir>/<seq>-<CNI_COMMAND>-<CNI_IFNAME>.json`, where `recordDir` comes from its
//! configuration. On ADD it passes `prevResult` on (or, as the first plugin, returns an empty result
//! of the configuration's version), so it can sit anywhere in a chain. A `"fail": "ADD"` key in its
//! configuration makes it fail that command with a CNI error (code 999).

use std::io::{Read, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

fn run() -> Result<Option<Value>, String> {
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .map_err(|e| format!("reading stdin: {e}"))?;
    let conf: Value = serde_json::from_str(&input).map_err(|e| format!("stdin is not JSON: {e}"))?;
    let command = std::env::var("CNI_COMMAND").unwrap_or_default();
    if command == "VERSION" {
        return Ok(Some(
            json!({"cniVersion": "1.1.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]}),
        ));
    }
    let env: Map<String, Value> = std::env::vars()
        .filter(|(k, _)| k.starts_with("CNI_"))
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    if let Some(dir) = conf.get("recordDir").and_then(Value::as_str) {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let ifname = std::env::var("CNI_IFNAME").unwrap_or_default();
        let path =
            std::path::Path::new(dir).join(format!("{nanos}-{}-{command}-{ifname}.json", std::process::id()));
        let record = json!({"env": env, "stdin": conf});
        let text = serde_json::to_string_pretty(&record).map_err(|e| e.to_string())?;
        std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    if conf.get("fail").and_then(Value::as_str) == Some(command.as_str()) {
        return Err(format!("asked to fail {command}"));
    }
    if command != "ADD" {
        return Ok(None);
    }
    let version = conf
        .get("cniVersion")
        .cloned()
        .unwrap_or(Value::String("1.0.0".to_owned()));
    Ok(Some(conf.get("prevResult").cloned().unwrap_or_else(
        || json!({"cniVersion": version, "interfaces": [], "ips": []}),
    )))
}

fn main() {
    let mut stdout = std::io::stdout();
    match run() {
        Ok(Some(result)) => {
            let _ = writeln!(stdout, "{result}");
        }
        Ok(None) => {}
        Err(msg) => {
            let _ = writeln!(
                stdout,
                "{}",
                json!({"cniVersion": "1.0.0", "code": 999, "msg": msg})
            );
            std::process::exit(1);
        }
    }
}
