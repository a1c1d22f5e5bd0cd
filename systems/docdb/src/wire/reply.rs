//! Command errors in MongoDB's shape, `{ok: 0, errmsg, code, codeName}`, and the helpers
//! that read command arguments with typed errors instead of panics.

use std::fmt;

use bson::{Bson, Document, doc};

use crate::error::Error;

/// MongoDB error codes the server answers with, beyond the ones `Error::code` gives.
pub mod code {
    /// A command argument has the wrong value.
    pub const BAD_VALUE: i32 = 2;
    /// The command or message cannot be parsed.
    pub const FAILED_TO_PARSE: i32 = 9;
    /// The connection is not authenticated for this command.
    pub const UNAUTHORIZED: i32 = 13;
    /// An argument has the wrong BSON type.
    pub const TYPE_MISMATCH: i32 = 14;
    /// Authentication failed.
    pub const AUTHENTICATION_FAILED: i32 = 18;
    /// `getMore` or `killCursors` on an unknown cursor.
    pub const CURSOR_NOT_FOUND: i32 = 43;
    /// A command this server does not have.
    pub const COMMAND_NOT_FOUND: i32 = 59;
    /// A write conflict inside a transaction.
    pub const WRITE_CONFLICT: i32 = 112;
    /// Too many open cursors, sessions or connections.
    pub const TOO_MANY: i32 = 74; // ExceededMemoryLimit: a server-side table is full.
    /// The session has no such transaction.
    pub const NO_SUCH_TRANSACTION: i32 = 251;
}

/// MongoDB's name for an error code.
pub fn code_name(code: i32) -> &'static str {
    match code {
        1 => "InternalError",
        2 => "BadValue",
        9 => "FailedToParse",
        13 => "Unauthorized",
        14 => "TypeMismatch",
        18 => "AuthenticationFailed",
        26 => "NamespaceNotFound",
        27 => "IndexNotFound",
        43 => "CursorNotFound",
        48 => "NamespaceExists",
        59 => "CommandNotFound",
        67 => "CannotCreateIndex",
        74 => "ExceededMemoryLimit",
        112 => "WriteConflict",
        121 => "DocumentValidationFailure",
        251 => "NoSuchTransaction",
        256 => "TransactionCommitted",
        286 => "ChangeStreamHistoryLost",
        10334 => "BSONObjectTooLarge",
        11000 => "DuplicateKey",
        _ => "UnknownError",
    }
}

/// A failed command: its code, message and error labels.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandError {
    /// MongoDB's error code.
    pub code: i32,
    /// The message for the client.
    pub message: String,
    /// Labels such as `TransientTransactionError`.
    pub labels: Vec<&'static str>,
}

impl CommandError {
    /// An error with `code` and `message`.
    pub fn new(code: i32, message: impl Into<String>) -> CommandError {
        CommandError { code, message: message.into(), labels: Vec::new() }
    }

    /// The reply document.
    pub fn to_reply(&self) -> Document {
        let mut reply = doc! {
            "ok": 0.0, "errmsg": &self.message, "code": self.code, "codeName": code_name(self.code),
        };
        if !self.labels.is_empty() {
            reply.insert("errorLabels", self.labels.clone());
        }
        reply
    }
}

impl fmt::Display for CommandError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{} ({}): {}", code_name(self.code), self.code, self.message)
    }
}

impl std::error::Error for CommandError {}

impl From<Error> for CommandError {
    fn from(error: Error) -> CommandError {
        let mut command_error = CommandError::new(error.code(), error.to_string());
        if error.is_transient() {
            command_error.labels.push("TransientTransactionError");
        }
        command_error
    }
}

/// Result of a command handler.
pub type CommandResult = Result<Document, CommandError>;

/// The one write error of a write command at position `index`, as `writeErrors` lists it.
pub fn write_error(index: usize, error: &Error) -> Document {
    doc! { "index": index as i64, "code": error.code(), "errmsg": error.to_string() }
}

/// The string argument `key`.
pub fn string<'d>(command: &'d Document, key: &str) -> Result<&'d str, CommandError> {
    match command.get(key) {
        Some(Bson::String(value)) => Ok(value),
        Some(other) => Err(type_mismatch(key, "string", other)),
        None => Err(CommandError::new(code::FAILED_TO_PARSE, format!("missing field '{key}'"))),
    }
}

/// The document argument `key`, empty when absent or null.
pub fn document(command: &Document, key: &str) -> Result<Document, CommandError> {
    match command.get(key) {
        Some(Bson::Document(value)) => Ok(value.clone()),
        None | Some(Bson::Null) => Ok(Document::new()),
        Some(other) => Err(type_mismatch(key, "object", other)),
    }
}

/// The optional document argument `key`.
pub fn document_opt(command: &Document, key: &str) -> Result<Option<Document>, CommandError> {
    match command.get(key) {
        Some(Bson::Document(value)) => Ok(Some(value.clone())),
        None | Some(Bson::Null) => Ok(None),
        Some(other) => Err(type_mismatch(key, "object", other)),
    }
}

/// The array-of-documents argument `key`, empty when absent.
pub fn documents(command: &Document, key: &str) -> Result<Vec<Document>, CommandError> {
    let items = match command.get(key) {
        Some(Bson::Array(items)) => items,
        None => return Ok(Vec::new()),
        Some(other) => return Err(type_mismatch(key, "array", other)),
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Bson::Document(value) => out.push(value.clone()),
            other => return Err(type_mismatch(key, "array of objects", other)),
        }
    }
    Ok(out)
}

/// The numeric argument `key` as i64 (`default` when absent or null).
pub fn integer(command: &Document, key: &str, default: i64) -> Result<i64, CommandError> {
    match command.get(key) {
        None | Some(Bson::Null) => Ok(default),
        Some(Bson::Int32(value)) => Ok(i64::from(*value)),
        Some(Bson::Int64(value)) => Ok(*value),
        Some(Bson::Double(value)) if value.fract() == 0.0 && value.abs() < 9.0e15 => {
            Ok(*value as i64)
        }
        Some(other) => Err(type_mismatch(key, "integer", other)),
    }
}

/// The non-negative numeric argument `key` as u64.
pub fn count(command: &Document, key: &str) -> Result<u64, CommandError> {
    let value = integer(command, key, 0)?;
    u64::try_from(value).map_err(|_| {
        CommandError::new(code::BAD_VALUE, format!("'{key}' must be non-negative, got {value}"))
    })
}

/// The boolean argument `key` (numbers count as MongoDB counts them), `default` when absent.
pub fn boolean(command: &Document, key: &str, default: bool) -> bool {
    match command.get(key) {
        None | Some(Bson::Null) => default,
        Some(Bson::Boolean(value)) => *value,
        Some(Bson::Int32(value)) => *value != 0,
        Some(Bson::Int64(value)) => *value != 0,
        Some(Bson::Double(value)) => *value != 0.0,
        Some(_) => true,
    }
}

fn type_mismatch(key: &str, expected: &str, got: &Bson) -> CommandError {
    let got = format!("{:?}", got.element_type());
    CommandError::new(code::TYPE_MISMATCH, format!("'{key}' must be {expected}, got {got}"))
}

/// The array-of-integers argument `key`, empty when absent.
pub fn integers(command: &Document, key: &str) -> Result<Vec<i64>, CommandError> {
    let items = match command.get(key) {
        Some(Bson::Array(items)) => items,
        None => return Ok(Vec::new()),
        Some(other) => return Err(type_mismatch(key, "array", other)),
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        out.push(integer(&doc! {"item": item.clone()}, "item", 0)?);
    }
    Ok(out)
}
