//! The decisions of a CNI DEL, a release of every address of a pod (`DELETE /v1/ipam/ips`) and a
//! CNI GC, pure. The shell ([`crate::allocator`]) gathers the pod, its endpoint and whether a sticky
//! owner still exists, asks these functions, and releases.
//!
//! Differences from upstream, on purpose (reference section 13):
//! - DEL releases when it comes from the sandbox that holds the addresses (the endpoint records the
//!   container id), also while the pod object still exists; upstream keeps them while the pod is
//!   "alive" (13.13), the root of its exhaustion reports; and also when the pod of that name is by
//!   then a newer incarnation (upstream: nothing to release when the endpoint's UID is not the
//!   pod's), since nobody else would release them soon. A DEL from an older sandbox is ignored.
//! - StatefulSet members keep their addresses while the StatefulSet exists, also for ordinals beyond
//!   `replicas` (a set scaled down and up again gets its members' addresses back; upstream releases
//!   on scale-down, reference 4.4, open requests #3488/#3893); deleting the StatefulSet releases
//!   them. A KubeVirt VM's addresses are kept while its VMI or VM exists.

use std::collections::BTreeMap;

use spiderpool_agent_api::Attachment;
use spiderpool_schema::SpiderEndpoint;
use spiderpool_schema::endpoint::SpiderEndpointStatus;

use super::endpoint::{container_of, networks_of};
use super::owner::{self, Stickiness};

/// What a pod's addresses follow when the pod may be gone: the pod's own owner if the pod exists
/// (`from_pod`), else what its endpoint says (a StatefulSet member's or a VM's endpoint outlives the
/// pod).
pub fn stickiness_of(
    from_pod: Option<Stickiness>,
    status: &SpiderEndpointStatus,
    pod_name: &str,
    endpoint_name: &str,
    statefulset_enabled: bool,
    kubevirt_enabled: bool,
) -> Stickiness {
    if let Some(stickiness) = from_pod {
        return stickiness;
    }
    match status.owner_controller_type.as_str() {
        "StatefulSet" if statefulset_enabled => Stickiness::StatefulSet {
            ordinal: owner::statefulset_ordinal(pod_name, &status.owner_controller_name).unwrap_or_default(),
            set: status.owner_controller_name.clone(),
        },
        "VirtualMachine" | "VirtualMachineInstance" if kubevirt_enabled => Stickiness::KubeVirt {
            vmi: endpoint_name.to_owned(),
        },
        _ => Stickiness::None,
    }
}

/// Everything a DEL is judged by.
#[derive(Debug, Clone)]
pub struct DelFacts<'a> {
    /// The sandbox the DEL comes from.
    pub container_id: &'a str,
    /// The pod UID the runtime names (may be empty).
    pub args_uid: &'a str,
    /// The UID of the pod of that name, if it exists.
    pub pod_uid: Option<&'a str>,
    /// The sandbox the endpoint says holds the addresses.
    pub holder_container: Option<&'a str>,
    /// The pod incarnation the endpoint describes.
    pub endpoint_uid: &'a str,
    /// What the addresses follow ([`stickiness_of`]).
    pub sticky: bool,
}

/// What a DEL does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DelVerdict {
    /// Release every address the endpoint records and delete it.
    Release,
    /// Release as [`DelVerdict::Release`] unless the sticky owner (StatefulSet, VM) still keeps the
    /// addresses ([`crate::owner_chain::retains`] reads it).
    ReleaseUnlessRetained,
    /// The DEL comes from a sandbox that no longer holds the addresses.
    OtherSandbox(String),
    /// The addresses belong to another incarnation of the pod.
    OtherIncarnation(String),
}

/// Judges a DEL of a pod whose endpoint exists.
pub fn judge_del(facts: &DelFacts<'_>) -> DelVerdict {
    if let Some(holder) = facts.holder_container
        && holder != facts.container_id
    {
        return DelVerdict::OtherSandbox(holder.to_owned());
    }
    // The pod of that name is a newer incarnation than the endpoint's. When the endpoint names this
    // DEL's sandbox as the holder, the addresses are that sandbox's, of the incarnation the endpoint
    // describes (a force-deleted pod recreated under its name before its sandbox went): released
    // here, since otherwise nobody does until the new pod's ADD replaces the endpoint or reclaim
    // frees the record. A sticky pod's new incarnation takes them over instead.
    let own_sandbox = !facts.sticky && facts.holder_container == Some(facts.container_id);
    let uid_mismatch = (facts.pod_uid.is_some_and(|u| u != facts.endpoint_uid) && !own_sandbox)
        || (!facts.args_uid.is_empty() && facts.args_uid != facts.endpoint_uid);
    // A sticky pod that is gone: its endpoint names the incarnation that held the addresses, and the
    // runtime's DEL may come from an older one; what counts is whether the owner keeps them.
    if uid_mismatch && !(facts.sticky && facts.pod_uid.is_none()) {
        return DelVerdict::OtherIncarnation(facts.endpoint_uid.to_owned());
    }
    if facts.sticky {
        DelVerdict::ReleaseUnlessRetained
    } else {
        DelVerdict::Release
    }
}

/// What a release of every address of a pod (after an address conflict) does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseAllVerdict {
    /// Release every address the endpoint records.
    Release,
    /// The endpoint describes another incarnation of the pod: nothing to release.
    OtherIncarnation,
}

/// A StatefulSet member's or a VM's retained addresses are not released because of an address
/// conflict: the error message, if so.
pub fn release_all_forbidden(sticky: bool, is_release_conflict_ips: bool) -> Option<&'static str> {
    (sticky && is_release_conflict_ips)
        .then_some("refusing to release the retained addresses of a StatefulSet member or KubeVirt VM")
}

/// Judges a release of every address of a pod whose endpoint (describing `endpoint_uid`) exists.
pub fn judge_release_all(args_uid: &str, endpoint_uid: &str) -> ReleaseAllVerdict {
    if !args_uid.is_empty() && args_uid != endpoint_uid {
        ReleaseAllVerdict::OtherIncarnation
    } else {
        ReleaseAllVerdict::Release
    }
}

/// An endpoint CNI GC may release: its sandbox is not among the runtime's valid attachments of
/// the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcCandidate {
    /// The endpoint's namespace.
    pub namespace: String,
    /// The endpoint's name.
    pub name: String,
    /// The sandbox it says holds the addresses.
    pub container_id: String,
    /// Its interfaces of the network.
    pub nics: Vec<String>,
}

impl GcCandidate {
    /// The attachments released with it.
    pub fn attachments(&self) -> Vec<Attachment> {
        self.nics
            .iter()
            .map(|nic| Attachment {
                container_id: self.container_id.clone(),
                if_name: nic.clone(),
            })
            .collect()
    }
}

/// The endpoints of this node (`endpoints`) that CNI GC of network `net_name` releases: those with
/// an interface of the network whose sandbox holds none of the runtime's valid attachments
/// (`valid`). StatefulSet members' and VMs' addresses, and endpoints without an owner reference,
/// are left to the operator's reclaim, which knows whether they must be kept.
pub fn gc_candidates(endpoints: &[SpiderEndpoint], net_name: &str, valid: &[Attachment]) -> Vec<GcCandidate> {
    let mut out = Vec::new();
    for ep in endpoints {
        let owner_kind = ep
            .status
            .as_ref()
            .map(|s| s.owner_controller_type.as_str())
            .unwrap_or_default();
        if matches!(
            owner_kind,
            "StatefulSet" | "VirtualMachineInstance" | "VirtualMachine"
        ) || ep.metadata.owner_references.as_ref().is_none_or(|r| r.is_empty())
        {
            continue;
        }
        let Some(container) = container_of(ep) else {
            continue;
        };
        let networks: BTreeMap<String, String> = networks_of(ep.metadata.annotations.as_ref());
        let nics: Vec<String> = networks
            .into_iter()
            .filter(|(_, n)| n == net_name)
            .map(|(nic, _)| nic)
            .collect();
        if nics.is_empty() {
            continue;
        }
        let still_valid = nics.iter().any(|nic| {
            valid
                .iter()
                .any(|a| a.container_id == container && &a.if_name == nic)
        });
        if still_valid {
            continue;
        }
        out.push(GcCandidate {
            namespace: ep.metadata.namespace.clone().unwrap_or_default(),
            name: ep.metadata.name.clone().unwrap_or_default(),
            container_id: container.to_owned(),
            nics,
        });
    }
    out
}

/// Whether an endpoint read again just before releasing is still held by the sandbox GC judged (an
/// ADD may have just handed it to a new sandbox).
pub fn still_held_by(endpoint: &SpiderEndpoint, container_id: &str) -> bool {
    container_of(endpoint) == Some(container_id)
}

#[cfg(test)]
mod tests;
