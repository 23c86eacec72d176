//! Where the fixed addresses of app bindings go: explicit ones where they are, counted ones in a block
//! whose place depends only on the binding's own identity.

use std::collections::BTreeMap;
use std::net::IpAddr;

use sha2::{Digest, Sha256};
use spiderpool_ipmath::{IpFamily, IpSet};
use spiderpool_schema::network::family_key;
use spiderpool_schema::validation::Problems;

use super::context::Context;

/// Fixed addresses set aside for bindings.
#[derive(Debug, Default)]
pub(super) struct Carved {
    /// (binding index, interface index, rack index, family) -> addresses.
    pub(super) by_binding: BTreeMap<(usize, usize, usize, IpFamily), IpSet>,
    /// (rack index, subnet name, family) -> every address carved from that rack range.
    pub(super) by_rack: BTreeMap<(usize, String, IpFamily), IpSet>,
}

impl Context<'_> {
    /// Sets aside the fixed addresses of every binding: explicit ones first (they are the user's word),
    /// then counted ones.
    ///
    /// Where a counted block goes: each (binding, interface, rack, family) prefers to start at a position
    /// of the rack's range derived from a hash of its identity, and takes the next free addresses from
    /// there (wrapping). Placement thus depends on the binding's own identity, not on its position among
    /// others nor on what others took, so adding, removing or growing one binding does not move the
    /// addresses of the others unless their blocks collide (then the block placed later, in identity
    /// order, moves on to the next free addresses). Blocks
    /// are placed in the order of their identity, so the result never depends on spec order. Explicit
    /// addresses are the way to pin addresses for good.
    pub(super) fn carve_fixed_addresses(&self, problems: &mut Problems) -> Carved {
        let spec = &self.network.spec;
        let mut carved: BTreeMap<(usize, usize, usize, IpFamily), IpSet> = BTreeMap::new();
        let mut taken: BTreeMap<(usize, String, IpFamily), IpSet> = BTreeMap::new();
        let take = |taken: &mut BTreeMap<(usize, String, IpFamily), IpSet>,
                    key: (usize, String, IpFamily),
                    set: &IpSet| {
            let entry = taken.entry(key.clone()).or_insert_with(|| IpSet::empty(key.2));
            *entry = entry.union(set).unwrap_or_else(|_| entry.clone());
        };

        for (a, app) in spec.apps.iter().enumerate() {
            for (i, nic) in app.interfaces.iter().enumerate() {
                let (Some(fixed), Some(n)) = (&nic.fixed_ips, self.network_index(&nic.network)) else {
                    continue;
                };
                for family in [IpFamily::V4, IpFamily::V6] {
                    let Ok(explicit) = IpSet::parse_list(family, fixed.items(family)) else {
                        continue;
                    };
                    if explicit.is_empty() {
                        continue;
                    }
                    for attachment in &self.layouts[n].racks {
                        let (r, subnet) = (attachment.rack, &attachment.subnet);
                        let key = (r, subnet.clone(), family);
                        let Some(free) = self.rack_free(r, subnet, family) else {
                            continue;
                        };
                        let mine = explicit.intersection(&free);
                        let excluded = explicit
                            .intersection(&self.raw_rack_set(r, subnet, family))
                            .difference(&free);
                        if !excluded.is_empty() {
                            problems.push(
                                format!("spec.apps[{a}].interfaces[{i}].fixedIPs.{}", family_key(family)),
                                format!(
                                    "{} are excluded, reserved or the gateway in subnet `{subnet}`",
                                    excluded.to_strings().join(", "),
                                ),
                            );
                        }
                        if !mine.is_empty() {
                            take(&mut taken, key, &mine);
                            carved.insert((a, i, r, family), mine);
                        }
                    }
                }
            }
        }

        let mut counted: Vec<(String, usize, usize, usize, IpFamily, u128)> = Vec::new();
        for (a, app) in spec.apps.iter().enumerate() {
            let names = app.interface_names();
            for (i, nic) in app.interfaces.iter().enumerate() {
                let (Some(fixed), Some(n)) = (&nic.fixed_ips, self.network_index(&nic.network)) else {
                    continue;
                };
                let Some(count) = fixed.count.and_then(|c| u128::try_from(c).ok()) else {
                    continue;
                };
                let layout = &self.layouts[n];
                let racks: Vec<usize> = if fixed.racks.is_empty() {
                    layout.racks.iter().map(|attachment| attachment.rack).collect()
                } else {
                    fixed
                        .racks
                        .iter()
                        .filter_map(|name| spec.racks.iter().position(|r| &r.name == name))
                        .collect()
                };
                // Every subnet of a network has the same families (validated).
                let Some(parsed) = layout.subnets.first().and_then(|s| self.subnets.get(s)) else {
                    continue;
                };
                for r in racks {
                    for family in parsed.nets.keys() {
                        let identity = format!(
                            "{}/{}/{}/{}/{}",
                            app.namespace,
                            app.name,
                            names[i],
                            spec.racks[r].name,
                            family_key(*family)
                        );
                        counted.push((identity, a, i, r, *family, count));
                    }
                }
            }
        }
        counted.sort();
        for (identity, a, i, r, family, count) in counted {
            let Some(subnet) = self
                .network_index(&spec.apps[a].interfaces[i].network)
                .and_then(|n| self.network_subnet_in(n, r))
                .map(str::to_string)
            else {
                continue;
            };
            // The preferred start is a position in the rack's whole range, not in what is still free, so
            // it does not move when other bindings take or give back addresses.
            let whole = self
                .rack_free(r, &subnet, family)
                .unwrap_or_else(|| IpSet::empty(family));
            let key = (r, subnet.clone(), family);
            let free = match taken.get(&key) {
                Some(used) => whole.difference(used),
                None => whole.clone(),
            };
            if free.len() < count {
                problems.push(
                    format!("spec.apps[{a}].interfaces[{i}].fixedIPs.count"),
                    format!(
                        "asks for {count} {family} addresses in rack `{}` but only {} are free in its range of subnet `{subnet}`",
                        spec.racks[r].name,
                        free.len()
                    ),
                );
                continue;
            }
            let start = whole.nth(stable_offset(&identity, whole.len()));
            let block = take_from(&free, start, count);
            take(&mut taken, key, &block);
            carved.insert((a, i, r, family), block);
        }
        Carved {
            by_binding: carved,
            by_rack: taken,
        }
    }
}

/// A deterministic offset in `0..len` from a text (first 16 bytes of its SHA-256).
fn stable_offset(identity: &str, len: u128) -> u128 {
    if len == 0 {
        return 0;
    }
    let digest = Sha256::digest(identity.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    u128::from_be_bytes(bytes) % len
}

/// `count` addresses of `free` from `start` upwards, wrapping to the lowest when the top is reached.
fn take_from(free: &IpSet, start: Option<IpAddr>, count: u128) -> IpSet {
    let family = free.family();
    let (Some(start), Some(last)) = (start, free.last()) else {
        return free.take_lowest(count);
    };
    let tail = spiderpool_ipmath::IpRange::new(start, last)
        .map(|r| free.intersection(&IpSet::from_range(&r)))
        .unwrap_or_else(|_| IpSet::empty(family));
    let from_tail = tail.take_lowest(count);
    let rest = count.saturating_sub(from_tail.len());
    let from_head = free.difference(&tail).take_lowest(rest);
    from_tail.union(&from_head).unwrap_or(from_tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carving_wraps_around_the_end() {
        let free = IpSet::parse_list(IpFamily::V4, &["10.0.0.1-10.0.0.10"]).unwrap();
        let block = take_from(&free, free.nth(8), 4);
        assert_eq!(
            block.to_strings(),
            vec!["10.0.0.1-10.0.0.2", "10.0.0.9-10.0.0.10"]
        );
        let holes = IpSet::parse_list(IpFamily::V4, &["10.0.0.1-10.0.0.3", "10.0.0.8-10.0.0.10"]).unwrap();
        let start = "10.0.0.5".parse().ok();
        assert_eq!(
            take_from(&holes, start, 2).to_strings(),
            vec!["10.0.0.8-10.0.0.9"]
        );
        assert_eq!(stable_offset("x", 10), stable_offset("x", 10));
    }
}
