//! `ifacer`, upstream Spiderpool's CNI meta-plugin: before the main plugin (macvlan, ipvlan, vlan)
//! runs, it makes the host interface that plugin's `master` names: a VLAN sub-interface
//! `<interface>.<vlanID>`, or a bond of `interfaces` (with a VLAN on it when `vlanID` is set).
//!
//! [`config`] reads the netconf (upstream's keys), [`plan`] decides the steps from the node's links
//! (pure), [`apply`] carries them out with spiderpool-netlink's bond and VLAN code (the node
//! daemon's interface tasks use the same) and undoes them when one fails, [`plugin`] is one
//! invocation.

pub mod apply;
pub mod config;
pub mod plan;
pub mod plugin;
