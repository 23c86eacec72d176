//! Bonds: creating them with a mode and options, changing mode and options, and the options
//! themselves, by their kernel (sysfs) names as `ip link` and the bonding documentation spell them.
//!
//! An option is parsed once ([`BondOption::parse`]) from the text users write (`miimon: "100"`,
//! `lacp_rate: fast`, `xmit_hash_policy: layer3+4`, `arp_ip_target: 10.0.0.1,10.0.0.2`), into the
//! value the kernel takes over netlink, so that what a task asks and what the kernel reports compare
//! equal when they mean the same (`fast` and `1` are one value). Options naming an interface
//! (`primary`, `active_slave`) are carried by name and resolved to an index when written.
//!
//! The kernel refuses some changes on a bond that is up (`mode`, `lacp_rate`, `ad_select`, the
//! `ad_actor_*` options, `tlb_dynamic_lb`) or that has members (`mode`, `fail_over_mac`):
//! [`BondOption::needs_down`] and [`BondOption::needs_no_members`] say which, so a caller can plan
//! the steps.

use std::fmt;
use std::net::Ipv4Addr;

use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::link::{
    BondAdSelect, BondAllPortActive, BondArpAllTargets, BondArpValidate, BondFailOverMac, BondLacpRate,
    BondMode, BondPrimaryReselect, BondXmitHashPolicy, InfoBond, InfoData, InfoKind, LinkAttribute, LinkInfo,
    LinkMessage,
};

use crate::error::{NetlinkError, Result};
use crate::handle::{Handle, Write};
use crate::link::{Mac, format_mac};

/// The bonding modes by number (what upstream's `ifacer` and SpiderMultusConfig use) and name.
pub const BOND_MODES: [(u8, &str); 7] = [
    (0, "balance-rr"),
    (1, "active-backup"),
    (2, "balance-xor"),
    (3, "broadcast"),
    (4, "802.3ad"),
    (5, "balance-tlb"),
    (6, "balance-alb"),
];

/// The kernel name of bonding mode `mode` (`mode <number>` for one it does not know).
pub fn mode_name(mode: u8) -> String {
    BOND_MODES
        .iter()
        .find(|(number, _)| *number == mode)
        .map_or_else(|| format!("mode {mode}"), |(_, name)| (*name).to_owned())
}

/// The value of a bonding option as the kernel takes it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BondOptionValue {
    /// A number, or a named choice by its number (`lacp_rate: fast` is 1).
    Number(u32),
    /// IPv4 addresses (`arp_ip_target`).
    Addresses(Vec<Ipv4Addr>),
    /// A MAC address (`ad_actor_system`).
    Mac(Mac),
    /// An interface, by name (`primary`, `active_slave`); empty for none.
    Interface(String),
}

/// One bonding option: its kernel name and value.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BondOption {
    /// The kernel's name, e.g. `miimon`.
    pub name: &'static str,
    /// The value.
    pub value: BondOptionValue,
}

/// Why an option cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BondOptionError {
    /// The name is not a bonding option this layer knows.
    #[error("`{0}` is not a bonding option (known: {known})", known = known_names())]
    Unknown(String),
    /// The mode is not an option: it is the bond's own setting.
    #[error("`mode` is set by the bond's mode, not as an option")]
    Mode,
    /// The value does not fit the option.
    #[error("bonding option `{name}`: `{value}` is not {expected}")]
    BadValue {
        /// The option.
        name: String,
        /// The value given.
        value: String,
        /// What would have been right.
        expected: String,
    },
}

/// How an option's value is written.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// A number up to `max`.
    Number {
        max: u32,
    },
    /// One of these names (or their numbers).
    Choice(&'static [(&'static str, u32)]),
    Addresses,
    Mac,
    Interface,
}

/// Whether the kernel accepts a change of the option on a bond that is up / has members.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Needs {
    Nothing,
    Down,
    NoMembers,
}

const OFF_ON: &[(&str, u32)] = &[("off", 0), ("on", 1)];

/// Every option: kernel name, value kind, what a change needs.
const OPTIONS: &[(&str, Kind, Needs)] = &[
    ("active_slave", Kind::Interface, Needs::Nothing),
    ("ad_actor_sys_prio", Kind::Number { max: 65535 }, Needs::Down),
    ("ad_actor_system", Kind::Mac, Needs::Down),
    (
        "ad_select",
        Kind::Choice(&[
            ("stable", 0),
            ("bandwidth", 1),
            ("count", 2),
            ("actor_port_prio", 3),
        ]),
        Needs::Down,
    ),
    ("ad_user_port_key", Kind::Number { max: 1023 }, Needs::Down),
    (
        "all_slaves_active",
        Kind::Choice(&[("dropped", 0), ("delivered", 1)]),
        Needs::Nothing,
    ),
    (
        "arp_all_targets",
        Kind::Choice(&[("any", 0), ("all", 1)]),
        Needs::Nothing,
    ),
    ("arp_interval", Kind::Number { max: u32::MAX }, Needs::Nothing),
    ("arp_ip_target", Kind::Addresses, Needs::Nothing),
    (
        "arp_validate",
        Kind::Choice(&[
            ("none", 0),
            ("active", 1),
            ("backup", 2),
            ("all", 3),
            ("filter", 4),
            ("filter_active", 5),
            ("filter_backup", 6),
        ]),
        Needs::Nothing,
    ),
    ("downdelay", Kind::Number { max: u32::MAX }, Needs::Nothing),
    (
        "fail_over_mac",
        Kind::Choice(&[("none", 0), ("active", 1), ("follow", 2)]),
        Needs::NoMembers,
    ),
    ("lacp_active", Kind::Choice(OFF_ON), Needs::Down),
    (
        "lacp_rate",
        Kind::Choice(&[("slow", 0), ("fast", 1)]),
        Needs::Down,
    ),
    ("lp_interval", Kind::Number { max: u32::MAX }, Needs::Nothing),
    ("miimon", Kind::Number { max: u32::MAX }, Needs::Nothing),
    ("min_links", Kind::Number { max: u32::MAX }, Needs::Nothing),
    ("missed_max", Kind::Number { max: 255 }, Needs::Nothing),
    ("num_grat_arp", Kind::Number { max: 255 }, Needs::Nothing),
    ("packets_per_slave", Kind::Number { max: 65535 }, Needs::Nothing),
    ("peer_notif_delay", Kind::Number { max: u32::MAX }, Needs::Nothing),
    ("primary", Kind::Interface, Needs::Nothing),
    (
        "primary_reselect",
        Kind::Choice(&[("always", 0), ("better", 1), ("failure", 2)]),
        Needs::Nothing,
    ),
    ("resend_igmp", Kind::Number { max: 255 }, Needs::Nothing),
    ("tlb_dynamic_lb", Kind::Choice(OFF_ON), Needs::Down),
    ("updelay", Kind::Number { max: u32::MAX }, Needs::Nothing),
    ("use_carrier", Kind::Choice(OFF_ON), Needs::Nothing),
    (
        "xmit_hash_policy",
        Kind::Choice(&[
            ("layer2", 0),
            ("layer3+4", 1),
            ("layer2+3", 2),
            ("encap2+3", 3),
            ("encap3+4", 4),
            ("vlan+srcmac", 5),
        ]),
        Needs::Nothing,
    ),
];

/// `num_unsol_na` is the IPv6 name of `num_grat_arp` (one setting in the kernel); `up_delay` is how
/// upstream's `ifacer` spells `updelay`.
const ALIASES: &[(&str, &str)] = &[("num_unsol_na", "num_grat_arp"), ("up_delay", "updelay")];

fn known_names() -> String {
    OPTIONS
        .iter()
        .map(|(name, ..)| *name)
        .collect::<Vec<_>>()
        .join(", ")
}

fn lookup(name: &str) -> Option<&'static (&'static str, Kind, Needs)> {
    let name = ALIASES
        .iter()
        .find(|(alias, _)| *alias == name)
        .map_or(name, |(_, canonical)| canonical);
    OPTIONS.iter().find(|(known, ..)| *known == name)
}

impl BondOption {
    /// Parses `name: value` as users write it. Numbers may be given for named choices; `on`/`off`,
    /// `1`/`0` for switches; `arp_ip_target` takes addresses separated by `,` (optionally in `[ ]`
    /// and quoted, upstream ifacer's array form `["10.0.0.1","10.0.0.2"]`).
    pub fn parse(name: &str, value: &str) -> Result<Self, BondOptionError> {
        let name = name.trim();
        if name == "mode" {
            return Err(BondOptionError::Mode);
        }
        let (canonical, kind, _) = lookup(name).ok_or_else(|| BondOptionError::Unknown(name.to_owned()))?;
        let value = value.trim();
        let bad = |expected: String| BondOptionError::BadValue {
            name: name.to_owned(),
            value: value.to_owned(),
            expected,
        };
        let parsed = match kind {
            Kind::Number { max } => {
                let number: u32 = value.parse().map_err(|_| bad(format!("a number (0-{max})")))?;
                if number > *max {
                    return Err(bad(format!("a number (0-{max})")));
                }
                BondOptionValue::Number(number)
            }
            Kind::Choice(choices) => {
                let lower = value.to_ascii_lowercase();
                let by_name = choices
                    .iter()
                    .find(|(n, _)| *n == lower)
                    .map(|(_, number)| *number);
                let by_number = lower
                    .parse::<u32>()
                    .ok()
                    .filter(|n| choices.iter().any(|(_, c)| c == n));
                let number = by_name.or(by_number).ok_or_else(|| {
                    let names: Vec<String> = choices.iter().map(|(n, c)| format!("{n} ({c})")).collect();
                    bad(format!("one of {}", names.join(", ")))
                })?;
                BondOptionValue::Number(number)
            }
            Kind::Addresses => {
                let list = value.trim_start_matches('[').trim_end_matches(']');
                let addresses = list
                    .split([',', ' '])
                    .filter(|a| !a.is_empty())
                    .map(|a| a.trim_matches('"').trim_start_matches('+').parse::<Ipv4Addr>())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| bad("IPv4 addresses separated by commas".to_owned()))?;
                if addresses.len() > 16 {
                    return Err(bad("at most 16 addresses".to_owned()));
                }
                BondOptionValue::Addresses(addresses)
            }
            Kind::Mac => {
                BondOptionValue::Mac(parse_mac(value).ok_or_else(|| bad("a MAC address".to_owned()))?)
            }
            Kind::Interface => {
                if value.len() > 15 || value.contains(['/', ' ']) {
                    return Err(bad("an interface name".to_owned()));
                }
                BondOptionValue::Interface(value.to_owned())
            }
        };
        Ok(BondOption {
            name: canonical,
            value: parsed,
        })
    }

    /// The kernel refuses to change it while the bond is up.
    pub fn needs_down(&self) -> bool {
        lookup(self.name).is_some_and(|(_, _, needs)| *needs == Needs::Down)
    }

    /// The kernel refuses to change it while the bond has members.
    pub fn needs_no_members(&self) -> bool {
        lookup(self.name).is_some_and(|(_, _, needs)| *needs == Needs::NoMembers)
    }

    /// The value as users write it (`fast`, `layer3+4`, `10.0.0.1,10.0.0.2`).
    pub fn value_text(&self) -> String {
        match &self.value {
            BondOptionValue::Number(number) => match lookup(self.name) {
                Some((_, Kind::Choice(choices), _)) => choices
                    .iter()
                    .find(|(_, c)| c == number)
                    .map_or_else(|| number.to_string(), |(n, _)| (*n).to_owned()),
                _ => number.to_string(),
            },
            BondOptionValue::Addresses(list) => {
                list.iter().map(Ipv4Addr::to_string).collect::<Vec<_>>().join(",")
            }
            BondOptionValue::Mac(mac) => format_mac(mac),
            BondOptionValue::Interface(name) => name.clone(),
        }
    }

    /// The netlink attribute, with interface names resolved by `index_of` (`None`: no such link).
    fn to_info(&self, index_of: &dyn Fn(&str) -> Option<u32>) -> Result<InfoBond> {
        let number = |n: &u32| *n;
        let byte = |n: &u32| u8::try_from(*n).unwrap_or(u8::MAX);
        let short = |n: &u32| u16::try_from(*n).unwrap_or(u16::MAX);
        let interface = |name: &str| -> Result<u32> {
            if name.is_empty() {
                return Ok(0);
            }
            index_of(name).ok_or_else(|| NetlinkError::Unexpected {
                op: format!("set bonding option {}={name}", self.name),
                detail: format!("no link named {name}"),
            })
        };
        Ok(match (self.name, &self.value) {
            ("active_slave", BondOptionValue::Interface(n)) => InfoBond::ActivePort(interface(n)?),
            ("primary", BondOptionValue::Interface(n)) => InfoBond::Primary(interface(n)?),
            ("arp_ip_target", BondOptionValue::Addresses(list)) => InfoBond::ArpIpTarget(list.clone()),
            ("ad_actor_system", BondOptionValue::Mac(mac)) => InfoBond::AdActorSystem(*mac),
            (name, BondOptionValue::Number(n)) => match name {
                "ad_actor_sys_prio" => InfoBond::AdActorSysPrio(short(n)),
                "ad_select" => InfoBond::AdSelect(BondAdSelect::from(byte(n))),
                "ad_user_port_key" => InfoBond::AdUserPortKey(short(n)),
                "all_slaves_active" => InfoBond::AllPortsActive(BondAllPortActive::from(byte(n))),
                "arp_all_targets" => InfoBond::ArpAllTargets(BondArpAllTargets::from(number(n))),
                "arp_interval" => InfoBond::ArpInterval(number(n)),
                "arp_validate" => InfoBond::ArpValidate(BondArpValidate::from(number(n))),
                "downdelay" => InfoBond::DownDelay(number(n)),
                "fail_over_mac" => InfoBond::FailOverMac(BondFailOverMac::from(byte(n))),
                "lacp_active" => InfoBond::AdLacpActive(*n != 0),
                "lacp_rate" => InfoBond::AdLacpRate(BondLacpRate::from(byte(n))),
                "lp_interval" => InfoBond::LpInterval(number(n)),
                "miimon" => InfoBond::MiiMon(number(n)),
                "min_links" => InfoBond::MinLinks(number(n)),
                "missed_max" => InfoBond::MissedMax(byte(n)),
                "num_grat_arp" => InfoBond::NumPeerNotif(byte(n)),
                "packets_per_slave" => InfoBond::PacketsPerPort(number(n)),
                "peer_notif_delay" => InfoBond::PeerNotifDelay(number(n)),
                "primary_reselect" => InfoBond::PrimaryReselect(BondPrimaryReselect::from(byte(n))),
                "resend_igmp" => InfoBond::ResendIgmp(number(n)),
                "tlb_dynamic_lb" => InfoBond::TlbDynamicLb(*n != 0),
                "updelay" => InfoBond::UpDelay(number(n)),
                "use_carrier" => InfoBond::UseCarrier(*n != 0),
                "xmit_hash_policy" => InfoBond::XmitHashPolicy(BondXmitHashPolicy::from(byte(n))),
                _ => return Err(self.unexpected()),
            },
            _ => return Err(self.unexpected()),
        })
    }

    fn unexpected(&self) -> NetlinkError {
        NetlinkError::Unexpected {
            op: format!("set bonding option {}", self.name),
            detail: format!("value {:?} does not fit the option", self.value),
        }
    }

    /// The option a kernel attribute reports, with interface indexes named by `name_of`; `None` for
    /// attributes that are state, not settings (`ad_info`, `mode`).
    pub(crate) fn from_info(info: &InfoBond, name_of: &dyn Fn(u32) -> String) -> Option<Self> {
        let n = BondOptionValue::Number;
        let (name, value) = match info {
            InfoBond::ActivePort(index) => ("active_slave", BondOptionValue::Interface(name_of(*index))),
            InfoBond::Primary(index) => ("primary", BondOptionValue::Interface(name_of(*index))),
            InfoBond::ArpIpTarget(list) => ("arp_ip_target", BondOptionValue::Addresses(list.clone())),
            InfoBond::AdActorSystem(mac) => ("ad_actor_system", BondOptionValue::Mac(*mac)),
            InfoBond::AdActorSysPrio(v) => ("ad_actor_sys_prio", n(u32::from(*v))),
            InfoBond::AdSelect(v) => ("ad_select", n(u32::from(u8::from(*v)))),
            InfoBond::AdUserPortKey(v) => ("ad_user_port_key", n(u32::from(*v))),
            InfoBond::AllPortsActive(v) => ("all_slaves_active", n(u32::from(u8::from(*v)))),
            InfoBond::ArpAllTargets(v) => ("arp_all_targets", n(u32::from(*v))),
            InfoBond::ArpInterval(v) => ("arp_interval", n(*v)),
            InfoBond::ArpValidate(v) => ("arp_validate", n(u32::from(*v))),
            InfoBond::DownDelay(v) => ("downdelay", n(*v)),
            InfoBond::FailOverMac(v) => ("fail_over_mac", n(u32::from(u8::from(*v)))),
            InfoBond::AdLacpActive(v) => ("lacp_active", n(u32::from(*v))),
            InfoBond::AdLacpRate(v) => ("lacp_rate", n(u32::from(u8::from(*v)))),
            InfoBond::LpInterval(v) => ("lp_interval", n(*v)),
            InfoBond::MiiMon(v) => ("miimon", n(*v)),
            InfoBond::MinLinks(v) => ("min_links", n(*v)),
            InfoBond::MissedMax(v) => ("missed_max", n(u32::from(*v))),
            InfoBond::NumPeerNotif(v) => ("num_grat_arp", n(u32::from(*v))),
            InfoBond::PacketsPerPort(v) => ("packets_per_slave", n(*v)),
            InfoBond::PeerNotifDelay(v) => ("peer_notif_delay", n(*v)),
            InfoBond::PrimaryReselect(v) => ("primary_reselect", n(u32::from(u8::from(*v)))),
            InfoBond::ResendIgmp(v) => ("resend_igmp", n(*v)),
            InfoBond::TlbDynamicLb(v) => ("tlb_dynamic_lb", n(u32::from(*v))),
            InfoBond::UpDelay(v) => ("updelay", n(*v)),
            InfoBond::UseCarrier(v) => ("use_carrier", n(u32::from(*v))),
            InfoBond::XmitHashPolicy(v) => ("xmit_hash_policy", n(u32::from(u8::from(*v)))),
            _ => return None,
        };
        Some(BondOption { name, value })
    }
}

impl fmt::Display for BondOption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.name, self.value_text())
    }
}

fn parse_mac(text: &str) -> Option<Mac> {
    let parts: Vec<u8> = text
        .split(':')
        .map(|p| u8::from_str_radix(p, 16).ok().filter(|_| p.len() == 2))
        .collect::<Option<_>>()?;
    <Mac>::try_from(parts.as_slice()).ok()
}

/// What the kernel reports of a bond's settings.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct BondSettings {
    /// The mode's number (see [`BOND_MODES`]).
    pub mode: u8,
    /// Every option the kernel reports, sorted by name.
    pub options: Vec<BondOption>,
}

impl BondSettings {
    /// Reads the settings from a bond's `IFLA_INFO_DATA`.
    pub(crate) fn from_infos(infos: &[InfoBond], name_of: &dyn Fn(u32) -> String) -> Self {
        let mut settings = BondSettings::default();
        for info in infos {
            if let InfoBond::Mode(mode) = info {
                settings.mode = u8::from(*mode);
            } else if let Some(option) = BondOption::from_info(info, name_of) {
                settings.options.push(option);
            }
        }
        settings.options.sort();
        settings
    }

    /// The reported value of option `name`.
    pub fn option(&self, name: &str) -> Option<&BondOption> {
        self.options.iter().find(|o| o.name == name)
    }
}

impl Handle {
    /// Creates bond `name` (down, no members) in mode `mode` with `options`; interface-valued
    /// options name links of this namespace. `EEXIST` when the name is taken.
    pub async fn create_bond(&self, name: &str, mode: u8, options: &[BondOption]) -> Result<()> {
        let infos = self.bond_infos(Some(mode), options).await?;
        let mut message = LinkMessage::default();
        message.attributes.push(LinkAttribute::IfName(name.to_owned()));
        message.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Bond),
            LinkInfo::Data(InfoData::Bond(infos)),
        ]));
        self.write(
            || format!("create bond {name} mode {}", mode_name(mode)),
            RouteNetlinkMessage::NewLink(message),
            Write::Create,
        )
        .await
    }

    /// Changes the mode (when `Some`) and `options` of the bond with index `index`. The kernel
    /// refuses some changes while the bond is up or has members (see [`BondOption::needs_down`]).
    pub async fn set_bond(&self, index: u32, mode: Option<u8>, options: &[BondOption]) -> Result<()> {
        let infos = self.bond_infos(mode, options).await?;
        let mut message = LinkMessage::default();
        message.header.index = index;
        message.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Bond),
            LinkInfo::Data(InfoData::Bond(infos)),
        ]));
        let described: Vec<String> = mode
            .map(|m| format!("mode={}", mode_name(m)))
            .into_iter()
            .chain(options.iter().map(BondOption::to_string))
            .collect();
        self.write(
            || format!("set bond #{index} {}", described.join(" ")),
            RouteNetlinkMessage::NewLink(message),
            Write::Modify,
        )
        .await
    }

    async fn bond_infos(&self, mode: Option<u8>, options: &[BondOption]) -> Result<Vec<InfoBond>> {
        let needs_names = options
            .iter()
            .any(|o| matches!(o.value, BondOptionValue::Interface(_)));
        let links = if needs_names {
            self.links().await?
        } else {
            Vec::new()
        };
        let index_of = |name: &str| links.iter().find(|l| l.name == name).map(|l| l.index);
        let mut infos = Vec::with_capacity(options.len() + 1);
        if let Some(mode) = mode {
            infos.push(InfoBond::Mode(BondMode::from(mode)));
        }
        for option in options {
            infos.push(option.to_info(&index_of)?);
        }
        Ok(infos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(name: &str, value: &str) -> BondOption {
        BondOption::parse(name, value).unwrap()
    }

    #[test]
    fn names_and_numbers_are_one_value() {
        assert_eq!(parse("lacp_rate", "fast"), parse("lacp_rate", "1"));
        assert_eq!(
            parse("xmit_hash_policy", "layer3+4").value,
            BondOptionValue::Number(1)
        );
        assert_eq!(parse("xmit_hash_policy", "Layer3+4").value_text(), "layer3+4");
        assert_eq!(parse("use_carrier", "on"), parse("use_carrier", "1"));
        assert_eq!(parse("num_unsol_na", "3").name, "num_grat_arp");
        assert_eq!(parse("up_delay", "200").name, "updelay");
        assert_eq!(parse("miimon", " 100 ").to_string(), "miimon=100");
    }

    #[test]
    fn lists_macs_and_interfaces() {
        assert_eq!(
            parse("arp_ip_target", "[10.0.0.1,10.0.0.2]").value,
            BondOptionValue::Addresses(vec![Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)])
        );
        assert_eq!(
            parse("arp_ip_target", "10.0.0.1, 10.0.0.2").value_text(),
            "10.0.0.1,10.0.0.2"
        );
        assert_eq!(
            parse("arp_ip_target", r#"["10.0.0.1","10.0.0.2"]"#).value_text(),
            "10.0.0.1,10.0.0.2",
            "upstream ifacer's array form"
        );
        assert_eq!(
            parse("ad_actor_system", "02:00:00:00:00:0a").value,
            BondOptionValue::Mac([2, 0, 0, 0, 0, 10])
        );
        assert_eq!(
            parse("primary", "ens1f0").value,
            BondOptionValue::Interface("ens1f0".into())
        );
    }

    #[test]
    fn bad_options_say_what_is_wrong() {
        assert_eq!(BondOption::parse("mode", "1"), Err(BondOptionError::Mode));
        let unknown = BondOption::parse("speed", "1").unwrap_err().to_string();
        assert!(
            unknown.starts_with("`speed` is not a bonding option (known: active_slave"),
            "{unknown}"
        );
        let bad = BondOption::parse("lacp_rate", "medium").unwrap_err().to_string();
        assert_eq!(
            bad,
            "bonding option `lacp_rate`: `medium` is not one of slow (0), fast (1)"
        );
        assert!(BondOption::parse("miimon", "-1").is_err());
        assert!(BondOption::parse("missed_max", "256").is_err());
        assert!(BondOption::parse("arp_ip_target", "10.0.0.300").is_err());
        assert!(BondOption::parse("ad_actor_system", "02:00:00:00:00").is_err());
        assert!(BondOption::parse("primary", "a/b").is_err());
    }

    #[test]
    fn what_a_change_needs() {
        assert!(parse("lacp_rate", "fast").needs_down());
        assert!(!parse("miimon", "100").needs_down());
        assert!(parse("fail_over_mac", "active").needs_no_members());
        assert!(!parse("xmit_hash_policy", "layer2").needs_no_members());
    }

    #[test]
    fn written_and_reported_values_round_trip() {
        let names = |index: u32| {
            if index == 7 {
                "ens1f0".to_owned()
            } else {
                String::new()
            }
        };
        let index_of = |name: &str| (name == "ens1f0").then_some(7);
        for (name, value) in [
            ("miimon", "100"),
            ("lacp_rate", "fast"),
            ("xmit_hash_policy", "layer2+3"),
            ("ad_select", "bandwidth"),
            ("arp_validate", "filter_backup"),
            ("arp_all_targets", "all"),
            ("fail_over_mac", "follow"),
            ("primary_reselect", "failure"),
            ("all_slaves_active", "delivered"),
            ("use_carrier", "off"),
            ("tlb_dynamic_lb", "on"),
            ("lacp_active", "off"),
            ("num_grat_arp", "5"),
            ("ad_actor_sys_prio", "100"),
            ("arp_ip_target", "10.0.0.1"),
            ("ad_actor_system", "02:00:00:00:00:01"),
            ("primary", "ens1f0"),
        ] {
            let option = parse(name, value);
            let info = option.to_info(&index_of).unwrap();
            assert_eq!(
                BondOption::from_info(&info, &names),
                Some(option),
                "{name}={value}"
            );
        }
    }

    #[test]
    fn modes_are_named() {
        assert_eq!(mode_name(4), "802.3ad");
        assert_eq!(mode_name(9), "mode 9");
    }
}
