//! The one error type of the query layer: a malformed filter, update, projection or sort, or an
//! update that cannot apply to a document.
//!
//! Every variant names the operator and the dotted path it concerns, and `code()` gives MongoDB's
//! numeric error code for the wire server (BadValue 2, FailedToParse 9, TypeMismatch 14,
//! PathNotViable 28, ConflictingUpdateOperators 40, DollarPrefixedFieldName 52, EmptyFieldName 56,
//! ImmutableField 66).

use std::fmt;

/// A query, update, projection or sort that MongoDB would refuse, with the operator and path.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum QueryError {
    /// An unknown query operator (`{a: {$foo: 1}}`, or `$foo` at the top level).
    UnknownOperator {
        /// The operator as written.
        operator: String,
        /// The field path it was applied to (empty at the top level).
        path: String,
    },
    /// An unknown update modifier (`{$foo: {a: 1}}`).
    UnknownModifier {
        /// The modifier as written.
        operator: String,
    },
    /// An operand of the wrong shape or value (MongoDB's BadValue).
    BadValue {
        /// The operator whose operand is wrong.
        operator: String,
        /// The field path.
        path: String,
        /// What is wrong, in words.
        message: String,
    },
    /// An expression that does not parse (MongoDB's FailedToParse).
    FailedToParse {
        /// The operator.
        operator: String,
        /// The field path.
        path: String,
        /// What is wrong, in words.
        message: String,
    },
    /// An operand or a stored value of the wrong type (MongoDB's TypeMismatch).
    TypeMismatch {
        /// The operator.
        operator: String,
        /// The field path.
        path: String,
        /// What is wrong, in words.
        message: String,
    },
    /// An update path that cannot be created in this document, such as a field inside a number.
    PathNotViable {
        /// The operator.
        operator: String,
        /// The field path.
        path: String,
        /// What is wrong, in words.
        message: String,
    },
    /// Two update operations touch the same field or a field and its parent.
    ConflictingPaths {
        /// The operator of the later operation.
        operator: String,
        /// The path of the later operation.
        path: String,
        /// The path it conflicts with.
        conflict: String,
    },
    /// A field name starting with `$` where a stored field name is expected.
    DollarPrefixedField {
        /// The operator.
        operator: String,
        /// The full path holding the field.
        path: String,
    },
    /// An empty field name in an update path (`a..b`, `.`).
    EmptyFieldName {
        /// The operator.
        operator: String,
        /// The path as written.
        path: String,
    },
    /// An update or replacement that would change a document's `_id`.
    ImmutableField {
        /// The operator (`replace` for a replacement document).
        operator: String,
        /// The path, `_id` or below it.
        path: String,
    },
}

impl QueryError {
    /// MongoDB's numeric error code for this error, as the wire protocol reports it.
    pub fn code(&self) -> i32 {
        match self {
            QueryError::UnknownOperator { .. } | QueryError::BadValue { .. } => 2,
            QueryError::UnknownModifier { .. } | QueryError::FailedToParse { .. } => 9,
            QueryError::TypeMismatch { .. } => 14,
            QueryError::PathNotViable { .. } => 28,
            QueryError::ConflictingPaths { .. } => 40,
            QueryError::DollarPrefixedField { .. } => 52,
            QueryError::EmptyFieldName { .. } => 56,
            QueryError::ImmutableField { .. } => 66,
        }
    }

    /// MongoDB's name for `code()` (`codeName` in a wire reply).
    pub fn code_name(&self) -> &'static str {
        match self.code() {
            2 => "BadValue",
            9 => "FailedToParse",
            14 => "TypeMismatch",
            28 => "PathNotViable",
            40 => "ConflictingUpdateOperators",
            52 => "DollarPrefixedFieldName",
            56 => "EmptyFieldName",
            66 => "ImmutableField",
            code => unreachable!("no name for code {code}"),
        }
    }

    pub(crate) fn bad_value(operator: &str, path: &str, message: impl Into<String>) -> Self {
        QueryError::BadValue {
            operator: operator.to_owned(),
            path: path.to_owned(),
            message: message.into(),
        }
    }

    pub(crate) fn failed_to_parse(operator: &str, path: &str, message: impl Into<String>) -> Self {
        QueryError::FailedToParse {
            operator: operator.to_owned(),
            path: path.to_owned(),
            message: message.into(),
        }
    }

    pub(crate) fn type_mismatch(operator: &str, path: &str, message: impl Into<String>) -> Self {
        QueryError::TypeMismatch {
            operator: operator.to_owned(),
            path: path.to_owned(),
            message: message.into(),
        }
    }
}

impl fmt::Display for QueryError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueryError::UnknownOperator { operator, path } => {
                write!(formatter, "unknown operator {operator} at '{path}'")
            }
            QueryError::UnknownModifier { operator } => {
                write!(formatter, "unknown update modifier {operator}")
            }
            QueryError::BadValue { operator, path, message }
            | QueryError::FailedToParse { operator, path, message }
            | QueryError::TypeMismatch { operator, path, message }
            | QueryError::PathNotViable { operator, path, message } => {
                write!(formatter, "{operator} at '{path}': {message}")
            }
            QueryError::ConflictingPaths { operator, path, conflict } => write!(
                formatter,
                "{operator}: updating the path '{path}' would create a conflict at '{conflict}'"
            ),
            QueryError::DollarPrefixedField { operator, path } => write!(
                formatter,
                "{operator}: the dollar ($) prefixed field in '{path}' is not valid for storage"
            ),
            QueryError::EmptyFieldName { operator, path } => {
                write!(formatter, "{operator}: the update path '{path}' has an empty field name")
            }
            QueryError::ImmutableField { operator, path } => write!(
                formatter,
                "{operator}: performing an update on the path '{path}' would modify the immutable \
                 field '_id'"
            ),
        }
    }
}

impl std::error::Error for QueryError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(error: QueryError, code: i32, shown: &str) {
        assert_eq!(error.code(), code);
        assert!(!error.code_name().is_empty());
        assert_eq!(error.to_string(), shown);
    }

    #[test]
    fn codes_and_messages_name_operator_and_path() {
        check(
            QueryError::UnknownOperator { operator: "$foo".into(), path: "a.b".into() },
            2,
            "unknown operator $foo at 'a.b'",
        );
        check(
            QueryError::type_mismatch("$inc", "a", "not a number"),
            14,
            "$inc at 'a': not a number",
        );
        check(
            QueryError::ConflictingPaths {
                operator: "$min".into(),
                path: "a.b".into(),
                conflict: "a.b".into(),
            },
            40,
            "$min: updating the path 'a.b' would create a conflict at 'a.b'",
        );
    }
}
