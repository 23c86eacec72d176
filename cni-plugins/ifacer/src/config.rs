//! The netconf of `ifacer`, as upstream Spiderpool defines it: `interfaces` (at least one),
//! `vlanID` (0-4094, 0 for none) and `bond` (`name`, default `sp_bond0`; `mode` 0-6; `options` as
//! `k1=v1;k2=v2`). Every bad key is reported by name.
//!
//! Where upstream is silent about bad input we refuse it rather than guess: upstream drops option
//! entries it cannot read (`miimon=abc`, `nonsense=1`) without a word, so a bond came up without
//! the setting the user asked for; here they are errors naming the option.

use serde_json::Value;
use spiderpool_cni_common::cni::SpecVersion;
use spiderpool_cni_common::netconf::{self, ConfigError, Section};
use spiderpool_netlink::bond::{BOND_MODES, BondOption};

/// Upstream's default bond name.
pub const DEFAULT_BOND_NAME: &str = "sp_bond0";

/// The kernel's limit on interface names (`IFNAMSIZ` - 1).
const MAX_IFNAME: usize = 15;

/// What `ifacer` is asked to make.
#[derive(Clone, Debug, PartialEq)]
pub struct IfacerConf {
    /// `cniVersion`.
    pub cni_version: SpecVersion,
    /// `prevResult`, passed on.
    pub prev_result: Option<Value>,
    /// `interfaces`: one VLAN parent, or the bond's members.
    pub interfaces: Vec<String>,
    /// `vlanID`: 0 for no VLAN.
    pub vlan_id: u16,
    /// `bond`, when given.
    pub bond: Option<BondConf>,
}

/// The `bond` object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BondConf {
    /// `bond.name`.
    pub name: String,
    /// `bond.mode`, by number (0 balance-rr ... 6 balance-alb).
    pub mode: u8,
    /// `bond.options`, parsed.
    pub options: Vec<BondOption>,
}

/// What the configuration makes, as upstream decides it from the counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wanted<'a> {
    /// One interface and no VLAN, or several and no bond: nothing to do.
    Nothing,
    /// A VLAN on the one interface.
    Vlan {
        /// The parent.
        parent: &'a str,
        /// The tag.
        id: u16,
    },
    /// A bond of the interfaces, with a VLAN on it when `vlan` is set.
    Bond {
        /// The bond.
        bond: &'a BondConf,
        /// Its members.
        members: &'a [String],
        /// The VLAN tag on the bond, when not 0.
        vlan: Option<u16>,
    },
}

impl IfacerConf {
    /// What to make.
    pub fn wanted(&self) -> Wanted<'_> {
        match (self.interfaces.as_slice(), &self.bond) {
            ([parent], _) if self.vlan_id != 0 => Wanted::Vlan {
                parent,
                id: self.vlan_id,
            },
            ([_, _, ..], Some(bond)) => Wanted::Bond {
                bond,
                members: &self.interfaces,
                vlan: (self.vlan_id != 0).then_some(self.vlan_id),
            },
            _ => Wanted::Nothing,
        }
    }
}

/// The name upstream gives a VLAN sub-interface: `<parent>.<id>`.
pub fn vlan_name(parent: &str, id: u16) -> String {
    format!("{parent}.{id}")
}

/// Parses stdin.
pub fn parse(stdin: &[u8]) -> Result<IfacerConf, ConfigError> {
    let top = netconf::parse_top(stdin)?;
    let section = Section::new(&top.object, "");
    let interfaces = section.strings("interfaces")?;
    if interfaces.is_empty() {
        return Err(ConfigError::invalid(
            "interfaces",
            "at least one interface is required (a VLAN's parent, or a bond's members)",
        ));
    }
    for (i, name) in interfaces.iter().enumerate() {
        check_ifname(&format!("interfaces[{i}]"), name)?;
        if interfaces[..i].contains(name) {
            return Err(ConfigError::invalid(
                format!("interfaces[{i}]"),
                format!("`{name}` is listed twice"),
            ));
        }
    }
    let vlan_id = match section.integer("vlanID")? {
        None => 0,
        Some(id) => u16::try_from(id)
            .ok()
            .filter(|id| *id <= 4094)
            .ok_or_else(|| ConfigError::invalid("vlanID", format!("{id} is not 0-4094")))?,
    };
    let bond = match section.object("bond")? {
        None => None,
        Some(map) => Some(parse_bond(&Section::new(map, "bond."))?),
    };
    let conf = IfacerConf {
        cni_version: top.cni_version,
        prev_result: top.prev_result,
        interfaces,
        vlan_id,
        bond,
    };
    // The names this configuration makes must fit the kernel's limit.
    let made = match conf.wanted() {
        Wanted::Vlan { parent, id } => Some((vlan_name(parent, id), "vlanID")),
        Wanted::Bond {
            bond, vlan: Some(id), ..
        } => Some((vlan_name(&bond.name, id), "vlanID")),
        Wanted::Bond { .. } | Wanted::Nothing => None,
    };
    if let Some((name, key)) = made
        && name.len() > MAX_IFNAME
    {
        return Err(ConfigError::invalid(
            key,
            format!("the VLAN interface `{name}` would be longer than {MAX_IFNAME} characters"),
        ));
    }
    Ok(conf)
}

fn parse_bond(section: &Section<'_>) -> Result<BondConf, ConfigError> {
    let name = section
        .string("name")?
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| DEFAULT_BOND_NAME.to_owned());
    check_ifname(&section.key("name"), &name)?;
    let mode = match section.integer("mode")? {
        None => 0,
        Some(mode) => u8::try_from(mode)
            .ok()
            .filter(|m| BOND_MODES.iter().any(|(n, _)| n == m))
            .ok_or_else(|| {
                let known: Vec<String> = BOND_MODES
                    .iter()
                    .map(|(n, name)| format!("{n} ({name})"))
                    .collect();
                ConfigError::invalid(
                    section.key("mode"),
                    format!("{mode} is not a bonding mode: one of {}", known.join(", ")),
                )
            })?,
    };
    let options = parse_options(
        &section.key("options"),
        &section.string("options")?.unwrap_or_default(),
    )?;
    Ok(BondConf { name, mode, options })
}

/// `k1=v1;k2=v2`: each option by its kernel name (or upstream's spelling), values as numbers, names
/// or `[a,b]` lists. Empty entries (a trailing `;`) are skipped.
fn parse_options(key: &str, text: &str) -> Result<Vec<BondOption>, ConfigError> {
    let mut options: Vec<BondOption> = Vec::new();
    for entry in text.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((name, value)) = entry.split_once('=') else {
            return Err(ConfigError::invalid(
                key,
                format!("`{entry}` is not `name=value`"),
            ));
        };
        let option = BondOption::parse(name, value)
            .map_err(|e| ConfigError::invalid(key, format!("`{entry}`: {e}")))?;
        if options.iter().any(|o| o.name == option.name) {
            return Err(ConfigError::invalid(
                key,
                format!("`{}` is given twice", option.name),
            ));
        }
        options.push(option);
    }
    Ok(options)
}

fn check_ifname(key: &str, name: &str) -> Result<(), ConfigError> {
    let reason = if name.is_empty() {
        Some("is empty")
    } else if name.len() > MAX_IFNAME {
        Some("is longer than 15 characters")
    } else if name == "." || name == ".." || name.contains(['/', ':']) || name.contains(char::is_whitespace) {
        Some("is not an interface name")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(ConfigError::invalid(key, format!("`{name}` {reason}"))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(json: &str) -> Result<IfacerConf, String> {
        parse(json.as_bytes()).map_err(|e| e.to_string())
    }

    #[test]
    fn upstream_documented_netconfs() {
        let vlan =
            conf(r#"{"cniVersion":"0.3.1","type":"ifacer","interfaces":["ens160"],"vlanID":120}"#).unwrap();
        assert_eq!(
            vlan.wanted(),
            Wanted::Vlan {
                parent: "ens160",
                id: 120
            }
        );
        let bond = conf(
            r#"{"cniVersion":"0.3.1","type":"ifacer","interfaces":["ens160","ens192"],"vlanID":100,
                "bond":{"name":"bond0","mode":1,"options":"primary=ens160;miimon=100;arp_ip_target=[\"10.0.0.1\"]"}}"#,
        )
        .unwrap();
        let Wanted::Bond {
            bond: b,
            members,
            vlan,
        } = bond.wanted()
        else {
            panic!("{bond:?}")
        };
        assert_eq!(
            (b.name.as_str(), b.mode, members.len(), vlan),
            ("bond0", 1, 2, Some(100))
        );
        let options: Vec<String> = b.options.iter().map(ToString::to_string).collect();
        assert_eq!(
            options,
            ["primary=ens160", "miimon=100", "arp_ip_target=10.0.0.1"]
        );
    }

    #[test]
    fn upstream_defaults_and_no_ops() {
        let default_name =
            conf(r#"{"cniVersion":"1.0.0","interfaces":["a","b"],"bond":{"mode":4}}"#).unwrap();
        assert_eq!(default_name.bond.as_ref().unwrap().name, "sp_bond0");
        for nothing in [
            r#"{"cniVersion":"1.0.0","interfaces":["eth0"]}"#,
            r#"{"cniVersion":"1.0.0","interfaces":["eth0"],"vlanID":0}"#,
            r#"{"cniVersion":"1.0.0","interfaces":["eth0","eth1"],"vlanID":7}"#,
        ] {
            assert_eq!(conf(nothing).unwrap().wanted(), Wanted::Nothing, "{nothing}");
        }
    }

    #[test]
    fn every_bad_key_is_named() {
        for (json, expected) in [
            (r#"{"cniVersion":"1.0.0"}"#, "interfaces: at least one interface"),
            (
                r#"{"cniVersion":"1.0.0","interfaces":"eth0"}"#,
                "interfaces: expected a list of strings",
            ),
            (
                r#"{"cniVersion":"1.0.0","interfaces":["eth0"],"vlanID":4095}"#,
                "vlanID: 4095 is not 0-4094",
            ),
            (
                r#"{"cniVersion":"1.0.0","interfaces":["eth0"],"vlanID":"7"}"#,
                "vlanID: expected an integer",
            ),
            (
                r#"{"cniVersion":"1.0.0","interfaces":["eth0","eth0"]}"#,
                "interfaces[1]: `eth0` is listed twice",
            ),
            (
                r#"{"cniVersion":"1.0.0","interfaces":["a/b"]}"#,
                "interfaces[0]: `a/b` is not an interface name",
            ),
            (
                r#"{"cniVersion":"1.0.0","interfaces":["verylongname12"],"vlanID":100}"#,
                "vlanID: the VLAN interface `verylongname12.100` would be longer",
            ),
            (
                r#"{"cniVersion":"1.0.0","interfaces":["a","b"],"bond":{"mode":7}}"#,
                "bond.mode: 7 is not a bonding mode",
            ),
            (
                r#"{"cniVersion":"1.0.0","interfaces":["a","b"],"bond":{"name":"bond-with-a-long-name"}}"#,
                "bond.name: `bond-with-a-long-name` is longer than 15",
            ),
            (
                r#"{"cniVersion":"1.0.0","interfaces":["a","b"],"bond":{"options":"miimon=abc"}}"#,
                "bond.options: `miimon=abc`",
            ),
            (
                r#"{"cniVersion":"1.0.0","interfaces":["a","b"],"bond":{"options":"nonsense=1"}}"#,
                "bond.options: `nonsense=1`",
            ),
            (
                r#"{"cniVersion":"1.0.0","interfaces":["a","b"],"bond":{"options":"miimon"}}"#,
                "bond.options: `miimon` is not `name=value`",
            ),
            (
                r#"{"cniVersion":"1.0.0","interfaces":["a","b"],"bond":{"options":"miimon=1;miimon=2"}}"#,
                "bond.options: `miimon` is given twice",
            ),
            (r#"{"interfaces":["a"]}"#, "cniVersion: missing"),
        ] {
            let error = conf(json).expect_err(json);
            assert!(error.starts_with(expected), "{json}: {error}");
        }
    }

    #[test]
    fn trailing_separators_and_upstream_spellings_are_accepted() {
        let c = conf(
            r#"{"cniVersion":"0.4.0","interfaces":["a","b"],"bond":{"mode":4,"options":"lacp_rate=1; xmit_hash_policy=1;up_delay=200;"}}"#,
        )
        .unwrap();
        let options: Vec<String> = c.bond.unwrap().options.iter().map(ToString::to_string).collect();
        assert_eq!(
            options,
            ["lacp_rate=fast", "xmit_hash_policy=layer3+4", "updelay=200"]
        );
    }
}
