//! SpiderMultusConfig admission (sections 2.5 and 7 of the reference).
//!
//! Mutation: the coordinator settings get upstream's defaults when the coordinator is chained.
//! Validation: the spec rules, the `multus.spidernet.io/cr-name` annotation cannot be added or changed,
//! and a NetworkAttachmentDefinition owned by another SpiderMultusConfig cannot be taken over.

use kube::ResourceExt;
use spiderpool_schema::coordinator::CoordinatorSpec;
use spiderpool_schema::multusconfig::ANNO_NET_ATTACH_CONF_NAME;
use spiderpool_schema::validation::Validate;
use spiderpool_schema::{NetworkAttachmentDefinition, Problem, Problems, SpiderMultusConfig};

use super::{Change, Decision, PatchError, patch_between};

/// Kind of the controller owner reference the NAD renderer puts on every NetworkAttachmentDefinition.
const OWNER_KIND: &str = "SpiderMultusConfig";

/// The object as the mutating webhook stores it: when the coordinator is chained, its settings get
/// upstream's defaults (`mode: auto`, `tunePodRoutes: true`, `podRPFilter: 0`, `txQueueLen: 0`).
pub fn mutate(smc: &SpiderMultusConfig) -> SpiderMultusConfig {
    let mut out = smc.clone();
    if !smc.spec.coordinator_enabled() {
        return out;
    }
    let coordinator = out.spec.coordinator.get_or_insert_with(CoordinatorSpec::default);
    coordinator.mode.get_or_insert_with(|| "auto".to_string());
    // Upstream defaults tunePodRoutes to true when `coordinator` is absent but to false when it is
    // partly set (reference section 13, item 10). The documented default is true, so both get true.
    coordinator.tune_pod_routes.get_or_insert(true);
    coordinator.pod_rp_filter.get_or_insert(0);
    coordinator.tx_queue_len.get_or_insert(0);
    out
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
    fn coordinator_defaults_are_filled_when_chained() {
        let m = mutate(&smc("net", macvlan()));
        let c = m.spec.coordinator.unwrap();
        assert_eq!(c.mode.as_deref(), Some("auto"));
        assert_eq!(c.tune_pod_routes, Some(true));
        assert_eq!(c.pod_rp_filter, Some(0));

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

        let custom = smc("c", json!({"cniType": "custom", "customCNI": "{\"type\":\"x\"}"}));
        assert!(admit_mutation(&custom).unwrap().patch.0.is_empty());
        let off = smc(
            "o",
            json!({"cniType": "macvlan", "macvlan": {"master": ["eth0"]}, "enableCoordinator": false}),
        );
        assert_eq!(mutate(&off).spec.coordinator, None);
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
