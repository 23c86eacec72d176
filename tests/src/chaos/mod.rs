//! The chaos suite's parts (see `tests/tests/chaos.rs` for the run itself).

pub mod proxy;
pub mod rng;
