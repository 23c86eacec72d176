//! The keys of a pool's `status.allocatedIPs` as anyone may have written them.
//!
//! This daemon writes each address in its canonical form (`10.0.0.5`, `fd00::5`), but a pool's records
//! may come from older versions, upstream's agent, migration scripts or hand edits. A key that is not
//! the canonical form of an address of the pool's family still names something a reader may take
//! for an address, and an address someone else's record may name must never be handed to a second
//! pod. So:
//! - a canonical key names its address;
//! - any other key names every address of the pool's family that a lenient reader could take it
//!   for ([`addresses_named`]): surrounding whitespace, a prefix length (`/24`), a zone (`%eth0`),
//!   brackets, IPv4 octets with leading zeros (read as decimal, as Go's parser did before 1.17, and
//!   as octal, as C's `inet_aton` does), IPv4-mapped and IPv4-compatible IPv6 forms of an IPv4
//!   address, non-canonical IPv6 spellings;
//! - a key that names nothing of the family (unparseable, or an address of the other family) is kept
//!   as it is and counts as a record (toward the pool's size cap), and nothing else.
//!
//! Every such record counts as occupying what it names; this daemon never removes or rewrites a
//! foreign record except to release it for the pod it names (a DEL or a take-back whose pod UID it
//! carries). Two records naming one address are ambiguous ([`RecordIndex::ambiguous`]): the address
//! stays occupied until both are released, and decisions that would need to pick one of them refuse.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use spiderpool_ipmath::{IpFamily, IpSet};
use spiderpool_schema::ippool::PoolIPAllocation;

/// The addresses of `family` a record key may name (see the module documentation), lowest first.
pub fn addresses_named(key: &str, family: IpFamily) -> Vec<IpAddr> {
    let mut named = BTreeSet::new();
    let text = key.trim();
    let text = text.split('/').next().unwrap_or(text).trim();
    let text = text.split('%').next().unwrap_or(text).trim();
    let text = text.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = text.parse::<IpAddr>() {
        named.insert(ip);
        if let IpAddr::V6(v6) = ip {
            if let Some(v4) = v6.to_ipv4_mapped() {
                named.insert(IpAddr::V4(v4));
            } else if let [0, 0, 0, 0, 0, 0, hi, lo] = v6.segments()
                && (hi, lo) != (0, 0)
                && (hi, lo) != (0, 1)
            {
                // IPv4-compatible (deprecated) `::a.b.c.d`.
                named.insert(IpAddr::V4(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo))));
            }
        }
    } else {
        for reading in [10, 8] {
            if let Some(v4) = dotted_quad(text, reading) {
                named.insert(IpAddr::V4(v4));
            }
        }
    }
    named
        .into_iter()
        .filter(|ip| IpFamily::of(ip) == family)
        .collect()
}

/// A dotted quad whose octets may have leading zeros, each read in `radix` when it has one (a
/// `0x` prefix is always hexadecimal).
fn dotted_quad(text: &str, radix: u32) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = text.split('.');
    for octet in &mut octets {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 5 {
            return None;
        }
        let value = if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
            u32::from_str_radix(hex, 16).ok()?
        } else if part.len() > 1 && part.starts_with('0') {
            u32::from_str_radix(part, radix).ok()?
        } else {
            part.parse::<u32>().ok()?
        };
        *octet = u8::try_from(value).ok()?;
    }
    parts.next().is_none().then(|| Ipv4Addr::from(octets))
}

/// Whether `key` is the canonical form of an address of `family`; that address.
pub fn canonical(key: &str, family: IpFamily) -> Option<IpAddr> {
    let ip: IpAddr = key.parse().ok()?;
    (IpFamily::of(&ip) == family && ip.to_string() == key).then_some(ip)
}

/// Where the records of one pool are, by address: canonical keys are looked up directly, every other
/// key is indexed by every address it may name. Built once per decision; records added since are
/// canonical keys of addresses that were free, so the index stays true for them, and lookups skip
/// keys removed since.
#[derive(Debug, Clone)]
pub struct RecordIndex {
    family: IpFamily,
    /// Non-canonical keys, by every address of the family they may name.
    foreign: BTreeMap<IpAddr, Vec<String>>,
    /// Keys that name nothing of the family.
    unplaceable: Vec<String>,
}

impl RecordIndex {
    /// Indexes `records` of a pool of `family`.
    pub fn new(records: &BTreeMap<String, PoolIPAllocation>, family: IpFamily) -> Self {
        let mut index = RecordIndex {
            family,
            foreign: BTreeMap::new(),
            unplaceable: Vec::new(),
        };
        for key in records.keys() {
            if canonical(key, family).is_some() {
                continue;
            }
            let named = addresses_named(key, family);
            if named.is_empty() {
                index.unplaceable.push(key.clone());
            }
            for ip in named {
                index.foreign.entry(ip).or_default().push(key.clone());
            }
        }
        index
    }

    /// The keys of `records` that name `ip`, the canonical one first.
    pub fn keys_naming(&self, records: &BTreeMap<String, PoolIPAllocation>, ip: &IpAddr) -> Vec<String> {
        let canonical = ip.to_string();
        let mut keys = Vec::new();
        if records.contains_key(&canonical) {
            keys.push(canonical);
        }
        if let Some(foreign) = self.foreign.get(ip) {
            keys.extend(foreign.iter().filter(|k| records.contains_key(*k)).cloned());
        }
        keys
    }

    /// Every address of the family some record of `records` names.
    pub fn occupied(&self, records: &BTreeMap<String, PoolIPAllocation>) -> IpSet {
        let mut used: Vec<IpAddr> = records
            .keys()
            .filter_map(|key| canonical(key, self.family))
            .collect();
        for (ip, keys) in &self.foreign {
            if keys.iter().any(|k| records.contains_key(k)) {
                used.push(*ip);
            }
        }
        // Only addresses of the family are listed, so this cannot fail; if it did, nothing is free.
        IpSet::from_ips(self.family, used.iter()).unwrap_or_else(|_| IpSet::full(self.family))
    }

    /// The address a pod's record under `key` holds, when the key names exactly one address of the
    /// family (a retried ADD of that pod is answered with it); `None` otherwise.
    pub fn address_of_key(&self, key: &str) -> Option<IpAddr> {
        if let Some(ip) = canonical(key, self.family) {
            return Some(ip);
        }
        match addresses_named(key, self.family).as_slice() {
            [one] => Some(*one),
            _ => None,
        }
    }

    /// Addresses more than one record of `records` names, with those keys.
    pub fn ambiguous(&self, records: &BTreeMap<String, PoolIPAllocation>) -> Vec<(IpAddr, Vec<String>)> {
        self.foreign
            .keys()
            .map(|ip| (*ip, self.keys_naming(records, ip)))
            .filter(|(_, keys)| keys.len() > 1)
            .collect()
    }

    /// Keys that are not canonical addresses of the family (kept as they are, see the module
    /// documentation).
    pub fn foreign_keys(&self) -> Vec<String> {
        let mut keys: BTreeSet<String> = self.foreign.values().flatten().cloned().collect();
        keys.extend(self.unplaceable.iter().cloned());
        keys.into_iter().collect()
    }
}

#[cfg(test)]
mod tests;
