//! SpiderMultusConfigs (one per network and allowed namespace) and the NetworkAttachmentDefinitions they
//! render to, by the renderer the operator uses for hand-written ones.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use spiderpool_ipmath::IpFamily;
use spiderpool_schema::interfacetask::Bond;
use spiderpool_schema::labels::LABEL_NETWORK;
use spiderpool_schema::multusconfig::{
    BondConfig, SpiderMacvlanCniConfig, SpiderMultusConfigSpec, SpiderOvsCniConfig, SpiderSriovCniConfig,
    SpiderpoolPools,
};
use spiderpool_schema::network::{Network, NetworkLayout, NetworkType, NodeLink, Rack};
use spiderpool_schema::validation::Problems;
use spiderpool_schema::{NetworkAttachmentDefinition, SpiderMultusConfig};

use super::context::Context;
use super::pools::{FixedPoolNames, RackPoolNames};
use super::slices::in_slices;
use crate::nad::{RenderError, render_nad};

impl Context<'_> {
    /// The multus configs of every network and namespace, and their NADs (rendered a slice of networks
    /// per thread, joined in network order).
    pub(super) fn render_multus_configs(
        &self,
        fixed_pool_names: &FixedPoolNames,
        rack_pool_names: &RackPoolNames,
        problems: &mut Problems,
    ) -> (Vec<SpiderMultusConfig>, Vec<NetworkAttachmentDefinition>) {
        let rendered = in_slices(self.threads, self.network.spec.networks.len(), |slice| {
            slice
                .flat_map(|n| self.network_configs(n, fixed_pool_names, rack_pool_names))
                .collect()
        });
        let mut configs = Vec::with_capacity(rendered.len());
        let mut nads = Vec::with_capacity(rendered.len());
        for (n, smc, nad) in rendered {
            match nad {
                Ok(nad) => nads.push(nad),
                Err(e) => problems.push(format!("spec.networks[{n}]"), e.to_string()),
            }
            configs.push(smc);
        }
        (configs, nads)
    }

    /// Network `n`'s multus config in each of its namespaces, with its NAD.
    fn network_configs(
        &self,
        n: usize,
        fixed_pool_names: &FixedPoolNames,
        rack_pool_names: &RackPoolNames,
    ) -> Vec<(
        usize,
        SpiderMultusConfig,
        Result<NetworkAttachmentDefinition, RenderError>,
    )> {
        let network = &self.network.spec.networks[n];
        let layout = &self.layouts[n];
        let mut out = Vec::with_capacity(network.namespaces.len());
        for namespace in &network.namespaces {
            let mut pools: BTreeMap<IpFamily, Vec<String>> = BTreeMap::new();
            for ((net_name, ns, family), names) in &fixed_pool_names.by_network {
                if net_name == &network.name && ns == namespace {
                    pools.entry(*family).or_default().extend(names.iter().cloned());
                }
            }
            // Every rack pool of every subnet of the network: each has its rack's node affinity, so
            // a pod is given the pool of the rack its node is in.
            for subnet in &layout.subnets {
                for family in [IpFamily::V4, IpFamily::V6] {
                    if let Some(names) = rack_pool_names.get(&(subnet.clone(), family)) {
                        pools.entry(family).or_default().extend(names.iter().cloned());
                    }
                }
            }
            let meta = self.meta(
                &network.name,
                Some(namespace),
                &[(LABEL_NETWORK, &network.name)],
                format!("spec.networks[{n}]"),
            );
            let smc = as_stored(multus_config_for_network(
                meta,
                network,
                layout,
                &self.network.spec.racks,
                &pools,
            ));
            let nad = render_nad(&smc);
            out.push((n, smc, nad));
        }
        out
    }
}

/// The SpiderMultusConfig a topology network renders to in one namespace.
///
/// The master is the interface every node shares ([`NodeLink`]). For a bond master: when every rack
/// serving the network defines the bond identically, the config lists the bond's NICs and the bond
/// itself, so upstream's `ifacer` can create it at pod start even before the node daemon has; when
/// racks differ (different NIC names per hardware generation), the config names only the bond and the
/// node interface tasks are what create it. A network named per node (`nodeInterface`) has no VLAN or
/// bond in its config: the interface tasks create that interface, `ifacer` could not (it only makes
/// `<master>.<vlan>`).
fn multus_config_for_network(
    metadata: ObjectMeta,
    network: &Network,
    layout: &NetworkLayout,
    racks: &[Rack],
    pools: &BTreeMap<IpFamily, Vec<String>>,
) -> SpiderMultusConfig {
    let ippools = Some(SpiderpoolPools {
        ipv4: pools.get(&IpFamily::V4).cloned().unwrap_or_default(),
        ipv6: pools.get(&IpFamily::V6).cloned().unwrap_or_default(),
        match_master_subnet: None,
    });
    // Networks that carry their VLAN in the configuration have one for every rack (validated).
    let vlan = layout.common_vlan(network).unwrap_or(0);
    let mut spec = SpiderMultusConfigSpec {
        cni_type: Some(network.cni_type.cni_type().to_string()),
        enable_coordinator: Some(network.coordinator_enabled()),
        ..SpiderMultusConfigSpec::default()
    };
    match network.cni_type {
        NetworkType::Macvlan | NetworkType::Ipvlan => {
            let (master, vlan_id, bond) = match layout.node_link() {
                Some(NodeLink::Shared { parent, vlan }) => {
                    let bond = consistent_bond(&parent, layout, racks);
                    let masters = bond.map_or_else(|| vec![parent.clone()], |b| b.interfaces.clone());
                    (masters, (vlan != 0).then_some(vlan), bond)
                }
                Some(NodeLink::Named(name)) => (vec![name], None, None),
                // Racks that differ without a nodeInterface are refused by validation.
                None => (network.master.clone().into_iter().collect(), None, None),
            };
            let config = SpiderMacvlanCniConfig {
                master,
                mtu: network.mtu,
                vlan_id,
                bond: bond.map(|b| BondConfig {
                    name: b.name.clone(),
                    mode: b.mode.number(),
                    options: Some(b.options_string()).filter(|o| !o.is_empty()),
                }),
                rdma_resource_name: None,
                ippools,
            };
            if network.cni_type == NetworkType::Macvlan {
                spec.macvlan = Some(config);
            } else {
                spec.ipvlan = Some(config);
            }
        }
        NetworkType::Sriov => {
            spec.sriov = Some(SpiderSriovCniConfig {
                resource_name: network.sriov_resource_name.clone().unwrap_or_default(),
                vlan_id: (vlan != 0).then_some(vlan),
                mtu: network.mtu,
                ippools,
                ..SpiderSriovCniConfig::default()
            });
        }
        NetworkType::Ovs => {
            spec.ovs = Some(SpiderOvsCniConfig {
                bridge: network.ovs_bridge.clone().unwrap_or_default(),
                vlan: (vlan != 0).then_some(vlan),
                ippools,
                ..SpiderOvsCniConfig::default()
            });
        }
        NetworkType::Custom => {
            spec.custom_cni = network.custom_config.clone();
        }
    }
    SpiderMultusConfig { metadata, spec }
}

/// The SpiderMultusConfig as the API server stores it, so that what `spiderctl render` shows (and the
/// NetworkAttachmentDefinition rendered from it) is what lands in the cluster: the SpiderMultusConfig
/// mutating webhook's defaults (by calling it: `mode: auto`, `tunePodRoutes: true`, `podRPFilter: 0`,
/// `txQueueLen: 0` when the coordinator is chained) and the defaults of the CRD schema
/// (`hostRuleTable: 500`, `mtu: 0`, `disableIPAM: false`, `matchMasterSubnet: false`, ...).
/// `operator/tests/stored.rs` checks every example's objects against both, generically.
///
/// The coordinator values are explicit in every SpiderMultusConfig, as upstream's webhook makes them:
/// they override the cluster's SpiderCoordinator for these networks (their values are upstream's
/// defaults, which the `default` SpiderCoordinator also has unless someone changed it). Showing them is
/// the point: the preview says what the nodes will be told.
fn as_stored(smc: SpiderMultusConfig) -> SpiderMultusConfig {
    let mut smc = crate::webhook::multusconfig::mutate(&smc);
    let spec = &mut smc.spec;
    spec.disable_ipam.get_or_insert(false);
    if let Some(coordinator) = &mut spec.coordinator {
        coordinator.host_rule_table.get_or_insert(500);
    }
    let pools = |pools: &mut Option<SpiderpoolPools>| {
        if let Some(pools) = pools {
            pools.match_master_subnet.get_or_insert(false);
        }
    };
    if let Some(config) = &mut spec.macvlan {
        config.mtu.get_or_insert(0);
        pools(&mut config.ippools);
    }
    if let Some(config) = &mut spec.ipvlan {
        config.mtu.get_or_insert(0);
        pools(&mut config.ippools);
    }
    if let Some(config) = &mut spec.sriov {
        config.mtu.get_or_insert(0);
        config.rdma_isolation.get_or_insert(false);
        pools(&mut config.ippools);
    }
    if let Some(config) = &mut spec.ovs {
        pools(&mut config.ippools);
    }
    smc
}

/// The bond named `master`, when every rack serving the network defines it and all definitions agree,
/// and it joins more than one NIC: a SpiderMultusConfig with one master attaches to that master (the
/// bond only goes to `ifacer`, as upstream renders it), so a one-NIC bond is named instead, as when
/// racks differ.
fn consistent_bond<'a>(master: &str, layout: &NetworkLayout, racks: &'a [Rack]) -> Option<&'a Bond> {
    let mut found: Option<&Bond> = None;
    for attachment in &layout.racks {
        let bond = racks[attachment.rack].bonds.iter().find(|b| b.name == master)?;
        match found {
            Some(previous) if previous != bond => return None,
            _ => found = Some(bond),
        }
    }
    found.filter(|b| b.interfaces.len() > 1)
}
