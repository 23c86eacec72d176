//! The topology compiler: one [`SpiderNetwork`] in, every resource it stands for out.
//!
//! Pure and deterministic: no I/O, no clocks, no randomness, no hash-map iteration order; pools, multus
//! configs and pod bindings are rendered in slices on several threads, joined in slice order. The same
//! input gives
//! byte-identical output, which is what makes `spiderctl render` reviewable in a pull request and
//! its output snapshot-testable.
//!
//! What is rendered here and what is left to the operator:
//! - SpiderReservedIPs, SpiderIPPools, SpiderMultusConfigs and their NetworkAttachmentDefinitions depend
//!   only on the spec, so they are rendered completely (the operator adds owner references, which need
//!   the live object's UID).
//! - Interface tasks depend on which nodes exist and what labels they carry, which the compiler cannot
//!   see. So it renders one [`InterfaceTemplate`] per rack (node selector + bonds + VLANs), and
//!   [`expand_interface_tasks`] turns templates into per-node [`SpiderInterfaceTask`]s against a node
//!   list. The operator calls it with the live nodes on every reconcile; `spiderctl render --nodes` calls
//!   it with a node list from a file. One function, so both agree.
//!
//! Names are derived from spec entry names (never from positions), so renaming or reordering one rack
//! changes only that rack's objects.
//!
//! Layout: this file is the driver ([`compile`]); each rendered kind has a file of its own
//! (`reserved`, `pools`, `multus`, `interfaces`, `bindings`), fixed addresses are placed by `carve`,
//! names are made by `names`, and `context` holds what they all read.

mod bindings;
mod carve;
mod context;
mod interfaces;
mod multus;
mod names;
mod pools;
mod reserved;
mod slices;

use std::num::NonZeroUsize;

use serde::Serialize;
use spiderpool_schema::validation::{Problem, Problems};
use spiderpool_schema::{
    NetworkAttachmentDefinition, SpiderIPPool, SpiderMultusConfig, SpiderNetwork, SpiderReservedIP,
};

pub use self::bindings::PodBinding;
pub use self::interfaces::{InterfaceTemplate, expand_interface_tasks};
pub use self::names::object_name;

use self::carve::Carved;
use self::context::Context;

/// Everything one topology stands for.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Rendered {
    /// Addresses used outside the cluster, per subnet and family.
    #[serde(rename = "reservedIPs")]
    pub reserved_ips: Vec<SpiderReservedIP>,
    /// Rack pools (one per subnet, rack and family) and fixed-address pools (one per binding interface,
    /// rack and family).
    pub ip_pools: Vec<SpiderIPPool>,
    /// One per network and allowed namespace.
    pub multus_configs: Vec<SpiderMultusConfig>,
    /// What each multus config renders to (the same function renders hand-written ones).
    pub network_attachment_definitions: Vec<NetworkAttachmentDefinition>,
    /// One per rack that needs bonds or VLANs; expanded per node by [`expand_interface_tasks`].
    pub interface_templates: Vec<InterfaceTemplate>,
    /// What each app binding asks of its pods (the annotations the pod webhook adds unless the pod sets
    /// its own).
    pub pod_bindings: Vec<PodBinding>,
}

/// Summary of a rendering, for people (the CLI prints it to stderr).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// `(pool name, addresses it hands out)`.
    pub pools: Vec<(String, u128)>,
    /// Number of SpiderReservedIPs.
    pub reserved_ips: usize,
    /// Number of SpiderMultusConfigs.
    pub multus_configs: usize,
    /// Number of NetworkAttachmentDefinitions.
    pub network_attachment_definitions: usize,
    /// Number of per-rack interface templates.
    pub interface_templates: usize,
}

impl Rendered {
    /// Every Kubernetes object, in apply order (reserved IPs before pools, so no pool hands out a reserved
    /// address even for a moment; configs before their NADs), as JSON with apiVersion and kind.
    pub fn to_documents(&self) -> Result<Vec<serde_json::Value>, serde_json::Error> {
        let mut docs = Vec::new();
        for o in &self.reserved_ips {
            docs.push(serde_json::to_value(o)?);
        }
        for o in &self.ip_pools {
            docs.push(serde_json::to_value(o)?);
        }
        for o in &self.multus_configs {
            docs.push(serde_json::to_value(o)?);
        }
        for o in &self.network_attachment_definitions {
            docs.push(serde_json::to_value(o)?);
        }
        Ok(docs)
    }

    /// Counts and pool sizes.
    pub fn summary(&self) -> Summary {
        Summary {
            pools: self
                .ip_pools
                .iter()
                .map(|p| (p.metadata.name.clone().unwrap_or_default(), pool_size(p)))
                .collect(),
            reserved_ips: self.reserved_ips.len(),
            multus_configs: self.multus_configs.len(),
            network_attachment_definitions: self.network_attachment_definitions.len(),
            interface_templates: self.interface_templates.len(),
        }
    }
}

/// Addresses a pool hands out (`ips` minus `excludeIPs`), as upstream counts `totalIPCount`.
pub fn pool_size(pool: &SpiderIPPool) -> u128 {
    pool.spec.usable_addresses().map_or(0, |set| set.len())
}

/// Validates and compiles one topology. Every problem is reported at once, with its spec path.
///
/// Renders on as many threads as the machine has cores (at most 8); see [`compile_on_threads`].
pub fn compile(network: &SpiderNetwork) -> Result<Rendered, Vec<Problem>> {
    let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    compile_on_threads(network, cores.min(8))
}

/// [`compile`] with rendering cut into `threads` slices, one thread each (0 counts as 1). The output
/// is the same for every number of threads: the slices are joined in order.
pub fn compile_on_threads(network: &SpiderNetwork, threads: usize) -> Result<Rendered, Vec<Problem>> {
    let parsed = network.check()?;
    let mut problems = Problems::new();
    let ctx = Context::new(network, parsed, threads.max(1));
    let carved = ctx.carve_fixed_addresses(&mut problems);
    let rendered = ctx.render(&carved, &mut problems);
    problems.into_result()?;
    Ok(rendered)
}

impl Context<'_> {
    fn render(&self, carved: &Carved, problems: &mut Problems) -> Rendered {
        let mut rendered = Rendered {
            reserved_ips: self.render_reserved_ips(),
            ..Rendered::default()
        };
        let (ip_pools, fixed_pool_names, rack_pool_names) = self.render_pools(carved);
        rendered.ip_pools = ip_pools;
        (rendered.multus_configs, rendered.network_attachment_definitions) =
            self.render_multus_configs(&fixed_pool_names, &rack_pool_names, problems);
        rendered.interface_templates = self.render_interface_templates();
        rendered.pod_bindings = self.render_pod_bindings(&fixed_pool_names, &rendered.multus_configs);
        rendered
    }
}
