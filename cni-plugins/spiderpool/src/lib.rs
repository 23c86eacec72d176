//! The `spiderpool` CNI IPAM plugin (see the crate description). Work in progress.
