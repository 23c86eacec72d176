//! Facts of a pool the allocator reads from its spec.

use spiderpool_ipmath::IpFamily;
use spiderpool_schema::SpiderIPPool;

/// The pool's IP family: `spec.ipVersion`, else its subnet's.
pub fn family(pool: &SpiderIPPool) -> Option<IpFamily> {
    pool.spec.ip_version.and_then(IpFamily::from_version).or_else(|| {
        spiderpool_ipmath::parse_cidr(&pool.spec.subnet)
            .ok()
            .map(|n| IpFamily::of_net(&n))
    })
}
