//! The node daemon (upstream's spiderpool-agent). Work in progress.
