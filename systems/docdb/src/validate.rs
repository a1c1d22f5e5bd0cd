//! Collection validators: a JSON Schema subset (`bsonType`/`type`, `required`, `properties`,
//! `enum`, `minimum`/`maximum`, `minLength`/`maxLength`, `pattern`, `items`), given as
//! `{$jsonSchema: {...}}` or as the schema itself. A failing document is refused with the path
//! that fails and why.

use std::cmp::Ordering;

use bson::{Bson, Document};

use crate::error::{Error, Result};
use crate::value;

/// Deepest schema nesting checked (bounds recursion on hostile validators).
const SCHEMA_DEPTH_MAX: usize = 32;

/// Checks a validator when it is set on a collection: unknown keywords are refused.
pub fn check_schema(validator: &Document) -> Result<()> {
    check_keywords(schema_of(validator), 0)
}

fn schema_of(validator: &Document) -> &Document {
    match validator.get("$jsonSchema") {
        Some(Bson::Document(schema)) => schema,
        _ => validator,
    }
}

fn check_keywords(schema: &Document, depth: usize) -> Result<()> {
    if depth > SCHEMA_DEPTH_MAX {
        return Err(Error::InvalidArgument("validator nests too deeply".into()));
    }
    const KNOWN: [&str; 14] = [
        "bsonType",
        "type",
        "required",
        "properties",
        "enum",
        "minimum",
        "maximum",
        "minLength",
        "maxLength",
        "pattern",
        "items",
        "description",
        "title",
        "additionalProperties",
    ];
    for (keyword, argument) in schema {
        if !KNOWN.contains(&keyword.as_str()) {
            return Err(Error::InvalidArgument(format!(
                "validator keyword '{keyword}' is not supported"
            )));
        }
        if keyword == "properties" {
            let Bson::Document(properties) = argument else {
                return Err(Error::InvalidArgument("'properties' must be a document".into()));
            };
            for (_, nested) in properties {
                let Bson::Document(nested) = nested else {
                    return Err(Error::InvalidArgument(
                        "a property's schema must be a document".into(),
                    ));
                };
                check_keywords(nested, depth + 1)?;
            }
        }
        if keyword == "items"
            && let Bson::Document(nested) = argument
        {
            check_keywords(nested, depth + 1)?;
        }
    }
    Ok(())
}

/// Validates `document` against `validator`: `Err((path, reason))` for the first failure.
pub fn validate(validator: &Document, document: &Document, namespace: &str) -> Result<()> {
    let subject = Bson::Document(document.clone());
    check_value(schema_of(validator), &subject, "", 0).map_err(|(path, reason)| Error::Validation {
        namespace: namespace.to_string(),
        path,
        reason,
    })
}

type Failure = (String, String);

fn check_value(
    schema: &Document,
    subject: &Bson,
    path: &str,
    depth: usize,
) -> std::result::Result<(), Failure> {
    let fail = |reason: String| Err((path.to_string(), reason));
    if depth > SCHEMA_DEPTH_MAX {
        return fail("schema nests too deeply".into());
    }
    for (keyword, argument) in schema {
        match keyword.as_str() {
            "bsonType" | "type" if !type_matches(argument, subject) => {
                return fail(format!("expected type {argument}, found {}", type_name(subject)));
            }
            "enum" => {
                let allowed = argument
                    .as_array()
                    .map(|values| values.iter().any(|v| value::equal(v, subject)));
                if allowed != Some(true) {
                    return fail(format!("{subject} is not one of {argument}"));
                }
            }
            "minimum" | "maximum" => {
                if let (Some(_), Some(_)) = (value::number(subject), value::number(argument)) {
                    let order = value::compare(subject, argument);
                    let bad = if keyword == "minimum" {
                        order == Ordering::Less
                    } else {
                        order == Ordering::Greater
                    };
                    if bad {
                        return fail(format!("{subject} is outside {keyword} {argument}"));
                    }
                }
            }
            "minLength" | "maxLength" | "pattern" => {
                check_string(keyword, argument, subject).or_else(fail)?
            }
            "required" | "properties" | "items" => {
                check_nested(keyword, argument, subject, path, depth)?
            }
            _ => {}
        }
    }
    Ok(())
}

fn check_string(keyword: &str, argument: &Bson, subject: &Bson) -> std::result::Result<(), String> {
    let Bson::String(text) = subject else { return Ok(()) };
    let length = text.chars().count() as f64;
    let limit = value::number(argument).map(|number| match number {
        value::Number::Integer(integer) => integer as f64,
        value::Number::Double(double) => double,
    });
    match (keyword, limit) {
        ("minLength", Some(limit)) if length < limit => Err(format!("shorter than {limit}")),
        ("maxLength", Some(limit)) if length > limit => Err(format!("longer than {limit}")),
        ("pattern", _) => {
            let pattern = argument.as_str().unwrap_or_default();
            match regex::Regex::new(pattern) {
                Ok(regex) if regex.is_match(text) => Ok(()),
                Ok(_) => Err(format!("does not match /{pattern}/")),
                Err(error) => Err(format!("bad pattern: {error}")),
            }
        }
        _ => Ok(()),
    }
}

fn check_nested(
    keyword: &str,
    argument: &Bson,
    subject: &Bson,
    path: &str,
    depth: usize,
) -> std::result::Result<(), Failure> {
    let join =
        |name: &str| if path.is_empty() { name.to_string() } else { format!("{path}.{name}") };
    match (keyword, subject, argument) {
        ("required", Bson::Document(document), Bson::Array(names)) => {
            for name in names.iter().filter_map(Bson::as_str) {
                if !document.contains_key(name) {
                    return Err((join(name), "required field is missing".to_string()));
                }
            }
        }
        ("properties", Bson::Document(document), Bson::Document(properties)) => {
            for (name, nested) in properties {
                if let (Some(child), Bson::Document(nested)) = (document.get(name), nested) {
                    check_value(nested, child, &join(name), depth + 1)?;
                }
            }
        }
        ("items", Bson::Array(items), Bson::Document(nested)) => {
            for (position, item) in items.iter().enumerate() {
                check_value(nested, item, &join(&position.to_string()), depth + 1)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn type_matches(expected: &Bson, subject: &Bson) -> bool {
    match expected {
        Bson::Array(names) => names.iter().any(|name| type_matches(name, subject)),
        Bson::String(name) => match name.as_str() {
            "number" => value::number(subject).is_some(),
            "integer" => matches!(subject, Bson::Int32(_) | Bson::Int64(_)),
            "object" => matches!(subject, Bson::Document(_)),
            "array" => matches!(subject, Bson::Array(_)),
            "boolean" | "bool" => matches!(subject, Bson::Boolean(_)),
            other => type_name(subject) == other,
        },
        _ => false,
    }
}

/// MongoDB's `$type` alias of a value.
pub fn type_name(value: &Bson) -> &'static str {
    match value {
        Bson::Double(_) => "double",
        Bson::String(_) => "string",
        Bson::Document(_) => "object",
        Bson::Array(_) => "array",
        Bson::Binary(_) => "binData",
        Bson::Undefined => "undefined",
        Bson::ObjectId(_) => "objectId",
        Bson::Boolean(_) => "bool",
        Bson::DateTime(_) => "date",
        Bson::Null => "null",
        Bson::RegularExpression(_) => "regex",
        Bson::DbPointer(_) => "dbPointer",
        Bson::JavaScriptCode(_) => "javascript",
        Bson::Symbol(_) => "symbol",
        Bson::JavaScriptCodeWithScope(_) => "javascriptWithScope",
        Bson::Int32(_) => "int",
        Bson::Timestamp(_) => "timestamp",
        Bson::Int64(_) => "long",
        Bson::Decimal128(_) => "decimal",
        Bson::MinKey => "minKey",
        Bson::MaxKey => "maxKey",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[track_caller]
    fn check(validator: Document, document: Document, expected: Option<&str>) {
        let actual = validate(&validator, &document, "d.c").err().map(|error| match error {
            Error::Validation { path, .. } => path,
            other => panic!("{other}"),
        });
        assert_eq!(actual.as_deref(), expected, "{document}");
    }

    #[test]
    fn schemas_name_the_failing_path() {
        let schema = doc! {"$jsonSchema": {
            "required": ["name"],
            "properties": {
                "name": {"bsonType": "string", "minLength": 2, "pattern": "^[a-z]+$"},
                "age": {"bsonType": "number", "minimum": 0, "maximum": 150},
                "tags": {"bsonType": "array", "items": {"enum": ["a", "b"]}},
            },
        }};
        check(schema.clone(), doc! {"name": "ann", "age": 3, "tags": ["a"]}, None);
        check(schema.clone(), doc! {"age": 3}, Some("name"));
        check(schema.clone(), doc! {"name": "a"}, Some("name"));
        check(schema.clone(), doc! {"name": "ann", "age": -1}, Some("age"));
        check(schema.clone(), doc! {"name": "ann", "tags": ["a", "c"]}, Some("tags.1"));
        assert!(check_schema(&doc! {"$jsonSchema": {"oneOf": []}}).is_err());
        assert!(check_schema(&schema).is_ok());
    }
}
