//! `SpiderSubnet` (short name `ss`): a whole subnet an administrator hands to Spiderpool, out of which
//! pools (including the automatic per-application pools) are carved. Upstream Spiderpool's kind,
//! unchanged.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{CustomResource, KubeSchema, Resource, ResourceExt};
use serde::{Deserialize, Serialize};

use crate::common::{AddressBlock, Route, check_address_block};
use crate::ippool::SpiderIPPool;
use crate::labels::LABEL_OWNER_SPIDER_SUBNET;
use crate::validation::{Problem, Problems, Validate};

/// Spec of a SpiderSubnet.
// clippy reads the repeated `type_ = "string"` of the printer columns as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "spiderpool.spidernet.io",
    version = "v2beta1",
    kind = "SpiderSubnet",
    plural = "spidersubnets",
    shortname = "ss",
    category = "spiderpool",
    status = "SpiderSubnetStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "A subnet handed to Spiderpool; the pools of this subnet take their addresses from it.",
    printcolumn(
        name = "VERSION",
        type_ = "string",
        json_path = ".spec.ipVersion",
        description = "IP version"
    ),
    printcolumn(
        name = "SUBNET",
        type_ = "string",
        json_path = ".spec.subnet",
        description = "Subnet CIDR"
    ),
    printcolumn(
        name = "ALLOCATED-IP-COUNT",
        type_ = "integer",
        json_path = ".status.allocatedIPCount",
        description = "Addresses handed to pools"
    ),
    printcolumn(
        name = "TOTAL-IP-COUNT",
        type_ = "integer",
        json_path = ".status.totalIPCount",
        description = "Addresses in the subnet (ips minus excludeIPs)"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct SpiderSubnetSpec {
    // Immutability of `ipVersion` (and `subnet`) is the validating webhook's rule, as upstream's. No CEL
    // rule: any CEL rule in a CRD makes the API server append `<nil>: Invalid value: "null": some
    // validation rules were not checked ...` to every schema refusal of the kind.
    /// IP version of the subnet, 4 or 6. Derived from `subnet` when left out. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = [4, 6]))]
    pub ip_version: Option<i64>,

    /// The subnet in canonical CIDR form, e.g. `172.18.0.0/16`. Required and immutable. Subnets must not
    /// overlap each other, and pools with a different but overlapping CIDR are refused.
    pub subnet: String,

    /// Addresses of the subnet Spiderpool may hand to pools: single IPs (`172.18.30.131`) or ranges
    /// (`172.18.30.131-172.18.30.140`), all inside `subnet`. Addresses a pool of this subnet uses cannot be
    /// removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,

    /// Addresses of `ips` that are never handed to pools (same forms as `ips`).
    #[serde(default, rename = "excludeIPs", skip_serializing_if = "Vec::is_empty")]
    pub exclude_ips: Vec<String>,

    /// Gateway of the subnet, inherited by its pools that set none. Must be inside `subnet` and must not be
    /// in `ips` unless it is also in `excludeIPs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,

    /// Routes inherited by the subnet's pools that set none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
}

/// Status of a SpiderSubnet, written by the subnet controller.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpiderSubnetStatus {
    /// The pools carved out of this subnet, as upstream stores them: a JSON-encoded object mapping each
    /// pool name to `{"ips":["<ip or range>",...],"application":"<kind>_<namespace>_<name>"}`
    /// (`application` only for automatic pools). Read it with [`SpiderSubnetStatus::controlled_pools`].
    #[serde(
        default,
        rename = "controlledIPPools",
        skip_serializing_if = "Option::is_none"
    )]
    pub controlled_ip_pools: Option<String>,

    /// Number of addresses in the subnet (`ips` minus `excludeIPs`).
    #[serde(default, rename = "totalIPCount", skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub total_ip_count: Option<i64>,

    /// Number of addresses handed to pools.
    #[serde(default, rename = "allocatedIPCount", skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub allocated_ip_count: Option<i64>,
}

/// The addresses one pool took from a subnet (an entry of `status.controlledIPPools`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct PoolIPPreAllocation {
    /// The pool's addresses, as IPs and `a-b` ranges.
    pub ips: Vec<String>,
    /// `<kind>_<namespace>_<name>` of the application an automatic pool was made for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application: Option<String>,
}

impl SpiderSubnetStatus {
    /// Decodes `controlledIPPools` (pool name -> its addresses). An absent or empty string is an empty map.
    pub fn controlled_pools(&self) -> Result<BTreeMap<String, PoolIPPreAllocation>, serde_json::Error> {
        match self.controlled_ip_pools.as_deref() {
            None | Some("") => Ok(BTreeMap::new()),
            Some(text) => serde_json::from_str(text),
        }
    }

    /// Encodes `controlledIPPools`; an empty map is stored as absent, as upstream does. The counts are
    /// left alone: the allocated count is the number of addresses, which needs IP math the caller has.
    pub fn set_controlled_pools(
        &mut self,
        pools: &BTreeMap<String, PoolIPPreAllocation>,
    ) -> Result<(), serde_json::Error> {
        self.controlled_ip_pools = if pools.is_empty() {
            None
        } else {
            Some(serde_json::to_string(pools)?)
        };
        Ok(())
    }
}

impl SpiderSubnet {
    /// The controller owner reference a subnet puts on the pools it adopts; `None` for an object not
    /// read from the API server (no UID).
    pub fn owner_reference(&self) -> Option<OwnerReference> {
        Some(OwnerReference {
            api_version: SpiderSubnet::api_version(&()).to_string(),
            kind: SpiderSubnet::kind(&()).to_string(),
            name: self.meta().name.clone()?,
            uid: self.meta().uid.clone()?,
            controller: Some(true),
            block_owner_deletion: Some(true),
        })
    }

    /// `pool` adopted by this subnet (whose CIDR it has), upstream's rule: a controller owner reference
    /// to the subnet, the label `ipam.spidernet.io/owner-spider-subnet`, and the subnet's `gateway` and
    /// `routes` when the pool has none (only when it is first adopted: a gateway removed later stays
    /// removed). `None` when the pool is already adopted, another controller owns it, or this subnet is
    /// being deleted (it deletes its pools).
    pub fn adopted(&self, pool: &SpiderIPPool) -> Option<SpiderIPPool> {
        if self.meta().deletion_timestamp.is_some() {
            return None;
        }
        let owner = self.owner_reference()?;
        let refs = pool.owner_references();
        let controller = refs.iter().find(|r| r.controller == Some(true));
        let owned = controller.is_some_and(|r| r.uid == owner.uid);
        if controller.is_some() && !owned {
            return None;
        }
        let labelled = pool.labels().get(LABEL_OWNER_SPIDER_SUBNET) == Some(&owner.name);
        if owned && labelled {
            return None;
        }
        let mut out = pool.clone();
        out.labels_mut()
            .insert(LABEL_OWNER_SPIDER_SUBNET.to_string(), owner.name.clone());
        if !owned {
            out.owner_references_mut().push(owner);
            if out.spec.gateway.is_none() {
                out.spec.gateway.clone_from(&self.spec.gateway);
            }
            if out.spec.routes.is_empty() {
                out.spec.routes.clone_from(&self.spec.routes);
            }
        }
        Some(out)
    }
}

impl Validate for SpiderSubnet {
    fn problems(&self) -> Vec<Problem> {
        let mut problems = Problems::new();
        self.spec.check(&mut problems, "spec");
        problems.into_vec()
    }
}

impl SpiderSubnetSpec {
    /// Upstream's single-object webhook rules (create and update). The checks against other subnets and
    /// pools (overlap, addresses in use) need the cluster and live with the webhook.
    pub fn check(&self, problems: &mut Problems, path: &str) {
        check_address_block(
            problems,
            path,
            AddressBlock {
                subnet: &self.subnet,
                ip_version: self.ip_version,
                ips: &self.ips,
                exclude_ips: &self.exclude_ips,
                gateway: self.gateway.as_deref(),
                routes: &self.routes,
            },
            "subnet",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subnet(yaml: &str) -> SpiderSubnet {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn subnet_with_status_is_valid_and_decodes() {
        let s = subnet(
            "apiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderSubnet\nmetadata:\n  name: subnet-6\nspec:\n  ipVersion: 4\n  subnet: 10.6.0.0/16\n  ips: [10.6.168.101-10.6.168.110]\n  gateway: 10.6.0.1\nstatus:\n  allocatedIPCount: 3\n  totalIPCount: 10\n  controlledIPPools: '{\"auto4-demo-eth0-8fe0b\":{\"ips\":[\"10.6.168.101-10.6.168.103\"],\"application\":\"apps_v1_Deployment_default_demo\"}}'\n",
        );
        assert_eq!(s.validate(), Ok(()));
        let pools = s.status.as_ref().unwrap().controlled_pools().unwrap();
        assert_eq!(
            pools["auto4-demo-eth0-8fe0b"].ips,
            vec!["10.6.168.101-10.6.168.103"]
        );

        let mut status = SpiderSubnetStatus::default();
        status.set_controlled_pools(&pools).unwrap();
        assert_eq!(status.controlled_pools().unwrap(), pools);
        status.set_controlled_pools(&BTreeMap::new()).unwrap();
        assert_eq!(status.controlled_ip_pools, None);
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let s = subnet(
            "apiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderSubnet\nmetadata:\n  name: bad\nspec:\n  subnet: 10.6.0.0/16\n  ips: [10.6.0.1-10.6.0.9, 10.7.0.1, 10.6.0.20-10.6.0.10]\n  excludeIPs: [fd00::1]\n  gateway: 10.9.0.1\n  routes:\n  - {dst: 0.0.0.0/0, gw: 10.6.0.1}\n",
        );
        let paths: Vec<String> = s.validate().unwrap_err().into_iter().map(|p| p.path).collect();
        assert_eq!(
            paths,
            vec![
                "spec.ips[2]",
                "spec.excludeIPs[0]",
                "spec.gateway",
                "spec.routes[0].dst"
            ]
        );
    }

    #[test]
    fn non_canonical_subnet_and_wrong_version_are_refused() {
        let s = subnet(
            "apiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderSubnet\nmetadata:\n  name: c\nspec:\n  ipVersion: 6\n  subnet: 10.6.0.1/16\n",
        );
        let paths: Vec<String> = s.validate().unwrap_err().into_iter().map(|p| p.path).collect();
        assert_eq!(paths, vec!["spec.subnet"]);
        let s = subnet(
            "apiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderSubnet\nmetadata:\n  name: c\nspec:\n  ipVersion: 6\n  subnet: 10.6.0.0/16\n",
        );
        assert_eq!(s.validate().unwrap_err()[0].path, "spec.ipVersion");
    }

    #[test]
    fn gateway_inside_ips_needs_exclusion() {
        let mut s = subnet(
            "apiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderSubnet\nmetadata:\n  name: gw\nspec:\n  subnet: fd00:10::/64\n  ips: [fd00:10::1-fd00:10::ff]\n  gateway: fd00:10::1\n",
        );
        assert_eq!(s.validate().unwrap_err()[0].path, "spec.gateway");
        s.spec.exclude_ips = vec!["fd00:10::1".into()];
        assert_eq!(s.validate(), Ok(()));
    }

    #[test]
    fn crd_shape() {
        use kube::CustomResourceExt;
        let crd = serde_json::to_value(SpiderSubnet::crd()).unwrap();
        assert_eq!(crd["spec"]["scope"], "Cluster");
        assert_eq!(crd["spec"]["names"]["shortNames"], serde_json::json!(["ss"]));
        let columns: Vec<&str> = crd["spec"]["versions"][0]["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            columns,
            ["VERSION", "SUBNET", "ALLOCATED-IP-COUNT", "TOTAL-IP-COUNT"]
        );
    }
}
