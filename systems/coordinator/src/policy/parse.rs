//! A policy document to a validated `Policy`.
//!
//! Validation is Tailscale's: unknown tags and groups are errors, actions other than `accept`
//! are errors, `autogroup:self` destinations need sources it can restrict (users, groups,
//! `autogroup:member`, `*`). Where Tailscale's control plane has a message for a rejection
//! (the golden `acl-err*` cases), our message contains it verbatim.

use std::collections::BTreeMap;

use serde_json::Value;
use wireguard::IpNet;

use super::{
    ACLS_MAX, Acl, Alias, AutoApprovers, DEFINITIONS_MAX, Destination, IpRange, LIST_ENTRIES_MAX,
    Policy, PolicyError, PolicyErrorKind,
};
use crate::hujson::Document;
use crate::types::PortRange;

/// Where a value sits: its JSON pointer (for the line) and its field path (for people).
struct At<'a> {
    document: &'a Document,
    pointer: String,
    field: String,
}

impl<'a> At<'a> {
    fn child(&self, pointer_part: &str, field_part: &str) -> At<'a> {
        let escaped = pointer_part.replace('~', "~0").replace('/', "~1");
        At {
            document: self.document,
            pointer: format!("{}/{escaped}", self.pointer),
            field: format!("{}{field_part}", self.field),
        }
    }

    fn member(&self, name: &str) -> At<'a> {
        let dot = if self.field.is_empty() { "" } else { "." };
        self.child(name, &format!("{dot}{name}"))
    }

    fn index(&self, index: usize) -> At<'a> {
        self.child(&index.to_string(), &format!("[{index}]"))
    }

    fn error(&self, kind: PolicyErrorKind, message: String) -> PolicyError {
        let field = if self.field.is_empty() { "(top level)".into() } else { self.field.clone() };
        PolicyError { kind, line: self.document.line_of(&self.pointer), field, message }
    }

    fn shape(&self, expected: &str) -> PolicyError {
        self.error(PolicyErrorKind::Shape, format!("expected {expected}"))
    }
}

fn object<'v>(
    value: &'v Value,
    at: &At<'_>,
    max: usize,
) -> Result<&'v serde_json::Map<String, Value>, PolicyError> {
    let map = value.as_object().ok_or_else(|| at.shape("an object"))?;
    if map.len() > max {
        return Err(at.error(PolicyErrorKind::TooLarge, format!("more than {max} entries")));
    }
    Ok(map)
}

fn array<'v>(value: &'v Value, at: &At<'_>, max: usize) -> Result<&'v [Value], PolicyError> {
    let items = value.as_array().ok_or_else(|| at.shape("an array"))?;
    if items.len() > max {
        return Err(at.error(PolicyErrorKind::TooLarge, format!("more than {max} entries")));
    }
    Ok(items)
}

/// The strings of an array, each with where it sits.
fn string_items<'a>(value: &Value, at: &At<'a>) -> Result<Vec<(String, At<'a>)>, PolicyError> {
    let items = array(value, at, LIST_ENTRIES_MAX)?;
    let mut out = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let item_at = at.index(index);
        let text = item.as_str().ok_or_else(|| item_at.shape("a string"))?;
        out.push((text.to_string(), item_at));
    }
    assert_eq!(out.len(), items.len());
    Ok(out)
}

/// Parses and validates a whole policy.
pub(super) fn policy(document: &Document) -> Result<Policy, PolicyError> {
    let root = At { document, pointer: String::new(), field: String::new() };
    let top = object(&document.value, &root, 64)?;
    let mut policy = Policy::default();
    if let Some(value) = top.get("groups") {
        policy.groups = groups(value, &root.member("groups"))?;
    }
    if let Some(value) = top.get("hosts") {
        policy.hosts = hosts(value, &root.member("hosts"))?;
    }
    if let Some(value) = top.get("tagOwners") {
        let at = root.member("tagOwners");
        for name in object(value, &at, DEFINITIONS_MAX)?.keys() {
            policy.tag_owners.insert(name.clone(), Vec::new());
        }
        policy.tag_owners = tag_owners(value, &at, &policy)?;
    }
    if let Some(value) = top.get("acls") {
        let at = root.member("acls");
        let items = array(value, &at, ACLS_MAX)?;
        for (index, item) in items.iter().enumerate() {
            let acl = acl(item, &at.index(index), &policy)?;
            policy.acls.push(acl);
        }
    }
    if let Some(value) = top.get("autoApprovers") {
        policy.auto_approvers = auto_approvers(value, &root.member("autoApprovers"), &policy)?;
    }
    Ok(policy)
}

fn groups(value: &Value, at: &At<'_>) -> Result<BTreeMap<String, Vec<String>>, PolicyError> {
    let mut groups = BTreeMap::new();
    for (name, members) in object(value, at, DEFINITIONS_MAX)? {
        let group_at = at.member(name);
        if !name.starts_with("group:") {
            let why = format!("group name {name:?} must start with \"group:\"");
            return Err(group_at.error(PolicyErrorKind::Shape, why));
        }
        let mut list = Vec::new();
        for (member, member_at) in string_items(members, &group_at)? {
            if !member.contains('@') {
                let why = format!(
                    "group member {member:?} is not a user (nested groups are not allowed)"
                );
                return Err(member_at.error(PolicyErrorKind::UnknownAlias, why));
            }
            list.push(member);
        }
        groups.insert(name.clone(), list);
    }
    Ok(groups)
}

fn hosts(value: &Value, at: &At<'_>) -> Result<BTreeMap<String, IpRange>, PolicyError> {
    let mut hosts = BTreeMap::new();
    for (name, address) in object(value, at, DEFINITIONS_MAX)? {
        let host_at = at.member(name);
        let text = address.as_str().ok_or_else(|| host_at.shape("a string"))?;
        let net: IpNet = text.parse().map_err(|_| {
            host_at.error(
                PolicyErrorKind::UnknownAlias,
                format!("host {name:?}: not an IP or CIDR: {text:?}"),
            )
        })?;
        hosts.insert(name.clone(), IpRange::prefix(net));
    }
    Ok(hosts)
}

fn tag_owners(
    value: &Value,
    at: &At<'_>,
    policy: &Policy,
) -> Result<BTreeMap<String, Vec<Alias>>, PolicyError> {
    let mut owners = BTreeMap::new();
    for (name, list) in object(value, at, DEFINITIONS_MAX)? {
        let tag_at = at.member(name);
        if !name.starts_with("tag:") {
            let why = format!("tag name {name:?} must start with \"tag:\"");
            return Err(tag_at.error(PolicyErrorKind::Shape, why));
        }
        let mut aliases = Vec::new();
        for (text, item_at) in string_items(list, &tag_at)? {
            let alias = alias(&text, policy).map_err(|(kind, why)| item_at.error(kind, why))?;
            aliases.push(alias);
        }
        owners.insert(name.clone(), aliases);
    }
    Ok(owners)
}

/// One alias; the error is the kind and Tailscale's words for why.
pub(super) fn alias(text: &str, policy: &Policy) -> Result<Alias, (PolicyErrorKind, String)> {
    if text == "*" {
        return Ok(Alias::Wildcard);
    }
    if let Some(name) = text.strip_prefix("autogroup:") {
        return match name {
            "member" => Ok(Alias::Member),
            "tagged" => Ok(Alias::Tagged),
            "self" => Ok(Alias::SelfDevices),
            "internet" => Ok(Alias::Internet),
            _ => Err((PolicyErrorKind::UnknownAlias, format!("autogroup not supported: {text:?}"))),
        };
    }
    if text.starts_with("group:") {
        return match policy.groups.contains_key(text) {
            true => Ok(Alias::Group(text.to_string())),
            false => Err((PolicyErrorKind::UnknownGroup, format!("group not found: {text:?}"))),
        };
    }
    if text.starts_with("tag:") {
        return match policy.tag_owners.contains_key(text) {
            true => Ok(Alias::Tag(text.to_string())),
            false => Err((PolicyErrorKind::UnknownTag, format!("tag not found: {text:?}"))),
        };
    }
    if text.contains('@') {
        return Ok(Alias::User(text.to_string()));
    }
    if policy.hosts.contains_key(text) {
        return Ok(Alias::Host(text.to_string()));
    }
    match text.parse::<IpNet>() {
        Ok(net) => Ok(Alias::Prefix(IpRange::prefix(net))),
        Err(_) => Err((PolicyErrorKind::UnknownAlias, format!("host not found: {text:?}"))),
    }
}

/// A port list: `*`, `22`, `80-443`, `22,80,443`.
pub(super) fn ports(text: &str) -> Result<Vec<PortRange>, String> {
    if text == "*" {
        return Ok(vec![PortRange::ANY]);
    }
    let mut ranges = Vec::new();
    for part in text.split(',') {
        if ranges.len() >= LIST_ENTRIES_MAX {
            return Err(format!("port range {text:?}: more than {LIST_ENTRIES_MAX} ranges"));
        }
        let (first, last) = part.split_once('-').unwrap_or((part, part));
        let first: u16 =
            first.parse().map_err(|_| format!("port range {part:?}: invalid first integer"))?;
        let last: u16 =
            last.parse().map_err(|_| format!("port range {part:?}: invalid last integer"))?;
        if first > last {
            return Err(format!("port range {part:?}: first port is greater than last"));
        }
        ranges.push(PortRange { first, last });
    }
    assert!(!ranges.is_empty(), "split yields at least one part");
    Ok(ranges)
}

/// `alias:ports` (`[v6]:ports` for a bracketed IPv6 address).
fn destination(text: &str, policy: &Policy) -> Result<Destination, (PolicyErrorKind, String)> {
    let split = match text.strip_prefix('[') {
        Some(rest) => rest.split_once("]:"),
        None => text.rsplit_once(':'),
    };
    let Some((alias_text, ports_text)) = split else {
        return Err((PolicyErrorKind::BadPorts, format!("dst={text:?}: missing port")));
    };
    let ports = ports(ports_text)
        .map_err(|why| (PolicyErrorKind::BadPorts, format!("dst={text:?}: {why}")))?;
    let alias = alias(alias_text, policy)
        .map_err(|(kind, why)| (kind, format!("dst={alias_text:?}: {why}")))?;
    Ok(Destination { alias, ports })
}

/// A protocol name or IANA number; empty is the default set.
pub(super) fn protocol(text: &str) -> Result<Vec<u8>, String> {
    let number = match text {
        "" => return Ok(Vec::new()),
        "icmp" => 1,
        "igmp" => 2,
        "tcp" => 6,
        "egp" => 8,
        "igp" => 9,
        "udp" => 17,
        "gre" => 47,
        "esp" => 50,
        "ah" => 51,
        "ipv6-icmp" | "icmpv6" => 58,
        "sctp" => 132,
        _ => text.parse::<u8>().map_err(|_| format!("proto={text:?} is not supported"))?,
    };
    Ok(vec![number])
}

fn acl(value: &Value, at: &At<'_>, policy: &Policy) -> Result<Acl, PolicyError> {
    let entry = object(value, at, 64)?;
    let action = entry.get("action").and_then(Value::as_str).unwrap_or("");
    if action != "accept" {
        let why = format!("action={action:?} is not supported");
        return Err(at.member("action").error(PolicyErrorKind::UnsupportedAction, why));
    }
    let mut acl = Acl {
        sources: Vec::new(),
        destinations: Vec::new(),
        protocols: Vec::new(),
        line: at.document.line_of(&at.pointer),
    };
    let src_at = at.member("src");
    let src = entry.get("src").ok_or_else(|| src_at.shape("a list of sources"))?;
    for (text, item_at) in string_items(src, &src_at)? {
        let alias = alias(&text, policy)
            .map_err(|(kind, why)| item_at.error(kind, format!("src={why}")))?;
        if matches!(alias, Alias::SelfDevices | Alias::Internet) {
            let why = format!("src={text:?}: can only be used as a destination");
            return Err(item_at.error(PolicyErrorKind::MisplacedAlias, why));
        }
        acl.sources.push(alias);
    }
    let dst_at = at.member("dst");
    let dst = entry.get("dst").ok_or_else(|| dst_at.shape("a list of destinations"))?;
    for (text, item_at) in string_items(dst, &dst_at)? {
        let destination =
            destination(&text, policy).map_err(|(kind, why)| item_at.error(kind, why))?;
        acl.destinations.push(destination);
    }
    if let Some(proto) = entry.get("proto") {
        let proto_at = at.member("proto");
        let text = match proto {
            Value::String(text) => text.clone(),
            Value::Number(number) => number.to_string(),
            _ => return Err(proto_at.shape("a protocol name or number")),
        };
        acl.protocols =
            protocol(&text).map_err(|why| proto_at.error(PolicyErrorKind::BadProtocol, why))?;
    }
    check_self_sources(&acl, &src_at)?;
    Ok(acl)
}

/// `autogroup:self` restricts sources to one user's devices, so sources must be user-shaped.
fn check_self_sources(acl: &Acl, src_at: &At<'_>) -> Result<(), PolicyError> {
    let has_self = acl.destinations.iter().any(|dst| dst.alias == Alias::SelfDevices);
    let user_shaped = |alias: &Alias| {
        matches!(alias, Alias::User(_) | Alias::Group(_) | Alias::Member | Alias::Wildcard)
    };
    if has_self && !acl.sources.iter().all(user_shaped) {
        let why = "autogroup:self can only be used with users, groups, or supported autogroups";
        return Err(src_at.error(PolicyErrorKind::AutogroupSelfSource, why.into()));
    }
    Ok(())
}

fn auto_approvers(
    value: &Value,
    at: &At<'_>,
    policy: &Policy,
) -> Result<AutoApprovers, PolicyError> {
    let top = object(value, at, 8)?;
    let mut approvers = AutoApprovers::default();
    let aliases = |list: &Value, list_at: &At<'_>| -> Result<Vec<Alias>, PolicyError> {
        let mut out = Vec::new();
        for (text, item_at) in string_items(list, list_at)? {
            out.push(alias(&text, policy).map_err(|(kind, why)| item_at.error(kind, why))?);
        }
        Ok(out)
    };
    if let Some(routes) = top.get("routes") {
        let routes_at = at.member("routes");
        for (prefix, list) in object(routes, &routes_at, DEFINITIONS_MAX)? {
            let route_at = routes_at.member(prefix);
            let net: IpNet = prefix.parse().map_err(|_| {
                route_at.error(PolicyErrorKind::Shape, format!("route {prefix:?} is not a CIDR"))
            })?;
            approvers.routes.push((net, aliases(list, &route_at)?));
        }
    }
    if let Some(list) = top.get("exitNode") {
        approvers.exit_node = aliases(list, &at.member("exitNode"))?;
    }
    Ok(approvers)
}

#[cfg(test)]
mod tests {
    use super::super::{Policy, PolicyErrorKind};
    use super::*;

    const HEAD: &str = r#"{
  // Who is who.
  "groups": {"group:admins": ["odin@example.com"]},
  "tagOwners": {"tag:server": ["group:admins"]},
  "hosts": {"db": "10.0.0.5"},
  "acls": [
"#;

    /// Parses HEAD + `acls` + the closing; checks the error's kind, line, field and message.
    #[track_caller]
    fn check(acls: &str, expected: Option<(PolicyErrorKind, usize, &str, &str)>) {
        let text = format!("{HEAD}{acls}\n  ],\n}}");
        match (Policy::parse(&text), expected) {
            (Ok(_), None) => {}
            (Err(error), Some((kind, line, field, message))) => {
                assert_eq!((error.kind, error.line, error.field.as_str()), (kind, line, field));
                assert!(error.message.contains(message), "{error}");
                let shown = error.to_string();
                assert!(
                    shown.contains(&format!("line {line}")) && shown.contains(field),
                    "{shown}"
                );
            }
            (got, expected) => panic!("got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn valid_entries() {
        check(r#"{"action": "accept", "src": ["*"], "dst": ["*:*"]},"#, None);
        check(r#"{"action": "accept", "src": ["group:admins"], "dst": ["db:22,80-90"]}"#, None);
        check(
            r#"{"action": "accept", "src": ["odin@"], "dst": ["[fd7a::1]:22"], "proto": 17}"#,
            None,
        );
        check(
            r#"{"action": "accept", "src": ["tag:server"], "dst": ["autogroup:internet:*"]}"#,
            None,
        );
    }

    #[test]
    fn errors_name_line_field_and_why() {
        use PolicyErrorKind::*;
        let line = 7;
        check(
            r#"{"action": "deny", "src": ["*"], "dst": ["*:*"]}"#,
            Some((UnsupportedAction, line, "acls[0].action", r#"action="deny" is not supported"#)),
        );
        check(
            "{\"action\": \"accept\",\n \"src\": [\"tag:nope\"], \"dst\": [\"*:*\"]}",
            Some((UnknownTag, line + 1, "acls[0].src[0]", r#"src=tag not found: "tag:nope""#)),
        );
        check(
            r#"{"action": "accept", "src": ["*"], "dst": ["tag:nope:22"]}"#,
            Some((UnknownTag, line, "acls[0].dst[0]", r#"dst="tag:nope": tag not found"#)),
        );
        check(
            r#"{"action": "accept", "src": ["*"], "dst": ["autogroup:self"]}"#,
            Some((BadPorts, line, "acls[0].dst[0]", r#"port range "self": invalid first"#)),
        );
        check(
            r#"{"action": "accept", "src": ["*"], "dst": ["db:9-x"]}"#,
            Some((BadPorts, line, "acls[0].dst[0]", "invalid last integer")),
        );
        check(
            r#"{"action": "accept", "src": ["tag:server"], "dst": ["autogroup:self:*"]}"#,
            Some((AutogroupSelfSource, line, "acls[0].src", "autogroup:self can only be used")),
        );
        check(
            r#"{"action": "accept", "src": ["group:nope"], "dst": ["*:*"]}"#,
            Some((UnknownGroup, line, "acls[0].src[0]", "group not found")),
        );
        check(
            r#"{"action": "accept", "src": ["nowhere"], "dst": ["*:*"]}"#,
            Some((UnknownAlias, line, "acls[0].src[0]", "host not found")),
        );
        check(
            r#"{"action": "accept", "src": ["*"], "dst": ["*:*"], "proto": "bogus"}"#,
            Some((BadProtocol, line, "acls[0].proto", "proto=\"bogus\"")),
        );
        check(
            r#"{"action": "accept", "src": ["autogroup:self"], "dst": ["*:*"]}"#,
            Some((MisplacedAlias, line, "acls[0].src[0]", "only be used as a destination")),
        );
        check(
            r#"{"action": "accept", "src": "*", "dst": ["*:*"]}"#,
            Some((Shape, line, "acls[0].src", "an array")),
        );
    }

    #[test]
    fn syntax_errors_carry_the_position() {
        let error = Policy::parse("{\n  \"acls\": [,]\n}").expect_err("not JSON");
        assert_eq!((error.kind, error.line), (PolicyErrorKind::Syntax, 2));
        assert!(error.to_string().contains("line 2, column 12"), "{error}");
    }

    #[test]
    fn aliases_and_ports() {
        let policy = Policy::parse(&format!("{HEAD}  ]\n}}")).expect("valid");
        assert_eq!(alias("*", &policy), Ok(Alias::Wildcard));
        assert_eq!(alias("autogroup:member", &policy), Ok(Alias::Member));
        assert_eq!(alias("odin@", &policy), Ok(Alias::User("odin@".into())));
        assert_eq!(alias("db", &policy), Ok(Alias::Host("db".into())));
        let prefix = IpRange::parse("10.1.0.0/16").expect("a prefix");
        assert_eq!(alias("10.1.0.0/16", &policy), Ok(Alias::Prefix(prefix)));
        assert!(alias("autogroup:nope", &policy).is_err());
        assert_eq!(ports("*"), Ok(vec![PortRange::ANY]));
        let expected = vec![PortRange { first: 22, last: 22 }, PortRange { first: 80, last: 443 }];
        assert_eq!(ports("22,80-443"), Ok(expected));
        assert!(ports("443-80").is_err());
        assert!(ports("").is_err());
        assert!(ports("70000").is_err());
        assert_eq!(protocol("tcp"), Ok(vec![6]));
        assert_eq!(protocol("58"), Ok(vec![58]));
        assert!(protocol("256").is_err());
    }
}
