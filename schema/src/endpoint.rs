//! `SpiderEndpoint` (short name `se`): the addresses one pod (or KubeVirt VM) holds, one object per pod,
//! in the pod's namespace and with the pod's name. Upstream Spiderpool's kind, unchanged.
//!
//! Upstream's kind is unusual: it has **no spec**, and its `status` is a plain field (the CRD has no
//! status subresource; the agent writes the whole object with an ordinary update). kube-derive always
//! emits a `spec`, so the root type is written by hand here, with the wire shape
//! `{apiVersion, kind, metadata, status: {current, ownerControllerType, ownerControllerName}}` and
//! `endpoint.status` as the Rust field, as in upstream's Go type. Only the CRD is rendered by
//! kube-derive, from a spec-less (`no_spec`) stand-in with the same schema (the private `shape` module).

use std::collections::BTreeSet;
use std::fmt;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::KubeSchema;
use kube::core::crd::v1::CustomResourceExt;
use kube::core::object::HasStatus;
use kube::core::{ApiResource, NamespaceResourceScope, Resource};
use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};
use spiderpool_ipmath::{self as ipmath, IpFamily};

use crate::common::Route;
use crate::validation::{Problem, Problems, Validate};

/// Kind name.
const KIND: &str = "SpiderEndpoint";
/// Plural (the resource name in URLs).
const PLURAL: &str = "spiderendpoints";

/// The addresses one pod holds: what Spiderpool allocated for each of its interfaces. Created by the
/// agent on the pod's first CNI ADD, named after the pod (or the KubeVirt VM); stateless pods own it
/// through an ownerReference, StatefulSet pods and VMs keep it (and their IPs) across restarts.
#[derive(Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SpiderEndpoint {
    /// Standard object metadata; name and namespace are the pod's.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// What the pod holds. Upstream has no spec: this is the whole content of the object.
    #[serde(default)]
    pub status: Option<SpiderEndpointStatus>,
}

/// What a pod holds and who owns it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpiderEndpointStatus {
    /// The allocation of the current incarnation of the pod.
    pub current: PodIPAllocation,

    /// Kind of the pod's top controller: `Pod` (no controller), `Deployment`, `ReplicaSet`, `StatefulSet`,
    /// `DaemonSet`, `Job`, `CronJob`, `VirtualMachineInstance` or a third-party kind.
    pub owner_controller_type: String,

    /// Name of the pod's top controller (the pod's own name when it has none).
    pub owner_controller_name: String,
}

/// The addresses of one incarnation of a pod.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodIPAllocation {
    /// UID of the pod the addresses were allocated to.
    pub uid: String,

    /// Node the pod runs (or last ran) on.
    pub node: String,

    /// One entry per pod interface.
    pub ips: Vec<IPAllocationDetail>,
}

/// What one pod interface was given.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct IPAllocationDetail {
    /// Interface name in the pod, e.g. `eth0` or `net1`. Empty for an interface allocated ahead of its
    /// CNI call (multi-NIC pods without interface names) until that call names it.
    #[serde(rename = "interface")]
    pub nic: String,

    /// IPv4 address with the pool's prefix length, e.g. `172.18.30.139/16`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<String>,

    /// IPv6 address with the pool's prefix length, e.g. `fd00:172:18::139/64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<String>,

    /// SpiderIPPool the IPv4 address came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4_pool: Option<String>,

    /// SpiderIPPool the IPv6 address came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_pool: Option<String>,

    /// VLAN id of the interface, 0 for untagged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 4094), extend("default" = 0))]
    pub vlan: Option<i64>,

    /// IPv4 gateway of the interface (its pool's gateway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4_gateway: Option<String>,

    /// IPv6 gateway of the interface (its pool's gateway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_gateway: Option<String>,

    /// Whether the interface got no default route through its gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clean_gateway: Option<bool>,

    /// Routes given to the interface (its pool's routes and the pod's `ipam.spidernet.io/routes`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,

    /// MAC address the IaaS network provider assigned to the interface, e.g. `0a:1b:2c:3d:4e:5f`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}$"))]
    pub mac: Option<String>,
}

impl SpiderEndpoint {
    /// An endpoint named after its pod, with the given status.
    pub fn new(name: &str, namespace: &str, status: SpiderEndpointStatus) -> Self {
        Self {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(namespace.to_string()),
                ..ObjectMeta::default()
            },
            status: Some(status),
        }
    }
}

impl Serialize for SpiderEndpoint {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut obj = serializer.serialize_struct(KIND, 3 + usize::from(self.status.is_some()))?;
        obj.serialize_field("apiVersion", &Self::api_version(&()))?;
        obj.serialize_field("kind", &Self::kind(&()))?;
        obj.serialize_field("metadata", &self.metadata)?;
        if let Some(status) = &self.status {
            obj.serialize_field("status", status)?;
        }
        obj.end()
    }
}

impl Resource for SpiderEndpoint {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> std::borrow::Cow<'_, str> {
        KIND.into()
    }

    fn group(_: &()) -> std::borrow::Cow<'_, str> {
        crate::GROUP.into()
    }

    fn version(_: &()) -> std::borrow::Cow<'_, str> {
        crate::VERSION.into()
    }

    fn api_version(_: &()) -> std::borrow::Cow<'_, str> {
        crate::API_VERSION.into()
    }

    fn plural(_: &()) -> std::borrow::Cow<'_, str> {
        PLURAL.into()
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl HasStatus for SpiderEndpoint {
    type Status = SpiderEndpointStatus;

    fn status(&self) -> Option<&SpiderEndpointStatus> {
        self.status.as_ref()
    }

    fn status_mut(&mut self) -> &mut Option<SpiderEndpointStatus> {
        &mut self.status
    }
}

impl CustomResourceExt for SpiderEndpoint {
    fn crd() -> CustomResourceDefinition {
        shape::SpiderEndpointShape::crd()
    }

    fn crd_name() -> &'static str {
        shape::SpiderEndpointShape::crd_name()
    }

    fn api_resource() -> ApiResource {
        ApiResource::erase::<Self>(&())
    }

    fn shortnames() -> &'static [&'static str] {
        shape::SpiderEndpointShape::shortnames()
    }
}

/// The CRD of SpiderEndpoint, rendered by kube-derive from a spec-less (`no_spec`) stand-in whose only
/// property is `status`. The stand-in is never used for data: its Rust field cannot be called `status`
/// (kube-derive reserves that name for the status subresource, which upstream's CRD does not have), so
/// it is renamed on the wire instead.
#[allow(dead_code)]
mod shape {
    use kube::{CustomResource, KubeSchema};
    use serde::{Deserialize, Serialize};

    use super::SpiderEndpointStatus;

    /// Properties of the SpiderEndpoint object besides its metadata.
    // clippy reads the repeated `type_ = "string"` of the printer columns as duplicated attributes.
    #[allow(clippy::duplicated_attributes)]
    #[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug)]
    #[kube(
        group = "spiderpool.spidernet.io",
        version = "v2beta1",
        kind = "SpiderEndpoint",
        root = "SpiderEndpointShape",
        plural = "spiderendpoints",
        namespaced,
        no_spec,
        shortname = "se",
        category = "spiderpool",
        doc = "The addresses one pod (or KubeVirt VM) holds, one per interface; named after the pod.",
        printcolumn(
            name = "INTERFACE",
            type_ = "string",
            json_path = ".status.current.ips[0].interface",
            description = "interface"
        ),
        printcolumn(
            name = "IPV4POOL",
            type_ = "string",
            json_path = ".status.current.ips[0].ipv4Pool",
            description = "ipv4Pool"
        ),
        printcolumn(
            name = "IPV4",
            type_ = "string",
            json_path = ".status.current.ips[0].ipv4",
            description = "ipv4"
        ),
        printcolumn(
            name = "IPV6POOL",
            type_ = "string",
            json_path = ".status.current.ips[0].ipv6Pool",
            description = "ipv6Pool"
        ),
        printcolumn(
            name = "IPV6",
            type_ = "string",
            json_path = ".status.current.ips[0].ipv6",
            description = "ipv6"
        ),
        printcolumn(
            name = "NODE",
            type_ = "string",
            json_path = ".status.current.node",
            description = "node"
        )
    )]
    pub(super) struct SpiderEndpointFields {
        /// What the pod holds: the addresses of each interface, its node and its owner. Upstream has no
        /// spec and no status subresource; this is the whole content of the object.
        #[serde(default, rename = "status", skip_serializing_if = "Option::is_none")]
        pub(super) endpoint_status: Option<SpiderEndpointStatus>,
    }
}

/// MAC address in the form upstream's API accepts, `0a:1b:2c:3d:4e:5f`.
fn is_mac(text: &str) -> bool {
    let parts: Vec<&str> = text.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

impl SpiderEndpointStatus {
    /// Sanity rules for an endpoint (upstream has no webhook for this kind; the agent writes it).
    pub fn check(&self, problems: &mut Problems, path: &str) {
        let current = format!("{path}.current");
        if self.current.uid.is_empty() {
            problems.push(format!("{current}.uid"), "must name the pod's UID");
        }
        if self.current.node.is_empty() {
            problems.push(format!("{current}.node"), "must name the pod's node");
        }
        if self.owner_controller_type.is_empty() {
            problems.push(
                format!("{path}.ownerControllerType"),
                "must name the kind of the pod's controller (`Pod` when it has none)",
            );
        }
        if self.owner_controller_name.is_empty() {
            problems.push(
                format!("{path}.ownerControllerName"),
                "must name the pod's controller (the pod itself when it has none)",
            );
        }
        let mut seen = BTreeSet::new();
        for (i, detail) in self.current.ips.iter().enumerate() {
            let here = format!("{current}.ips[{i}]");
            if !detail.nic.is_empty() && !seen.insert(detail.nic.as_str()) {
                problems.push(
                    format!("{here}.interface"),
                    format!("`{}` is listed twice", detail.nic),
                );
            }
            detail.check(problems, &here);
        }
    }
}

impl IPAllocationDetail {
    fn check(&self, problems: &mut Problems, path: &str) {
        for (field, value, family) in [
            ("ipv4", &self.ipv4, IpFamily::V4),
            ("ipv6", &self.ipv6, IpFamily::V6),
        ] {
            if let Some(value) = value {
                match ipmath::parse_cidr(value) {
                    Err(e) => problems.push(format!("{path}.{field}"), e.to_string()),
                    Ok(net) if IpFamily::of_net(&net) != family => {
                        problems.push(
                            format!("{path}.{field}"),
                            WrongFamily { value, family }.to_string(),
                        );
                    }
                    Ok(_) => {}
                }
            }
        }
        for (field, value, family) in [
            ("ipv4Gateway", &self.ipv4_gateway, IpFamily::V4),
            ("ipv6Gateway", &self.ipv6_gateway, IpFamily::V6),
        ] {
            if let Some(value) = value {
                match ipmath::parse_ip(value) {
                    Err(e) => problems.push(format!("{path}.{field}"), e.to_string()),
                    Ok(ip) if IpFamily::of(&ip) != family => {
                        problems.push(
                            format!("{path}.{field}"),
                            WrongFamily { value, family }.to_string(),
                        );
                    }
                    Ok(_) => {}
                }
            }
        }
        if let Some(vlan) = self.vlan
            && !(0..=4094).contains(&vlan)
        {
            problems.push(
                format!("{path}.vlan"),
                format!("{vlan} is not a VLAN id (0-4094)"),
            );
        }
        if let Some(mac) = &self.mac
            && !is_mac(mac)
        {
            problems.push(
                format!("{path}.mac"),
                format!("`{mac}` is not a MAC address such as 0a:1b:2c:3d:4e:5f"),
            );
        }
        for (i, route) in self.routes.iter().enumerate() {
            let here = format!("{path}.routes[{i}]");
            let dst = ipmath::parse_cidr(&route.dst)
                .map_err(|e| problems.push(format!("{here}.dst"), e.to_string()))
                .ok();
            match ipmath::parse_ip(&route.gw) {
                Err(e) => problems.push(format!("{here}.gw"), e.to_string()),
                Ok(gw) => {
                    if let Some(dst) = dst
                        && IpFamily::of_net(&dst) != IpFamily::of(&gw)
                    {
                        problems.push(
                            format!("{here}.gw"),
                            WrongFamily {
                                value: &route.gw,
                                family: IpFamily::of_net(&dst),
                            }
                            .to_string(),
                        );
                    }
                }
            }
        }
    }
}

/// "`x` is not IPv4" with the family the field needs.
struct WrongFamily<'a> {
    value: &'a str,
    family: IpFamily,
}

impl fmt::Display for WrongFamily<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` is not {}", self.value, self.family)
    }
}

impl Validate for SpiderEndpoint {
    fn problems(&self) -> Vec<Problem> {
        let mut problems = Problems::new();
        if let Some(status) = &self.status {
            status.check(&mut problems, "status");
        }
        problems.into_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "apiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderEndpoint\nmetadata:\n  name: test-app-f9f94688-2srj7\n  namespace: default\n  finalizers:\n  - spiderpool.spidernet.io\nstatus:\n  current:\n    uid: 6a9e5c2e-6f0b-4c1e-9d55-0c3b2a1f1d11\n    node: ipv4-worker\n    ips:\n    - interface: eth0\n      ipv4: 172.18.30.139/16\n      ipv4Pool: ippool-test\n      ipv4Gateway: 172.18.0.1\n      vlan: 0\n  ownerControllerType: Deployment\n  ownerControllerName: test-app\n";

    #[test]
    fn example_round_trips_without_a_spec() {
        let ep: SpiderEndpoint = serde_saphyr::from_str(EXAMPLE).unwrap();
        assert_eq!(ep.validate(), Ok(()));
        let out = serde_json::to_value(&ep).unwrap();
        let keys: Vec<&str> = out.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["apiVersion", "kind", "metadata", "status"]);
        assert_eq!(out["apiVersion"], "spiderpool.spidernet.io/v2beta1");
        assert_eq!(out["status"]["current"]["ips"][0]["interface"], "eth0");
        assert_eq!(ep.status().unwrap().current.ips[0].nic, "eth0");
    }

    #[test]
    fn crd_has_status_property_but_no_subresource_and_no_spec() {
        let crd = serde_json::to_value(SpiderEndpoint::crd()).unwrap();
        assert_eq!(crd["metadata"]["name"], "spiderendpoints.spiderpool.spidernet.io");
        assert_eq!(crd["spec"]["scope"], "Namespaced");
        assert_eq!(crd["spec"]["names"]["shortNames"], serde_json::json!(["se"]));
        let version = &crd["spec"]["versions"][0];
        assert!(version.get("subresources").is_none_or(|s| s.is_null()));
        let root = &version["schema"]["openAPIV3Schema"];
        assert!(root["properties"].get("spec").is_none());
        let status = &root["properties"]["status"];
        assert_eq!(status["type"], "object");
        let ips = &status["properties"]["current"]["properties"]["ips"]["items"]["properties"];
        assert_eq!(ips["vlan"]["maximum"], 4094.0);
        assert!(ips.get("interface").is_some());
        let columns: Vec<&str> = version["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            columns,
            ["INTERFACE", "IPV4POOL", "IPV4", "IPV6POOL", "IPV6", "NODE"]
        );
        assert_eq!(
            SpiderEndpoint::crd_name(),
            "spiderendpoints.spiderpool.spidernet.io"
        );
        assert_eq!(SpiderEndpoint::shortnames(), ["se"]);
        assert_eq!(SpiderEndpoint::api_resource().plural, "spiderendpoints");
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let ep: SpiderEndpoint = serde_saphyr::from_str(
            "apiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderEndpoint\nmetadata:\n  name: bad\n  namespace: default\nstatus:\n  current:\n    uid: ''\n    node: n1\n    ips:\n    - interface: eth0\n      ipv4: fd00::5/64\n      ipv6Gateway: 10.0.0.1\n      vlan: 4095\n      mac: 0a:1b:2c\n      routes:\n      - {dst: 10.9.0.0/16, gw: fd00::1}\n    - interface: eth0\n      ipv6: nonsense\n  ownerControllerType: Pod\n  ownerControllerName: ''\n",
        )
        .unwrap();
        let paths: Vec<String> = ep.validate().unwrap_err().into_iter().map(|p| p.path).collect();
        assert_eq!(
            paths,
            vec![
                "status.current.uid",
                "status.ownerControllerName",
                "status.current.ips[0].ipv4",
                "status.current.ips[0].ipv6Gateway",
                "status.current.ips[0].vlan",
                "status.current.ips[0].mac",
                "status.current.ips[0].routes[0].gw",
                "status.current.ips[1].interface",
                "status.current.ips[1].ipv6",
            ]
        );
    }

    #[test]
    fn unnamed_interfaces_may_repeat() {
        let mut ep: SpiderEndpoint = serde_saphyr::from_str(EXAMPLE).unwrap();
        let status = ep.status_mut().as_mut().unwrap();
        status.current.ips[0].nic = String::new();
        status.current.ips.push(IPAllocationDetail::default());
        assert_eq!(ep.validate(), Ok(()));
    }
}
