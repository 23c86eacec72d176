//! `spiderpool-agent`: the node daemon. Work in progress.
fn main() {}
