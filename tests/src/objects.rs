//! Small helpers on API objects shared by the cluster tests: namespaces by name, a topology's
//! readiness, and comparisons of objects as JSON (what a test sent or expects against what the API
//! server stored).

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::PostParams;
use kube::{Api, Client};
use serde_json::Value;
use spiderpool_schema::SpiderNetwork;

/// Creates the namespace `name` unless it exists.
pub async fn ensure_namespace(client: &Client, name: &str) -> Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    if api.get_opt(name).await?.is_none() {
        let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))?;
        match api.create(&PostParams::default(), &ns).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(())
}

/// Waits until the topology's status describes its current generation with `Ready=True`. Watches
/// rather than polls: a GET of a large topology costs the API server about as much as a write of it,
/// and polling would slow down the very writes a benchmark times on a two-core machine.
pub async fn wait_network_ready(api: &Api<SpiderNetwork>, name: &str, timeout: Duration) -> Result<()> {
    let ready = |network: Option<&SpiderNetwork>| {
        network.is_some_and(|network| {
            let status = network.status.as_ref();
            let ready = status.is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            });
            ready && status.and_then(|s| s.observed_generation) == network.metadata.generation
        })
    };
    let waited = tokio::time::timeout(
        timeout,
        kube::runtime::wait::await_condition(api.clone(), name, ready),
    )
    .await;
    match waited {
        Ok(result) => result.map(|_| ()).context("watching the topology"),
        Err(_) => {
            let status = api.get(name).await?.status;
            bail!("not Ready after {timeout:?}: {:?}", status.map(|s| s.conditions))
        }
    }
}

/// Where `stored` does not keep what `sent` says, under `path` (`spec.ips[0]: sent "a", stored "b"`,
/// `spec.x (missing)`): every field of `sent` must be in `stored` with the same value, lists item by
/// item and of the same length; fields only `stored` has are ignored. This is also how Argo CD compares
/// a manifest from Git with the live object.
pub fn not_kept(sent: &Value, stored: &Value, path: &str) -> Vec<String> {
    let mut out = Vec::new();
    compare(sent, stored, path, false, &mut out);
    out
}

/// Every place where two values differ (`/spec/mode: "a" != "b"`, `/spec/x: "a" != absent`), fields
/// of either side included; paths are JSON pointers.
pub fn differences(expected: &Value, actual: &Value) -> Vec<String> {
    let mut out = Vec::new();
    compare(expected, actual, "", true, &mut out);
    out
}

fn compare(left: &Value, right: &Value, path: &str, exact: bool, out: &mut Vec<String>) {
    let child = |key: &str| {
        if exact {
            format!("{path}/{}", key.replace('~', "~0").replace('/', "~1"))
        } else if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    match (left, right) {
        (Value::Object(l), Value::Object(r)) => {
            for (key, value) in l {
                match r.get(key) {
                    Some(other) => compare(value, other, &child(key), exact, out),
                    None if value.is_null() => {}
                    None if exact => out.push(format!("{}: {value} != absent", child(key))),
                    None => out.push(format!("{} (missing)", child(key))),
                }
            }
            if exact {
                for (key, value) in r.iter().filter(|(k, _)| !l.contains_key(*k)) {
                    out.push(format!("{}: absent != {value}", child(key)));
                }
            }
        }
        (Value::Array(l), Value::Array(r)) if l.len() == r.len() => {
            for (i, (a, b)) in l.iter().zip(r).enumerate() {
                let here = if exact {
                    format!("{path}/{i}")
                } else {
                    format!("{path}[{i}]")
                };
                compare(a, b, &here, exact, out);
            }
        }
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => {}
        (a, b) if a == b => {}
        (a, b) if exact => out.push(format!("{path}: {a} != {b}")),
        (a, b) => out.push(format!("{path}: sent {a}, stored {b}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kept_ignores_what_the_server_adds_but_not_what_it_changes() {
        let sent = json!({"spec": {"ips": ["a::0"], "x": 1}});
        let stored = json!({"spec": {"ips": ["a::"], "x": 1.0, "added": true}});
        assert_eq!(
            not_kept(&sent, &stored, ""),
            vec![r#"spec.ips[0]: sent "a::0", stored "a::""#]
        );
        assert_eq!(
            not_kept(&json!({"spec": {"y": 2}}), &stored, ""),
            vec!["spec.y (missing)"]
        );
    }

    #[test]
    fn differences_see_both_sides() {
        let found = differences(&json!({"a": {"b": 1, "c/d": 2}}), &json!({"a": {"b": 2, "e": 3}}));
        assert_eq!(
            found,
            vec!["/a/b: 1 != 2", "/a/c~1d: 2 != absent", "/a/e: absent != 3"]
        );
    }
}
