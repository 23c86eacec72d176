//! What a SpiderIPPool's addresses are, as every part of the project must count them alike: the
//! operator (pool counters, the topology's capacity, the refusal to move allocated addresses,
//! `spiderctl`) and the node daemon (which addresses it may hand out).

use spiderpool_ipmath::{IpFamily, IpSet, ItemError, parse_cidr};

use crate::SpiderIPPoolSpec;

/// Why a pool's addresses cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolAddressError {
    /// Neither `ipVersion` nor `subnet` says which family the pool is.
    #[error("spec.ipVersion is not set and spec.subnet `{0}` is not a CIDR")]
    UnknownFamily(String),
    /// A list does not parse as addresses of the pool's family.
    #[error("{field}: {}", .errors.iter().map(|e| format!("[{}] {}", e.index, e.error)).collect::<Vec<_>>().join("; "))]
    BadList {
        /// `spec.ips` or `spec.excludeIPs`.
        field: &'static str,
        /// Every bad item.
        errors: Vec<ItemError>,
    },
}

impl SpiderIPPoolSpec {
    /// The pool's IP family: `ipVersion` (the pool webhook sets it on every pool, as upstream's does),
    /// else the family of `subnet`. Never guessed from the text of an address.
    pub fn family(&self) -> Option<IpFamily> {
        self.ip_version
            .and_then(IpFamily::from_version)
            .or_else(|| parse_cidr(&self.subnet).ok().map(|net| IpFamily::of_net(&net)))
    }

    /// The addresses the pool hands out: `ips` minus `excludeIPs` (what upstream counts as
    /// `totalIPCount`). SpiderReservedIPs are not subtracted here: they are cluster-wide and the
    /// allocator subtracts them when it picks.
    pub fn usable_addresses(&self) -> Result<IpSet, PoolAddressError> {
        let family = self
            .family()
            .ok_or_else(|| PoolAddressError::UnknownFamily(self.subnet.clone()))?;
        let parse = |items: &[String], field: &'static str| {
            IpSet::parse_list(family, items).map_err(|errors| PoolAddressError::BadList { field, errors })
        };
        let ips = parse(&self.ips, "spec.ips")?;
        let excluded = parse(&self.exclude_ips, "spec.excludeIPs")?;
        Ok(ips.difference(&excluded))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(ip_version: Option<i64>, subnet: &str, ips: &[&str], exclude: &[&str]) -> SpiderIPPoolSpec {
        SpiderIPPoolSpec {
            ip_version,
            subnet: subnet.into(),
            ips: ips.iter().map(|s| s.to_string()).collect(),
            exclude_ips: exclude.iter().map(|s| s.to_string()).collect(),
            ..SpiderIPPoolSpec::default()
        }
    }

    #[test]
    fn the_family_comes_from_ip_version_then_from_the_subnet() {
        assert_eq!(spec(Some(6), "", &[], &[]).family(), Some(IpFamily::V6));
        assert_eq!(spec(None, "fd00::/64", &[], &[]).family(), Some(IpFamily::V6));
        // An IPv4-mapped subnet written with colons is still IPv4 when ipVersion says so.
        assert_eq!(
            spec(Some(4), "::ffff:10.0.0.0/104", &[], &[]).family(),
            Some(IpFamily::V4)
        );
        assert_eq!(spec(None, "10.0.0.0/24", &[], &[]).family(), Some(IpFamily::V4));
        assert_eq!(spec(None, "nonsense", &[], &[]).family(), None);
        assert_eq!(spec(Some(5), "nonsense", &[], &[]).family(), None);
    }

    #[test]
    fn usable_is_ips_minus_excluded() {
        let pool = spec(
            Some(4),
            "10.0.0.0/24",
            &["10.0.0.10-10.0.0.19", "10.0.0.30"],
            &["10.0.0.15-10.0.0.40"],
        );
        assert_eq!(pool.usable_addresses().unwrap().len(), 5);
        let v6 = spec(None, "fd00::/64", &["fd00::1-fd00::ff"], &[]);
        assert_eq!(v6.usable_addresses().unwrap().len(), 255);
    }

    #[test]
    fn bad_lists_name_the_field_and_every_bad_item() {
        let err = spec(Some(4), "10.0.0.0/24", &["10.0.0.1", "x", "fd00::1"], &[])
            .usable_addresses()
            .unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("spec.ips: [1] "), "{text}");
        assert!(text.contains("; [2] "), "{text}");
        let err = spec(None, "x", &[], &[]).usable_addresses().unwrap_err();
        assert_eq!(err, PoolAddressError::UnknownFamily("x".into()));
    }
}
