//! Facts of a pool the allocator reads from its spec.

use spiderpool_ipmath::IpFamily;
use spiderpool_schema::SpiderIPPool;

/// The pool's IP family ([`spiderpool_schema::SpiderIPPoolSpec::family`]).
pub fn family(pool: &SpiderIPPool) -> Option<IpFamily> {
    pool.spec.family()
}
