//! Names as pure functions: a node's host name made into a DNS label (its `given_name`), the
//! candidates tried to make it unique (`host`, `host-1`, `host-2`, ...), and the checks on names
//! an admin or a caller chooses (user names, renamed nodes, ACL tags).

use super::RegistryError;

/// The longest DNS label (RFC 1035).
pub const DNS_LABEL_BYTES_MAX: usize = 63;
/// The label given to a node whose host name has nothing usable in it.
pub const FALLBACK_LABEL: &str = "node";
/// The longest user name, e-mail address, host name or tag accepted.
pub const NAME_BYTES_MAX: usize = 255;
/// Suffixes tried (`-1` to `-N`) before a given name counts as exhausted.
pub const SUFFIX_MAX: u32 = 4096;

/// `hostname` made into a DNS label: lower case, runs of anything but `[a-z0-9]` become one
/// `-`, no leading or trailing `-`, at most 63 bytes; `node` if nothing is left.
pub fn dns_label(hostname: &str) -> String {
    let mut label = String::new();
    for character in hostname.chars().flat_map(char::to_lowercase) {
        if character.is_ascii_lowercase() || character.is_ascii_digit() {
            label.push(character);
        } else if !label.is_empty() && !label.ends_with('-') {
            label.push('-');
        }
        if label.len() >= DNS_LABEL_BYTES_MAX {
            break;
        }
    }
    label.truncate(DNS_LABEL_BYTES_MAX);
    let label = label.trim_end_matches('-').to_string();
    if label.is_empty() { FALLBACK_LABEL.to_string() } else { label }
}

/// The `attempt`-th candidate for a unique given name: `base` itself, then `base-1`, ...,
/// shortening `base` so the whole stays a valid label.
pub fn candidate(base: &str, attempt: u32) -> String {
    assert!(is_dns_label(base), "candidates start from a valid label: {base:?}");
    if attempt == 0 {
        return base.to_string();
    }
    let suffix = format!("-{attempt}");
    let keep = base.len().min(DNS_LABEL_BYTES_MAX - suffix.len());
    let name = format!("{}{suffix}", base[..keep].trim_end_matches('-'));
    assert!(is_dns_label(&name), "candidate {name:?} is a label");
    name
}

/// Whether `name` is a valid given name: 1 to 63 bytes of `[a-z0-9-]`, no `-` at either end.
pub fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= DNS_LABEL_BYTES_MAX
        && name
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// Checks a free-form name (user name, e-mail, host name): not empty (unless `may_be_empty`),
/// at most `NAME_BYTES_MAX` bytes, no control characters.
pub fn check_text(what: &'static str, text: &str, may_be_empty: bool) -> Result<(), RegistryError> {
    let reason = if text.is_empty() && !may_be_empty {
        Some("is empty")
    } else if text.len() > NAME_BYTES_MAX {
        Some("is longer than 255 bytes")
    } else if text.chars().any(char::is_control) {
        Some("holds a control character")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(RegistryError::InvalidName { what, name: shorten(text), reason }),
        None => Ok(()),
    }
}

/// Checks an ACL tag: `tag:` and a non-empty name of `[A-Za-z0-9_-]`.
pub fn check_tag(tag: &str) -> Result<(), RegistryError> {
    let valid = tag.len() <= NAME_BYTES_MAX
        && tag.strip_prefix("tag:").is_some_and(|name| {
            !name.is_empty()
                && name.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"-_".contains(&byte))
        });
    if valid { Ok(()) } else { Err(RegistryError::InvalidTag { tag: shorten(tag) }) }
}

/// At most 64 bytes of `text` (cut at a character boundary) for an error message.
pub fn shorten(text: &str) -> String {
    let mut end = text.len().min(64);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(hostname: &str, expected: &str) {
        let label = dns_label(hostname);
        assert_eq!(label, expected, "{hostname:?}");
        assert!(is_dns_label(&label));
    }

    #[test]
    fn host_names_become_labels() {
        check("laptop", "laptop");
        check("Odin's MacBook Pro", "odin-s-macbook-pro");
        check("--web__01--", "web-01");
        check("", "node");
        check("???", "node");
        check("ÄÖÜ-box", "box");
        check(&"a".repeat(100), &"a".repeat(63));
        check(&format!("{}-b", "a".repeat(62)), &"a".repeat(62));
    }

    #[test]
    fn candidates_stay_labels() {
        assert_eq!(candidate("host", 0), "host");
        assert_eq!(candidate("host", 1), "host-1");
        assert_eq!(candidate("host", 4096), "host-4096");
        let long = "a".repeat(63);
        assert_eq!(candidate(&long, 12), format!("{}-12", "a".repeat(60)));
        let dashed = format!("{}-{}", "a".repeat(59), "b".repeat(3));
        assert_eq!(candidate(&dashed, 12), format!("{}-12", "a".repeat(59)));
    }

    #[test]
    fn names_and_tags_are_checked() {
        assert!(check_text("user name", "odin", false).is_ok());
        assert!(check_text("e-mail", "", true).is_ok());
        let empty = check_text("user name", "", false).expect_err("empty");
        assert_eq!(empty.to_string(), "invalid user name \"\": is empty");
        assert!(check_text("user name", "a\nb", false).is_err());
        assert!(check_text("user name", &"x".repeat(256), false).is_err());
        assert!(check_tag("tag:server").is_ok());
        for bad in ["server", "tag:", "tag:a b", "tag:ü"] {
            let error = check_tag(bad).expect_err(bad);
            assert_eq!(error.to_string(), format!("invalid ACL tag {bad:?} (want tag:<name>)"));
        }
        assert!(!is_dns_label("-a") && !is_dns_label("A") && is_dns_label("a-1"));
    }
}
