//! Who a pod belongs to, and what that means for its addresses: the top controller (reference 4.1
//! step 2), upstream's application labels, and the "sticky" owners whose pods keep their addresses
//! across restarts (StatefulSet members, KubeVirt VMs; reference 4.4, 4.5).

use k8s_openapi::api::core::v1::Pod;

pub use spiderpool_schema::annotations::AppRef;

/// The owner of a pod with no controller: the pod itself.
pub fn bare_pod_app(pod: &Pod) -> AppRef {
    AppRef {
        api_version: "v1".to_owned(),
        kind: "Pod".to_owned(),
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        name: pod.metadata.name.clone().unwrap_or_default(),
        uid: pod.metadata.uid.clone().unwrap_or_default(),
    }
}

/// Whether a pod keeps its addresses when it is deleted and recreated under the same identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stickiness {
    /// Stateless: addresses live and die with the pod (UID).
    None,
    /// A StatefulSet member: addresses follow the pod name while the member is valid.
    StatefulSet {
        /// The StatefulSet's name.
        set: String,
        /// The pod's ordinal.
        ordinal: u64,
    },
    /// A KubeVirt VM's launcher pod: addresses follow the VMI (named like the VM).
    KubeVirt {
        /// The VirtualMachineInstance's name (also the SpiderEndpoint's name).
        vmi: String,
    },
}

impl Stickiness {
    /// Name of the SpiderEndpoint that records the pod's addresses: the VMI's for VMs, else the pod's.
    pub fn endpoint_name<'a>(&'a self, pod_name: &'a str) -> &'a str {
        match self {
            Stickiness::KubeVirt { vmi } => vmi,
            _ => pod_name,
        }
    }

    /// Whether the addresses outlive the pod.
    pub fn is_sticky(&self) -> bool {
        !matches!(self, Stickiness::None)
    }
}

/// The pod's direct controller (the ownerReference with `controller: true`).
pub fn controller_ref(pod: &Pod) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference> {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
}

/// Stickiness from the pod's direct controller, with the feature switches.
pub fn stickiness(pod: &Pod, statefulset_enabled: bool, kubevirt_enabled: bool) -> Stickiness {
    let Some(owner) = controller_ref(pod) else {
        return Stickiness::None;
    };
    let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
    match (owner.kind.as_str(), owner.api_version.split('/').next()) {
        ("StatefulSet", Some("apps")) if statefulset_enabled => {
            match statefulset_ordinal(pod_name, &owner.name) {
                Some(ordinal) => Stickiness::StatefulSet {
                    set: owner.name.clone(),
                    ordinal,
                },
                None => Stickiness::None,
            }
        }
        ("VirtualMachineInstance", Some("kubevirt.io")) if kubevirt_enabled => Stickiness::KubeVirt {
            vmi: owner.name.clone(),
        },
        _ => Stickiness::None,
    }
}

/// The ordinal of a StatefulSet member named `<set>-<ordinal>`.
pub fn statefulset_ordinal(pod_name: &str, set: &str) -> Option<u64> {
    let ordinal = pod_name.strip_prefix(set)?.strip_prefix('-')?;
    if ordinal.is_empty() || !ordinal.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    ordinal.parse().ok()
}

/// Whether ordinal `ordinal` is a member a StatefulSet with `replicas` replicas and ordinals starting at
/// `start` (`spec.ordinals.start`) should have.
pub fn statefulset_member_valid(ordinal: u64, replicas: u64, start: u64) -> bool {
    ordinal >= start && ordinal - start < replicas
}

/// Whether a pod may still use its network (upstream's `IsPodAlive`): not being deleted, not finished
/// for good.
pub fn is_pod_alive(pod: &Pod) -> bool {
    if pod.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let restart = pod
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always");
    let status = pod.status.as_ref();
    match status.and_then(|s| s.phase.as_deref()) {
        Some("Succeeded") => restart == "Always",
        Some("Failed") => {
            let evicted = status.and_then(|s| s.reason.as_deref()) == Some("Evicted");
            !(restart == "Never" || evicted)
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
    use spiderpool_schema::labels::{AFFINITY_APP_API_GROUP, AFFINITY_APP_API_VERSION};

    fn pod(name: &str, owner: Option<(&str, &str, &str)>) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.name = Some(name.to_owned());
        pod.metadata.namespace = Some("ns".to_owned());
        if let Some((api_version, kind, owner_name)) = owner {
            pod.metadata.owner_references = Some(vec![OwnerReference {
                api_version: api_version.to_owned(),
                kind: kind.to_owned(),
                name: owner_name.to_owned(),
                uid: "u".to_owned(),
                controller: Some(true),
                ..Default::default()
            }]);
        }
        pod
    }

    #[test]
    fn statefulset_members_and_ordinals() {
        assert_eq!(statefulset_ordinal("web-0", "web"), Some(0));
        assert_eq!(statefulset_ordinal("web-12", "web"), Some(12));
        assert_eq!(statefulset_ordinal("web-x", "web"), None);
        assert_eq!(statefulset_ordinal("web-", "web"), None);
        assert_eq!(statefulset_ordinal("webby-1", "web"), None);
        assert_eq!(statefulset_ordinal("my-web-1", "my-web"), Some(1));
        assert!(statefulset_member_valid(2, 3, 0));
        assert!(!statefulset_member_valid(3, 3, 0));
        assert!(statefulset_member_valid(5, 3, 5));
        assert!(!statefulset_member_valid(4, 3, 5));
        assert!(!statefulset_member_valid(8, 3, 5));
    }

    #[test]
    fn stickiness_by_owner_and_switches() {
        let sts = pod("db-1", Some(("apps/v1", "StatefulSet", "db")));
        assert_eq!(
            stickiness(&sts, true, true),
            Stickiness::StatefulSet {
                set: "db".into(),
                ordinal: 1
            }
        );
        assert_eq!(stickiness(&sts, false, true), Stickiness::None);
        let vm = pod(
            "virt-launcher-vm1-abcde",
            Some(("kubevirt.io/v1", "VirtualMachineInstance", "vm1")),
        );
        let s = stickiness(&vm, true, true);
        assert_eq!(s.endpoint_name("virt-launcher-vm1-abcde"), "vm1");
        assert!(s.is_sticky());
        assert_eq!(stickiness(&vm, true, false), Stickiness::None);
        let rs = pod("web-abc", Some(("apps/v1", "ReplicaSet", "web-5d")));
        assert_eq!(stickiness(&rs, true, true), Stickiness::None);
        assert_eq!(stickiness(&pod("bare", None), true, true), Stickiness::None);
    }

    #[test]
    fn alive_rules() {
        let mut p = pod("p", None);
        assert!(is_pod_alive(&p));
        p.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        assert!(!is_pod_alive(&p));
        let mut p = pod("p", None);
        p.status = Some(k8s_openapi::api::core::v1::PodStatus {
            phase: Some("Succeeded".into()),
            ..Default::default()
        });
        assert!(is_pod_alive(&p), "restartPolicy Always restarts");
        p.spec = Some(k8s_openapi::api::core::v1::PodSpec {
            restart_policy: Some("OnFailure".into()),
            ..Default::default()
        });
        assert!(!is_pod_alive(&p));
        p.status = Some(k8s_openapi::api::core::v1::PodStatus {
            phase: Some("Failed".into()),
            ..Default::default()
        });
        assert!(is_pod_alive(&p), "OnFailure restarts a failed pod");
        p.status.as_mut().unwrap().reason = Some("Evicted".into());
        assert!(!is_pod_alive(&p));
    }

    #[test]
    fn app_labels() {
        let app = AppRef {
            api_version: "apps/v1".into(),
            kind: "StatefulSet".into(),
            namespace: "ns".into(),
            name: "db".into(),
            uid: "u".into(),
        };
        let labels = app.affinity_labels();
        assert_eq!(labels[AFFINITY_APP_API_GROUP], "apps");
        assert_eq!(labels[AFFINITY_APP_API_VERSION], "v1");
        let core = AppRef {
            api_version: "v1".into(),
            ..app
        };
        assert_eq!(core.affinity_labels()[AFFINITY_APP_API_GROUP], "");
    }
}
