//! SpiderReservedIPs: one per subnet family with `reservedIPs`.

use spiderpool_schema::labels::LABEL_SUBNET;
use spiderpool_schema::network::family_key;
use spiderpool_schema::{SpiderReservedIP, SpiderReservedIPSpec};

use super::context::Context;
use super::names::{family_suffix, object_name};

impl Context<'_> {
    pub(super) fn render_reserved_ips(&self) -> Vec<SpiderReservedIP> {
        let mut out = Vec::new();
        for (s, subnet) in self.network.spec.subnets.iter().enumerate() {
            let Some(parsed) = self.subnets.get(&subnet.name) else {
                continue;
            };
            for (family, set) in &parsed.reserved {
                if set.is_empty() {
                    continue;
                }
                let name = object_name(&[&self.topology, &subnet.name, family_suffix(*family), "reserved"]);
                let meta = self.meta(
                    &name,
                    None,
                    &[(LABEL_SUBNET, &subnet.name)],
                    format!("spec.subnets[{s}].{}.reservedIPs", family_key(*family)),
                );
                let mut obj = SpiderReservedIP::new(&name, SpiderReservedIPSpec::default());
                obj.metadata = meta;
                obj.spec.ip_version = Some(family.as_version());
                obj.spec.ips = set.to_strings();
                out.push(obj);
            }
        }
        out
    }
}
