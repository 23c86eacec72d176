//! `spiderpool`: the CNI IPAM plugin binary. Work in progress.
fn main() {}
