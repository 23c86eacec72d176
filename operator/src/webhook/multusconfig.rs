//! SpiderMultusConfig admission (sections 2.5 and 7 of the reference).
//!
//! Mutation: upstream's defaults ([`SpiderMultusConfig::with_upstream_defaults`]: zero values of the
//! sub-configuration, the coordinator settings, `enableCoordinator: false` for custom, the
//! resource-inject annotations as labels). Validation: the spec rules, the `multus.spidernet.io/cr-name`
//! annotation cannot be added or changed, and a NetworkAttachmentDefinition owned by another
//! SpiderMultusConfig cannot be taken over.

use kube::ResourceExt;
use spiderpool_schema::multusconfig::ANNO_NET_ATTACH_CONF_NAME;
use spiderpool_schema::validation::Validate;
use spiderpool_schema::{NetworkAttachmentDefinition, Problem, Problems, SpiderMultusConfig};

use super::{Change, Decision, PatchError, patch_between};

/// Kind of the controller owner reference the NAD renderer puts on every NetworkAttachmentDefinition.
const OWNER_KIND: &str = "SpiderMultusConfig";

/// The object as the mutating webhook stores it.
pub fn mutate(smc: &SpiderMultusConfig) -> SpiderMultusConfig {
    smc.with_upstream_defaults()
}

/// The mutating webhook's decision: always allowed, with the patch [`mutate`] implies.
pub fn admit_mutation(smc: &SpiderMultusConfig) -> Result<Decision, PatchError> {
    Ok(Decision {
        patch: patch_between(smc, &mutate(smc))?,
        ..Decision::default()
    })
}

/// The validating webhook's decision for a create or update. `existing_nad` is the
/// NetworkAttachmentDefinition of the name this object would generate, when it exists.
pub fn validate(
    change: Change<'_, SpiderMultusConfig>,
    existing_nad: Option<&NetworkAttachmentDefinition>,
) -> Decision {
    let smc = change.object();
    let mut problems = Problems::new();
    problems.extend(smc.problems());
    if let Some(old) = change.old() {
        problems.extend(smc.update_problems(old));
    }
    let mut warnings = Vec::new();
    if let Some(nad) = existing_nad {
        let nad_name = nad.metadata.name.clone().unwrap_or_default();
        let path = if smc.annotations().contains_key(ANNO_NET_ATTACH_CONF_NAME) {
            format!("metadata.annotations[{ANNO_NET_ATTACH_CONF_NAME}]")
        } else {
            "metadata.name".to_string()
        };
        let owner = nad
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.kind == OWNER_KIND && o.controller == Some(true));
        match owner {
            Some(owner) if owner.name != smc.name_any() => problems.push(
                path,
                format!(
                    "the NetworkAttachmentDefinition {nad_name} already belongs to SpiderMultusConfig {}; choose another name",
                    owner.name
                ),
            ),
            Some(_) => {}
            None => warnings.push(format!(
                "NetworkAttachmentDefinition {nad_name} exists and no SpiderMultusConfig manages it; it will be overwritten"
            )),
        }
    }
    Decision {
        problems: problems.into_vec(),
        warnings,
        ..Decision::default()
    }
}

/// The problems of [`validate`] alone, for callers that only need those.
pub fn problems(
    change: Change<'_, SpiderMultusConfig>,
    existing_nad: Option<&NetworkAttachmentDefinition>,
) -> Vec<Problem> {
    validate(change, existing_nad).problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use serde_json::json;

    fn smc(name: &str, spec: serde_json::Value) -> SpiderMultusConfig {
        serde_json::from_value(json!({
            "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderMultusConfig",
            "metadata": {"name": name, "namespace": "ns"}, "spec": spec,
        }))
        .unwrap()
    }

    fn macvlan() -> serde_json::Value {
        json!({"cniType": "macvlan", "macvlan": {"master": ["eth0"]}})
    }

    fn nad_owned_by(owner: Option<&str>) -> NetworkAttachmentDefinition {
        let mut nad = NetworkAttachmentDefinition::new("net", "ns", Default::default());
        nad.metadata.owner_references = owner.map(|name| {
            vec![OwnerReference {
                api_version: spiderpool_schema::API_VERSION.into(),
                kind: OWNER_KIND.into(),
                name: name.into(),
                uid: "u".into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]
        });
        nad
    }

    #[test]
    fn upstream_defaults_are_patched_in() {
        let m = mutate(&smc("net", macvlan()));
        let c = m.spec.coordinator.clone().unwrap();
        assert_eq!(c.mode.as_deref(), Some("auto"));
        assert_eq!(c.tune_pod_routes, Some(true));
        assert_eq!(c.pod_rp_filter, Some(0));
        assert_eq!(m.spec.macvlan.as_ref().unwrap().vlan_id, Some(0));
        let patch = admit_mutation(&smc("net", macvlan())).unwrap().patch;
        assert!(
            serde_json::to_string(&patch)
                .unwrap()
                .contains("/spec/macvlan/vlanID"),
            "{patch:?}"
        );
        assert!(
            admit_mutation(&m).unwrap().patch.0.is_empty(),
            "a second pass changes nothing"
        );

        let mut partial = macvlan();
        partial["coordinator"] = json!({"podDefaultRouteNIC": "net1", "mode": "overlay"});
        let c = mutate(&smc("net", partial)).spec.coordinator.unwrap();
        assert_eq!(c.mode.as_deref(), Some("overlay"));
        assert_eq!(
            c.tune_pod_routes,
            Some(true),
            "upstream's partial default (false) is a bug"
        );
        assert_eq!(c.pod_default_route_nic.as_deref(), Some("net1"));

        let custom = mutate(&smc(
            "c",
            json!({"cniType": "custom", "customCNI": "{\"type\":\"x\"}"}),
        ));
        assert_eq!(
            custom.spec.enable_coordinator,
            Some(false),
            "upstream stores false"
        );
        assert_eq!(custom.spec.coordinator, None);
        let written = mutate(&smc("c", json!({"cniType": "custom", "enableCoordinator": true})));
        assert_eq!(
            written.spec.enable_coordinator,
            Some(true),
            "kept as written (upstream rewrites it), and unused"
        );
    }

    #[test]
    fn spec_and_update_rules() {
        assert_eq!(problems(Change::Create(&smc("net", macvlan())), None), vec![]);
        let bad = smc("net", json!({"cniType": "macvlan"}));
        let found = problems(Change::Create(&bad), None);
        assert!(!found.is_empty());
        assert!(found.iter().all(|p| p.path.starts_with("spec")), "{found:?}");

        let old = smc("net", macvlan());
        let mut new = old.clone();
        new.annotations_mut()
            .insert(ANNO_NET_ATTACH_CONF_NAME.into(), "other".into());
        let found = problems(Change::Update { new: &new, old: &old }, None);
        assert_eq!(
            found[0].path,
            format!("metadata.annotations[{ANNO_NET_ATTACH_CONF_NAME}]")
        );
    }

    #[test]
    fn another_configs_nad_cannot_be_taken_over() {
        let mine = smc("net", macvlan());
        let found = problems(Change::Create(&mine), Some(&nad_owned_by(Some("theirs"))));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].path, "metadata.name");
        assert!(
            found[0].message.contains("SpiderMultusConfig theirs"),
            "{found:?}"
        );

        assert_eq!(
            problems(Change::Create(&mine), Some(&nad_owned_by(Some("net")))),
            vec![]
        );
        let decision = validate(Change::Create(&mine), Some(&nad_owned_by(None)));
        assert!(decision.allowed());
        assert_eq!(decision.warnings.len(), 1);
    }
}
