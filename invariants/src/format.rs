//! Shared formatting for counterexamples, so every checker shows times, values and long lists
//! the same way and messages stay bounded.

/// How many items a counterexample lists before it summarises the rest as "... N more".
pub(crate) const LISTED_MAX: usize = 20;

/// Nanoseconds as milliseconds with three decimals: `12500000` is `"12.500ms"`.
pub(crate) fn ms(nanos: u64) -> String {
    format!("{}.{:03}ms", nanos / 1_000_000, (nanos % 1_000_000) / 1_000)
}

/// A register value: the number, or `absent` for a missing key.
pub(crate) fn value(value: Option<u64>) -> String {
    match value {
        Some(value) => value.to_string(),
        None => "absent".to_string(),
    }
}

/// `count` and `noun`, plural unless `count` is one: `"1 key"`, `"3 keys"`.
pub(crate) fn counted(count: usize, noun: &str) -> String {
    if count == 1 { format!("1 {noun}") } else { format!("{count} {noun}s") }
}

/// Appends `lines` indented by two spaces, at most [`LISTED_MAX`] of them, then "... N more".
pub(crate) fn push_capped(out: &mut String, lines: impl ExactSizeIterator<Item = String>) {
    let count = lines.len();
    for line in lines.take(LISTED_MAX) {
        out.push_str("\n  ");
        out.push_str(&line);
    }
    if count > LISTED_MAX {
        out.push_str(&format!("\n  ... {} more", count - LISTED_MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_times_values_and_caps_lists() {
        assert_eq!(ms(0), "0.000ms");
        assert_eq!(ms(12_500_000), "12.500ms");
        assert_eq!(ms(1_234_567_891), "1234.567ms");
        assert_eq!(value(Some(7)), "7");
        assert_eq!(value(None), "absent");
        assert_eq!(counted(1, "key"), "1 key");
        assert_eq!(counted(0, "key"), "0 keys");
        let mut out = String::from("head");
        push_capped(&mut out, (0..LISTED_MAX + 3).map(|index| index.to_string()));
        assert_eq!(out.lines().count(), 1 + LISTED_MAX + 1);
        assert!(out.ends_with("\n  ... 3 more"), "{out}");
    }
}
