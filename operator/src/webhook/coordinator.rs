//! SpiderCoordinator admission (section 2.6 of the reference).
//!
//! Mutation: upstream's finalizer (the controller removes it once the object is deleted) and `vethMTU`'s
//! default of 1500. `hijackCIDR` entries and policy route destinations are kept as written: upstream
//! rewrites a bare IP as `/32` or `/128`, which GitOps tools then show as drift; the node daemon reads
//! a bare IP as that host route. Validation: the spec rules, with `podCIDRType` required (upstream
//! requires it in a SpiderCoordinator; the chart sets it).

use spiderpool_schema::validation::Validate;
use spiderpool_schema::{Problem, SpiderCoordinator};

use super::{Change, Decision, PatchError, ensure_finalizer, patch_between};

/// `vethMTU` when none is set (upstream's webhook default).
pub const DEFAULT_VETH_MTU: i64 = 1500;

/// The object as the mutating webhook stores it.
pub fn mutate(coordinator: &SpiderCoordinator) -> SpiderCoordinator {
    let mut out = coordinator.clone();
    ensure_finalizer(&mut out.metadata);
    out.spec.veth_mtu.get_or_insert(DEFAULT_VETH_MTU);
    out
}

/// The mutating webhook's decision: always allowed, with the patch [`mutate`] implies.
pub fn admit_mutation(coordinator: &SpiderCoordinator) -> Result<Decision, PatchError> {
    Ok(Decision {
        patch: patch_between(coordinator, &mutate(coordinator))?,
        ..Decision::default()
    })
}

/// Every problem the validating webhook finds with a create or update.
pub fn validate(change: Change<'_, SpiderCoordinator>) -> Vec<Problem> {
    change.object().problems()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn coordinator(spec: serde_json::Value) -> SpiderCoordinator {
        serde_json::from_value(json!({
            "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderCoordinator",
            "metadata": {"name": "default"}, "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn finalizer_and_veth_mtu_are_added_and_addresses_kept_as_written() {
        let c = coordinator(json!({
            "podCIDRType": "cluster",
            "hijackCIDR": ["169.254.0.0/16", "10.0.0.10", "fd00::a"],
            "policyRoutes": [{"dst": "10.9.0.1", "gw": "10.0.0.1"}],
        }));
        let m = mutate(&c);
        assert_eq!(m.spec.hijack_cidr, c.spec.hijack_cidr);
        assert_eq!(m.spec.policy_routes, c.spec.policy_routes);
        assert_eq!(m.spec.veth_mtu, Some(1500));
        assert_eq!(
            m.metadata.finalizers,
            Some(vec![spiderpool_schema::FINALIZER.to_string()])
        );
        assert!(admit_mutation(&m).unwrap().patch.0.is_empty());
    }

    #[test]
    fn pod_cidr_type_is_required() {
        let problems = validate(Change::Create(&coordinator(json!({"mode": "auto"}))));
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].path, "spec.podCIDRType");
        assert_eq!(
            validate(Change::Create(&coordinator(json!({"podCIDRType": "calico"})))),
            vec![]
        );
        let problems = validate(Change::Create(&coordinator(
            json!({"podCIDRType": "cluster", "podMACPrefix": "01:00"}),
        )));
        assert_eq!(problems[0].path, "spec.podMACPrefix");
    }
}
