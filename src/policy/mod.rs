//! Egress policy: which client may reach which destination.
//!
//! Rules are evaluated in order and the first that matches decides: the
//! command line's `--deny` flags, then its `--allow` flags, then the config
//! file's `[[rule]]` tables. A destination no rule decides is allowed,
//! unless it is in the built-in set `private` ([`special`]): loopback, the
//! internal networks, link-local and cloud metadata, and the rest of the
//! addresses that are not globally reachable.
//!
//! A private address opens only to an allow rule that names it by address
//! (a CIDR, an IP, or `private`). A rule that allows a domain does not let
//! that domain's DNS answers point into the private set, so a name whose
//! owner turns it towards 127.0.0.1 or 169.254.169.254 (DNS rebinding)
//! gets nothing from a rule written for a public service.
//!
//! Decisions are made on the address actually connected to or sent to,
//! after name resolution, with IPv4-mapped IPv6 addresses matched as the
//! IPv4 address they are.

pub(crate) mod source;
pub(crate) mod special;

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;

use ipnet::IpNet;
use serde::Deserialize;

use crate::proto::Command;

/// What a rule does when it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
}

/// One `[[rule]]` table of the config file, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub action: Action,
    /// Client addresses (CIDR or IP); absent: any client.
    #[serde(default)]
    pub clients: Vec<String>,
    /// Authenticated user names; absent: any user, or none.
    #[serde(default)]
    pub users: Vec<String>,
    /// "connect", "bind", "udp"; absent: every command.
    #[serde(default)]
    pub commands: Vec<String>,
    /// Destinations: CIDR, IP, domain ("example.com" exactly,
    /// ".example.com" with its subdomains) or "private"; absent: any.
    #[serde(default)]
    pub to: Vec<String>,
    /// Destination ports: "443" or "8000-8999"; absent: any.
    #[serde(default)]
    pub ports: Vec<String>,
    /// Log every request this rule decides (denials are always in the
    /// access log).
    #[serde(default)]
    pub log: bool,
    /// Allow rules: the outbound source addresses for what they allow (a
    /// pool, picked from as --egress-source-pick says), instead of
    /// --egress-source.
    #[serde(default)]
    pub source: Vec<String>,
}

/// A destination a rule names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Dest {
    Net(IpNet),
    Private,
    /// A domain name, lower case without the trailing dot; with
    /// `subdomains`, the name and every name below it.
    Domain {
        name: String,
        subdomains: bool,
    },
}

impl Dest {
    /// Parses a TARGET of `--allow`/`--deny` or an entry of a rule's `to`.
    pub(crate) fn parse(s: &str) -> Result<Dest, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("private") {
            return Ok(Dest::Private);
        }
        if let Some(net) = parse_net(s) {
            return Ok(Dest::Net(net));
        }
        let (name, subdomains) = match s.strip_prefix('.') {
            Some(rest) => (rest, true),
            None => (s, false),
        };
        let name = normalize_domain(name);
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
            return Err(format!(
                "{s:?} is not a CIDR, an IP address, a domain (\"example.com\", \".example.com\") or \"private\""
            ));
        }
        Ok(Dest::Domain { name, subdomains })
    }

    fn matches_domain(&self, domain: &str) -> bool {
        match self {
            Dest::Domain { name, subdomains } => {
                domain == name
                    || (*subdomains
                        && domain.len() > name.len()
                        && domain.ends_with(name.as_str())
                        && domain.as_bytes()[domain.len() - name.len() - 1] == b'.')
            }
            _ => false,
        }
    }

    fn matches_ip(&self, ip: IpAddr) -> bool {
        match self {
            Dest::Net(net) => net.contains(&ip),
            Dest::Private => special::is_private(ip),
            Dest::Domain { .. } => false,
        }
    }
}

/// A CIDR or a bare IP (a host route), with IPv4-mapped IPv6 forms turned
/// into IPv4 so that they match what [`Policy::check`] compares.
fn parse_net(s: &str) -> Option<IpNet> {
    let net = match s.parse::<IpNet>() {
        Ok(n) => n,
        Err(_) => IpNet::from(s.parse::<IpAddr>().ok()?),
    };
    Some(match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.network().to_ipv4_mapped() {
            Some(v4) => IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96).ok()?,
            None => net,
        },
        _ => net,
    })
    .map(|n| n.trunc())
}

fn normalize_domain(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn parse_port_range(s: &str) -> Result<RangeInclusive<u16>, String> {
    let bad = || format!("{s:?} is not a port (\"443\") or a range (\"8000-8999\")");
    let port = |p: &str| p.trim().parse::<u16>().map_err(|_| bad());
    match s.split_once('-') {
        Some((lo, hi)) => {
            let (lo, hi) = (port(lo)?, port(hi)?);
            if lo > hi {
                return Err(bad());
            }
            Ok(lo..=hi)
        }
        None => port(s).map(|p| p..=p),
    }
}

fn parse_command(s: &str) -> Result<Command, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "connect" => Ok(Command::Connect),
        "bind" => Ok(Command::Bind),
        "udp" | "udp-associate" => Ok(Command::UdpAssociate),
        _ => Err(format!("{s:?} is not a command: connect, bind or udp")),
    }
}

/// A validated rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// How the access log names it: `--deny#1`, `--allow#2`, `rule#3`
    /// (counted from 1 in each list).
    pub name: String,
    pub action: Action,
    clients: Vec<IpNet>,
    users: Vec<String>,
    commands: Vec<Command>,
    to: Vec<Dest>,
    ports: Vec<RangeInclusive<u16>>,
    pub log: bool,
    /// Outbound source addresses for what this rule allows; empty: the
    /// global --egress-source pool.
    pub source: Vec<IpAddr>,
}

impl Rule {
    /// A `--allow TARGET` or `--deny TARGET` flag.
    pub fn from_flag(action: Action, index: usize, target: &str) -> Result<Rule, String> {
        let flag = match action {
            Action::Allow => "--allow",
            Action::Deny => "--deny",
        };
        Ok(Rule {
            name: format!("{flag}#{}", index + 1),
            action,
            clients: Vec::new(),
            users: Vec::new(),
            commands: Vec::new(),
            to: vec![Dest::parse(target).map_err(|e| format!("{flag} {e}"))?],
            ports: Vec::new(),
            log: false,
            source: Vec::new(),
        })
    }

    /// A `[[rule]]` table; errors name the rule and the field.
    pub fn from_spec(index: usize, spec: &RuleSpec) -> Result<Rule, String> {
        let name = format!("rule#{}", index + 1);
        // Parses every entry of one field; an error names rule and field.
        fn each<T>(
            rule: &str,
            field: &str,
            items: &[String],
            parse: impl Fn(&str) -> Result<T, String>,
        ) -> Result<Vec<T>, String> {
            items
                .iter()
                .map(|item| parse(item.trim()))
                .collect::<Result<_, _>>()
                .map_err(|e| format!("{rule} ({field}): {e}"))
        }
        let clients = each(&name, "clients", &spec.clients, |c| {
            parse_net(c).ok_or_else(|| format!("{c:?} is not a CIDR or an IP address"))
        })?;
        let commands = each(&name, "commands", &spec.commands, parse_command)?;
        let to = each(&name, "to", &spec.to, Dest::parse)?;
        let ports = each(&name, "ports", &spec.ports, parse_port_range)?;
        let source = each(&name, "source", &spec.source, |a| {
            a.parse::<IpAddr>()
                .map(|ip| ip.to_canonical())
                .map_err(|_| format!("{a:?} is not an IP address"))
        })?;
        if !source.is_empty() && spec.action == Action::Deny {
            return Err(format!(
                "{name} (source): only an allow rule can choose a source"
            ));
        }
        Ok(Rule {
            name,
            action: spec.action,
            clients,
            users: spec.users.clone(),
            commands,
            to,
            ports,
            log: spec.log,
            source,
        })
    }

    /// `None` when the rule does not match; otherwise whether it matched
    /// the destination by address (which may open a private address).
    fn matches(&self, who: &Requester<'_>, domain: Option<&str>, dest: SocketAddr) -> Option<bool> {
        if !self.clients.is_empty() && !self.clients.iter().any(|n| n.contains(&who.client)) {
            return None;
        }
        if !self.users.is_empty() {
            let user = who.user?;
            if !self.users.iter().any(|u| u == user) {
                return None;
            }
        }
        if !self.commands.is_empty() && !self.commands.contains(&who.command) {
            return None;
        }
        if !self.ports.is_empty() && !self.ports.iter().any(|r| r.contains(&dest.port())) {
            return None;
        }
        if self.to.is_empty() {
            return Some(false);
        }
        if self.to.iter().any(|d| d.matches_ip(dest.ip())) {
            return Some(true);
        }
        let domain = domain?;
        self.to
            .iter()
            .any(|d| d.matches_domain(domain))
            .then_some(false)
    }
}

/// Who asks, for what.
#[derive(Debug, Clone, Copy)]
pub struct Requester<'a> {
    pub client: IpAddr,
    pub user: Option<&'a str>,
    pub command: Command,
}

/// Why a destination was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial<'a> {
    /// A deny rule matched.
    Rule(&'a str),
    /// The address is in the set `private` and no rule opened it by
    /// address.
    Private,
}

impl Denial<'_> {
    /// The access log's `rule=` value.
    pub fn name(&self) -> &str {
        match self {
            Denial::Rule(name) => name,
            Denial::Private => "private",
        }
    }

    /// Index into the metrics' denial counters.
    pub fn metrics_index(&self) -> usize {
        match self {
            Denial::Rule(_) => 0,
            Denial::Private => 1,
        }
    }
}

/// Labels of [`Denial::metrics_index`].
pub(crate) const DENIAL_REASONS: [&str; 2] = ["rule", "private"];

impl fmt::Display for Denial<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Denial::Rule(name) => write!(f, "denied by {name}"),
            Denial::Private => f.write_str(
                "denied: a private address (loopback, internal, link-local...); open it with --allow",
            ),
        }
    }
}

/// The rules of one configuration, in evaluation order.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    rules: Vec<Rule>,
}

impl Policy {
    /// Flags first (`--deny`, then `--allow`), then the file's rules.
    pub fn new(deny: &[String], allow: &[String], file: &[RuleSpec]) -> Result<Policy, String> {
        let mut rules = Vec::with_capacity(deny.len() + allow.len() + file.len());
        for (i, t) in deny.iter().enumerate() {
            rules.push(Rule::from_flag(Action::Deny, i, t)?);
        }
        for (i, t) in allow.iter().enumerate() {
            rules.push(Rule::from_flag(Action::Allow, i, t)?);
        }
        for (i, spec) in file.iter().enumerate() {
            rules.push(Rule::from_spec(i, spec)?);
        }
        Ok(Policy { rules })
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Whether any rule looks at the client's address: without one (and
    /// without users), a proxy listening beyond loopback is open to all.
    pub fn restricts_clients(&self) -> bool {
        self.rules.iter().any(|r| !r.clients.is_empty())
    }

    /// Decides one destination. `domain` is the name the client asked for,
    /// if it asked by name; `dest` is the address that will be used.
    pub fn check<'p>(
        &'p self,
        who: &Requester<'_>,
        domain: Option<&str>,
        dest: SocketAddr,
    ) -> Result<Option<&'p Rule>, Denial<'p>> {
        let dest = SocketAddr::new(dest.ip().to_canonical(), dest.port());
        // Borrowed unless the name needs lower-casing or has a final dot.
        let domain: Option<Cow<'_, str>> = domain.map(|d| {
            if d.ends_with('.') || d.bytes().any(|b| b.is_ascii_uppercase()) {
                Cow::Owned(normalize_domain(d))
            } else {
                Cow::Borrowed(d)
            }
        });
        let private = special::is_private(dest.ip());
        for rule in &self.rules {
            let Some(by_address) = rule.matches(who, domain.as_deref(), dest) else {
                continue;
            };
            if rule.log {
                tracing::info!(
                    target: "policy",
                    "{} {:?} client={} user={} cmd={} to={dest}",
                    rule.name,
                    rule.action,
                    who.client,
                    who.user.unwrap_or("-"),
                    who.command.as_str(),
                );
            }
            return match rule.action {
                Action::Deny => Err(Denial::Rule(&rule.name)),
                Action::Allow if private && !by_address => Err(Denial::Private),
                Action::Allow => Ok(Some(rule)),
            };
        }
        if private {
            Err(Denial::Private)
        } else {
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests;
