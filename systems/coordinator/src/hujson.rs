//! HuJSON ("human JSON", Tailscale's policy syntax): JSON plus `//` and `/* */` comments and
//! trailing commas in arrays and objects.
//!
//! We parse it ourselves (rather than stripping comments and handing the rest to `serde_json`)
//! so that every error names the line and column it happened at, and so that the policy layer
//! can ask on which line a value started (`Document::line_of`), to name it in its own errors.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Map, Number, Value};

/// The largest document we read, in bytes (a policy far beyond any real tailnet's).
pub const DOCUMENT_BYTES_MAX: usize = 16 * 1024 * 1024;
/// How deeply arrays and objects may nest.
pub const NESTING_MAX: usize = 64;

/// Why a text is not HuJSON, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HujsonError {
    /// The line (from 1).
    pub line: usize,
    /// The column (from 1, in characters).
    pub column: usize,
    /// What was wrong.
    pub message: String,
}

impl fmt::Display for HujsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}: {}", self.line, self.column, self.message)
    }
}

impl std::error::Error for HujsonError {}

/// A parsed document: its value and the line each value started on, by JSON pointer
/// (`/acls/0/src/1`).
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    /// The value.
    pub value: Value,
    lines: BTreeMap<String, usize>,
}

impl Document {
    /// A document for a value parsed elsewhere: every line is unknown (1).
    pub fn without_lines(value: Value) -> Document {
        Document { value, lines: BTreeMap::new() }
    }

    /// The line (from 1) the value at `pointer` started on; 1 if unknown.
    pub fn line_of(&self, pointer: &str) -> usize {
        self.lines.get(pointer).copied().unwrap_or(1)
    }
}

/// Parses HuJSON into a `serde_json::Value`.
pub fn parse(text: &str) -> Result<Value, HujsonError> {
    parse_document(text).map(|document| document.value)
}

/// Parses HuJSON and keeps where each value started.
pub fn parse_document(text: &str) -> Result<Document, HujsonError> {
    let line_starts = std::iter::once(0)
        .chain(text.bytes().enumerate().filter(|&(_, byte)| byte == b'\n').map(|(at, _)| at + 1))
        .collect();
    let mut parser =
        Parser { bytes: text.as_bytes(), text, at: 0, lines: BTreeMap::new(), line_starts };
    if text.len() > DOCUMENT_BYTES_MAX {
        return Err(parser.error(format!("document larger than {DOCUMENT_BYTES_MAX} bytes")));
    }
    parser.skip_blank()?;
    let mut pointer = String::new();
    let value = parser.value(&mut pointer, 0)?;
    parser.skip_blank()?;
    if parser.at != parser.bytes.len() {
        return Err(parser.error("unexpected text after the value".into()));
    }
    assert!(pointer.is_empty(), "the pointer must unwind to the root");
    Ok(Document { value, lines: parser.lines })
}

struct Parser<'a> {
    bytes: &'a [u8],
    text: &'a str,
    at: usize,
    lines: BTreeMap<String, usize>,
    /// The byte offset each line starts at.
    line_starts: Vec<usize>,
}

impl Parser<'_> {
    fn line(&self) -> usize {
        let line = self.line_starts.partition_point(|&start| start <= self.at);
        debug_assert!(line >= 1);
        line
    }

    fn position(&self) -> (usize, usize) {
        let line = self.line();
        let start = self.line_starts[line - 1];
        let column = self.text[start..self.at.min(self.text.len())].chars().count() + 1;
        (line, column)
    }

    fn error(&self, message: String) -> HujsonError {
        let (line, column) = self.position();
        HujsonError { line, column, message }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    /// Skips white space and comments.
    fn skip_blank(&mut self) -> Result<(), HujsonError> {
        loop {
            match (self.peek(), self.bytes.get(self.at + 1).copied()) {
                (Some(b' ' | b'\t' | b'\n' | b'\r'), _) => self.at += 1,
                (Some(b'/'), Some(b'/')) => {
                    while self.peek().is_some_and(|byte| byte != b'\n') {
                        self.at += 1;
                    }
                }
                (Some(b'/'), Some(b'*')) => {
                    let start = self.at;
                    match self.text[self.at + 2..].find("*/") {
                        Some(offset) => self.at += 2 + offset + 2,
                        None => return Err(self.error("unterminated /* comment".into())),
                    }
                    debug_assert!(self.at > start);
                }
                _ => return Ok(()),
            }
        }
    }

    fn value(&mut self, pointer: &mut String, depth: usize) -> Result<Value, HujsonError> {
        let line = self.line();
        self.lines.insert(pointer.clone(), line);
        match self.peek() {
            Some(b'{') => self.object(pointer, depth + 1),
            Some(b'[') => self.array(pointer, depth + 1),
            Some(b'"') => self.string().map(Value::String),
            Some(b't') => self.literal("true", Value::Bool(true)),
            Some(b'f') => self.literal("false", Value::Bool(false)),
            Some(b'n') => self.literal("null", Value::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.error("expected a value".into())),
            None => Err(self.error("unexpected end of input, expected a value".into())),
        }
    }

    fn literal(&mut self, word: &str, value: Value) -> Result<Value, HujsonError> {
        if self.text[self.at..].starts_with(word) {
            self.at += word.len();
            Ok(value)
        } else {
            Err(self.error("expected a value".into()))
        }
    }

    fn number(&mut self) -> Result<Value, HujsonError> {
        let start = self.at;
        while self
            .peek()
            .is_some_and(|b| matches!(b, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
        {
            self.at += 1;
        }
        let text = &self.text[start..self.at];
        match serde_json::from_str::<Number>(text) {
            Ok(number) => Ok(Value::Number(number)),
            Err(_) => {
                self.at = start;
                Err(self.error(format!("invalid number {text:?}")))
            }
        }
    }

    fn string(&mut self) -> Result<String, HujsonError> {
        let start = self.at;
        assert_eq!(self.peek(), Some(b'"'), "a string starts with a quote");
        self.at += 1;
        loop {
            match self.peek() {
                None | Some(b'\n') => {
                    self.at = start;
                    return Err(self.error("unterminated string".into()));
                }
                Some(b'"') => break,
                Some(b'\\') => self.at += 2,
                Some(_) => self.at += 1,
            }
        }
        self.at += 1;
        let quoted = &self.text[start..self.at.min(self.text.len())];
        serde_json::from_str::<String>(quoted).map_err(|error| {
            self.at = start;
            self.error(format!("invalid string: {error}"))
        })
    }

    fn enter(&self, depth: usize) -> Result<(), HujsonError> {
        if depth > NESTING_MAX {
            return Err(self.error(format!("nesting deeper than {NESTING_MAX}")));
        }
        Ok(())
    }

    fn array(&mut self, pointer: &mut String, depth: usize) -> Result<Value, HujsonError> {
        self.enter(depth)?;
        self.at += 1;
        let mut items = Vec::new();
        loop {
            self.skip_blank()?;
            if self.peek() == Some(b']') {
                self.at += 1;
                return Ok(Value::Array(items));
            }
            let length = pointer.len();
            pointer.push_str(&format!("/{}", items.len()));
            items.push(self.value(pointer, depth)?);
            pointer.truncate(length);
            self.skip_blank()?;
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b']') => {}
                _ => return Err(self.error("expected ',' or ']'".into())),
            }
        }
    }

    fn object(&mut self, pointer: &mut String, depth: usize) -> Result<Value, HujsonError> {
        self.enter(depth)?;
        self.at += 1;
        let mut members = Map::new();
        loop {
            self.skip_blank()?;
            match self.peek() {
                Some(b'}') => {
                    self.at += 1;
                    return Ok(Value::Object(members));
                }
                Some(b'"') => {}
                _ => return Err(self.error("expected a member name in double quotes".into())),
            }
            let name = self.string()?;
            self.skip_blank()?;
            if self.peek() != Some(b':') {
                return Err(self.error("expected ':' after the member name".into()));
            }
            self.at += 1;
            self.skip_blank()?;
            let length = pointer.len();
            pointer.push('/');
            pointer.push_str(&name.replace('~', "~0").replace('/', "~1"));
            let value = self.value(pointer, depth)?;
            pointer.truncate(length);
            members.insert(name, value);
            self.skip_blank()?;
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b'}') => {}
                _ => return Err(self.error("expected ',' or '}'".into())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[track_caller]
    fn check(text: &str, expected: Result<Value, (usize, usize)>) {
        let got = parse(text).map_err(|error| (error.line, error.column));
        assert_eq!(got, expected, "parsing {text:?}");
    }

    #[test]
    fn values_comments_and_trailing_commas() {
        check("{}", Ok(json!({})));
        check(" [1, 2,] ", Ok(json!([1, 2])));
        check("{\"a\": 1, /* c */ \"b\": [true, null,],}", Ok(json!({"a": 1, "b": [true, null]})));
        check("// head\n{\"a\": \"x // not a comment\"}", Ok(json!({"a": "x // not a comment"})));
        check("{\"a\": \"/* kept */\"} // tail", Ok(json!({"a": "/* kept */"})));
        check("\"esc \\\" \\u00e9\"", Ok(json!("esc \" é")));
        check("-1.5e3", Ok(json!(-1500.0)));
    }

    #[test]
    fn errors_name_line_and_column() {
        check("{\n  \"a\": 1\n  \"b\": 2}", Err((3, 3)));
        check("[1, 2", Err((1, 6)));
        check("/* never closed", Err((1, 1)));
        check("{\"a\": tru}", Err((1, 7)));
        check("[,]", Err((1, 2)));
        check("{\"a\" 1}", Err((1, 6)));
        check("1 2", Err((1, 3)));
        check("\"open", Err((1, 1)));
        check(&"[".repeat(NESTING_MAX + 2), Err((1, NESTING_MAX + 1)));
    }

    #[test]
    fn lines_of_values() {
        let document = parse_document("{\n\"acls\": [\n {\"src\": [\"a\",\n \"b\"]}]}").unwrap();
        assert_eq!(document.line_of("/acls"), 2);
        assert_eq!(document.line_of("/acls/0"), 3);
        assert_eq!(document.line_of("/acls/0/src/1"), 4);
        assert_eq!(document.line_of("/missing"), 1);
    }
}
