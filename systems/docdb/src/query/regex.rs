//! `$regex` patterns: MongoDB's regular expression values compiled once with the `regex` crate.
//!
//! Options `i`, `m`, `s` and `x` map to the same flags; `u` is accepted and implied (patterns are
//! always Unicode-aware here). The `regex` crate has no backreferences or look-around, so a
//! pattern using them is a `BadValue` at parse time rather than a silent mismatch.

use bson::Bson;

use crate::query::error::QueryError;

/// A compiled pattern with the source it came from (a regex value equals only the same source).
#[derive(Clone, Debug)]
pub(crate) struct Pattern {
    source: String,
    options: String,
    compiled: regex::Regex,
}

/// Longest compiled program accepted, so a hostile pattern cannot use unbounded memory.
const PATTERN_SIZE_BYTES_MAX: usize = 1 << 20;

impl Pattern {
    /// Compiles `pattern` with MongoDB's option letters.
    pub(crate) fn new(pattern: &str, options: &str, path: &str) -> Result<Pattern, QueryError> {
        let mut builder = regex::RegexBuilder::new(pattern);
        builder.size_limit(PATTERN_SIZE_BYTES_MAX);
        for option in options.chars() {
            match option {
                'i' => builder.case_insensitive(true),
                'm' => builder.multi_line(true),
                's' => builder.dot_matches_new_line(true),
                'x' => builder.ignore_whitespace(true),
                'u' | 'l' => &mut builder,
                other => {
                    let message = format!("invalid flag in regex options: {other}");
                    return Err(QueryError::bad_value("$regex", path, message));
                }
            };
        }
        let compiled = builder
            .build()
            .map_err(|error| QueryError::bad_value("$regex", path, error.to_string()))?;
        let mut sorted: Vec<char> = options.chars().collect();
        sorted.sort_unstable();
        Ok(Pattern { source: pattern.to_owned(), options: sorted.into_iter().collect(), compiled })
    }

    /// Compiles a BSON regular expression value.
    pub(crate) fn from_bson(regex: &bson::Regex, path: &str) -> Result<Pattern, QueryError> {
        Pattern::new(regex.pattern.as_str(), regex.options.as_str(), path)
    }

    /// Compiles `{$regex: ..., $options: ...}`; either may be absent.
    pub(crate) fn from_operators(
        regex: Option<&Bson>,
        options: Option<&Bson>,
        path: &str,
    ) -> Result<Pattern, QueryError> {
        let options = match options {
            None => None,
            Some(Bson::String(options)) => Some(options.as_str()),
            Some(_) => return Err(QueryError::bad_value("$options", path, "needs a string")),
        };
        match regex {
            None => Err(QueryError::bad_value("$options", path, "needs a $regex")),
            Some(Bson::String(pattern)) => Pattern::new(pattern, options.unwrap_or(""), path),
            Some(Bson::RegularExpression(value)) => {
                let own = value.options.as_str();
                if !own.is_empty() && options.is_some() {
                    let message = "options set in both $regex and $options";
                    return Err(QueryError::bad_value("$regex", path, message));
                }
                let options = if own.is_empty() { options.unwrap_or("") } else { own };
                Pattern::new(value.pattern.as_str(), options, path)
            }
            Some(_) => Err(QueryError::bad_value("$regex", path, "needs a string or a regex")),
        }
    }

    /// Whether a stored value matches: a string the pattern finds, or the same regex value.
    pub(crate) fn matches_value(&self, value: &Bson) -> bool {
        match value {
            Bson::String(text) | Bson::Symbol(text) => self.compiled.is_match(text),
            Bson::RegularExpression(regex) => {
                regex.pattern.as_str() == self.source && regex.options.as_str() == self.options
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(pattern: &str, options: &str, text: &str, expected: bool) {
        let compiled = Pattern::new(pattern, options, "a").expect("compiles");
        assert_eq!(compiled.matches_value(&Bson::String(text.into())), expected);
    }

    #[test]
    fn options_map_to_flags() {
        check("^a", "", "apple", true);
        check("^a", "", "Apple", false);
        check("^a", "i", "Apple", true);
        check("^b", "m", "a\nb", true);
        check("a b", "x", "ab", true);
        assert!(Pattern::new("(", "", "a").is_err());
        assert!(Pattern::new("a", "z", "a").is_err());
    }
}
