//! SpiderReservedIP admission (section 2.3 of the reference): `ipVersion` derived from the first
//! address (the list is kept as written, see the pool webhook); the spec rules and the immutable
//! `ipVersion`. Upstream does no overlap checks for reserved addresses (they only ever shrink what
//! pools hand out), nor do we.

use spiderpool_schema::validation::Validate;
use spiderpool_schema::{Problem, Problems, SpiderReservedIP};

use super::{Change, Decision, PatchError, patch_between};

/// The object as the mutating webhook stores it.
pub fn mutate(reserved: &SpiderReservedIP) -> SpiderReservedIP {
    let mut out = reserved.clone();
    if let Some(family) = reserved.spec.family() {
        out.spec.ip_version.get_or_insert(family.as_version());
    }
    out
}

/// The mutating webhook's decision: always allowed, with the patch [`mutate`] implies.
pub fn admit_mutation(reserved: &SpiderReservedIP) -> Result<Decision, PatchError> {
    Ok(Decision {
        patch: patch_between(reserved, &mutate(reserved))?,
        ..Decision::default()
    })
}

/// Every problem the validating webhook finds with a create or update.
pub fn validate(change: Change<'_, SpiderReservedIP>) -> Vec<Problem> {
    let reserved = change.object();
    let mut problems = Problems::new();
    problems.extend(reserved.problems());
    if let Some(old) = change.old()
        && let Some(before) = old.spec.ip_version
        && reserved.spec.ip_version != Some(before)
    {
        problems.push(
            "spec.ipVersion",
            format!("is immutable: cannot change from {before}"),
        );
    }
    problems.into_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reserved(ips: &[&str]) -> SpiderReservedIP {
        serde_json::from_value(json!({
            "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderReservedIP",
            "metadata": {"name": "r"}, "spec": {"ips": ips},
        }))
        .unwrap()
    }

    #[test]
    fn mutation_derives_the_version_and_keeps_the_list() {
        let m = mutate(&reserved(&["fd00::2", "fd00::1"]));
        assert_eq!(m.spec.ip_version, Some(6));
        assert_eq!(m.spec.ips, vec!["fd00::2", "fd00::1"]);
        let patch = admit_mutation(&reserved(&["10.0.0.1"])).unwrap().patch;
        assert_eq!(
            serde_json::to_value(patch).unwrap(),
            json!([{"op": "add", "path": "/spec/ipVersion", "value": 4}])
        );
    }

    #[test]
    fn validation() {
        assert_eq!(validate(Change::Create(&reserved(&["10.0.0.1"]))), vec![]);
        let problems = validate(Change::Create(&reserved(&["10.0.0.1", "fd00::1"])));
        assert_eq!(problems[0].path, "spec.ips[1]");
        let old = mutate(&reserved(&["10.0.0.1"]));
        let mut new = old.clone();
        new.spec.ip_version = Some(6);
        let problems = validate(Change::Update { new: &new, old: &old });
        assert!(
            problems
                .iter()
                .any(|p| p.path == "spec.ipVersion" && p.message.contains("immutable")),
            "{problems:?}"
        );
    }
}
