//! What every part of the compiler reads: the topology, its parsed subnets and rack ranges, and the
//! metadata every generated object carries.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use spiderpool_ipmath::{IpFamily, IpSet};
use spiderpool_schema::SpiderNetwork;
use spiderpool_schema::labels::{ANNOTATION_SOURCE, LABEL_MANAGED_BY, LABEL_TOPOLOGY, MANAGED_BY};
use spiderpool_schema::network::{NetworkLayout, ParsedSubnet, ParsedTopology};

/// Everything derived from the spec that rendering needs, parsed once.
pub(super) struct Context<'a> {
    pub(super) network: &'a SpiderNetwork,
    pub(super) topology: String,
    pub(super) subnets: BTreeMap<String, ParsedSubnet>,
    /// (rack index, subnet name, family) -> the addresses the rack's range lists.
    pub(super) rack_sets: BTreeMap<(usize, String, IpFamily), IpSet>,
    /// How each network (by index) reaches each rack.
    pub(super) layouts: Vec<NetworkLayout>,
    /// How many slices (one thread each) rendering is cut into.
    pub(super) threads: usize,
}

impl<'a> Context<'a> {
    pub(super) fn new(network: &'a SpiderNetwork, parsed: ParsedTopology, threads: usize) -> Self {
        let ParsedTopology {
            subnets,
            rack_sets,
            layouts,
        } = parsed;
        Context {
            network,
            topology: network.metadata.name.clone().unwrap_or_default(),
            subnets,
            rack_sets,
            layouts,
            threads,
        }
    }

    /// The index in `spec.networks` of the network named `name`.
    pub(super) fn network_index(&self, name: &str) -> Option<usize> {
        self.network.spec.networks.iter().position(|n| n.name == name)
    }

    /// The subnet of network `n` that rack `r` serves, if it serves one.
    pub(super) fn network_subnet_in(&self, n: usize, r: usize) -> Option<&str> {
        self.layouts
            .get(n)?
            .rack(r)
            .map(|attachment| attachment.subnet.as_str())
    }

    /// Addresses rack `rack` hands out of `subnet`'s `family`: its range minus what the subnet excludes
    /// or reserves and minus the gateway. Computed when asked: only racks with fixed addresses ask, and a
    /// large topology has many more ranges than that.
    pub(super) fn rack_free(&self, rack: usize, subnet: &str, family: IpFamily) -> Option<IpSet> {
        let set = self.rack_sets.get(&(rack, subnet.to_string(), family))?;
        let parsed = self.subnets.get(subnet)?;
        let mut free = set.clone();
        if let Some(excluded) = parsed.excluded.get(&family) {
            free = free.difference(excluded);
        }
        if let Some(reserved) = parsed.reserved.get(&family) {
            free = free.difference(reserved);
        }
        if let Some(gw) = parsed.gateways.get(&family) {
            free = free.difference(&IpSet::from_ip(gw));
        }
        Some(free)
    }

    /// The rack's range as written (before exclusions), for error messages.
    pub(super) fn raw_rack_set(&self, rack: usize, subnet: &str, family: IpFamily) -> IpSet {
        self.rack_sets
            .get(&(rack, subnet.to_string(), family))
            .cloned()
            .unwrap_or_else(|| IpSet::empty(family))
    }

    pub(super) fn meta(
        &self,
        name: &str,
        namespace: Option<&str>,
        labels: &[(&str, &str)],
        source: String,
    ) -> ObjectMeta {
        generated_meta(
            name.to_string(),
            namespace.map(str::to_string),
            self.labels(labels),
            source,
        )
    }

    /// The labels every generated object carries (its topology, managed by us), and `extra`.
    pub(super) fn labels(&self, extra: &[(&str, &str)]) -> BTreeMap<String, String> {
        let mut all = BTreeMap::from([
            (LABEL_TOPOLOGY.to_string(), self.topology.clone()),
            (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
        ]);
        for (k, v) in extra {
            all.insert((*k).to_string(), (*v).to_string());
        }
        all
    }
}

/// The metadata of a generated object: its name, its labels and the spec path it stands for.
pub(super) fn generated_meta(
    name: String,
    namespace: Option<String>,
    labels: BTreeMap<String, String>,
    source: String,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace,
        labels: Some(labels),
        annotations: Some(BTreeMap::from([(ANNOTATION_SOURCE.to_string(), source)])),
        ..ObjectMeta::default()
    }
}
