//! Policy routing rules (`ip rule`).

use std::net::IpAddr;

use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use spiderpool_ipmath::{IpFamily, IpNet};

use crate::error::Result;
use crate::handle::{Handle, Write};
use crate::route::address_family;

/// A rule that sends matching packets to a routing table. `None` fields match anything.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Rule {
    /// Family of the packets it applies to.
    pub family: IpFamily,
    /// Priority (`pref`); the kernel picks one below the lowest existing when `None` on add.
    pub priority: Option<u32>,
    /// The table to look up.
    pub table: u32,
    /// Source addresses (`from`).
    pub source: Option<IpNet>,
    /// Destination addresses (`to`).
    pub destination: Option<IpNet>,
    /// Firewall mark (`fwmark`), with its mask.
    pub fwmark: Option<(u32, u32)>,
}

impl Rule {
    /// `from all lookup table` of `family`.
    pub fn lookup(family: IpFamily, table: u32) -> Self {
        Self {
            family,
            priority: None,
            table,
            source: None,
            destination: None,
            fwmark: None,
        }
    }
}

fn message(rule: &Rule) -> RuleMessage {
    let mut message = RuleMessage::default();
    message.header.family = address_family(rule.family);
    message.header.action = RuleAction::ToTable;
    message.header.table = u8::try_from(rule.table).unwrap_or(0);
    message.attributes.push(RuleAttribute::Table(rule.table));
    if let Some(priority) = rule.priority {
        message.attributes.push(RuleAttribute::Priority(priority));
    }
    if let Some(source) = rule.source {
        message.header.src_len = source.prefix_len();
        message.attributes.push(RuleAttribute::Source(source.network()));
    }
    if let Some(destination) = rule.destination {
        message.header.dst_len = destination.prefix_len();
        message
            .attributes
            .push(RuleAttribute::Destination(destination.network()));
    }
    if let Some((mark, mask)) = rule.fwmark {
        message.attributes.push(RuleAttribute::FwMark(mark));
        message.attributes.push(RuleAttribute::FwMask(mask));
    }
    message
}

fn from_message(message: &RuleMessage, family: IpFamily) -> Option<Rule> {
    if message.header.action != RuleAction::ToTable {
        return None;
    }
    let mut rule = Rule::lookup(family, u32::from(message.header.table));
    let mut mark = None;
    let mut mask = u32::MAX;
    let net = |ip: IpAddr, len: u8| IpNet::new(ip, len).ok();
    for attribute in &message.attributes {
        match attribute {
            RuleAttribute::Table(table) => rule.table = *table,
            RuleAttribute::Priority(priority) => rule.priority = Some(*priority),
            RuleAttribute::Source(ip) => rule.source = net(*ip, message.header.src_len),
            RuleAttribute::Destination(ip) => rule.destination = net(*ip, message.header.dst_len),
            RuleAttribute::FwMark(value) => mark = Some(*value),
            RuleAttribute::FwMask(value) => mask = *value,
            _ => {}
        }
    }
    rule.fwmark = mark.map(|mark| (mark, mask));
    Some(rule)
}

impl Handle {
    /// Every table-lookup rule of `family`.
    pub async fn rules(&self, family: IpFamily) -> Result<Vec<Rule>> {
        let mut request = RuleMessage::default();
        request.header.family = address_family(family);
        let answers = self
            .dump(
                || format!("list {family} rules"),
                RouteNetlinkMessage::GetRule(request),
            )
            .await?;
        Ok(answers
            .iter()
            .filter_map(|answer| match answer {
                RouteNetlinkMessage::NewRule(message) if message.header.family == address_family(family) => {
                    from_message(message, family)
                }
                _ => None,
            })
            .collect())
    }

    /// Adds `rule`. `EEXIST` when an identical rule is there already.
    pub async fn add_rule(&self, rule: &Rule) -> Result<()> {
        self.write(
            || format!("add rule {}", describe(rule)),
            RouteNetlinkMessage::NewRule(message(rule)),
            Write::Create,
        )
        .await
    }

    /// Deletes the first rule matching `rule`'s fields. `ENOENT` when there is none.
    pub async fn delete_rule(&self, rule: &Rule) -> Result<()> {
        self.write(
            || format!("delete rule {}", describe(rule)),
            RouteNetlinkMessage::DelRule(message(rule)),
            Write::Modify,
        )
        .await
    }
}

/// `pref P from S to D fwmark M/K lookup T` for error messages.
pub fn describe(rule: &Rule) -> String {
    let mut text = String::new();
    if let Some(priority) = rule.priority {
        text.push_str(&format!("pref {priority} "));
    }
    text.push_str(&format!(
        "from {}",
        rule.source
            .map_or_else(|| "all".to_owned(), |net| net.to_string())
    ));
    if let Some(destination) = rule.destination {
        text.push_str(&format!(" to {destination}"));
    }
    if let Some((mark, mask)) = rule.fwmark {
        text.push_str(&format!(" fwmark {mark:#x}/{mask:#x}"));
    }
    text.push_str(&format!(" lookup {}", rule.table));
    text
}
