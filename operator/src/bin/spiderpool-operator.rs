//! `spiderpool-operator`: the operator process. Work in progress.
fn main() {}
