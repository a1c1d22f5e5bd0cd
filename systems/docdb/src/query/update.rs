//! MongoDB update operators, upserts and replacement documents.
//!
//! `Update::parse` checks an update document once: known modifiers, well-formed operands, valid
//! paths (no empty or `$`-prefixed field names besides the positional `$`, `$[]` and
//! `$[identifier]`), every array filter used, and no two paths where one is a prefix of the
//! other. `Update::apply` resolves the positional parts against one document (`$` from the
//! filter's match position, `$[]` every element, `$[identifier]` the elements its array filter
//! matches), checks the resolved paths for conflicts again, applies the operations in path order
//! (as MongoDB 4.2 does, so new fields appear in name order), refuses a change to `_id`, and
//! reports the changed and removed paths for change streams. A failed update leaves the
//! document as it was.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use bson::{Bson, Document};

use crate::query::error::QueryError;
use crate::query::filter::{ElementMatcher, Filter, exact_integer};
use crate::query::path::{self, array_index};
use crate::query::sort::Sort;
use crate::value;

/// What `apply` needs beyond the document: the time and the match that selected it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpdateContext {
    /// The time `$currentDate` writes.
    pub now: bson::DateTime,
    /// Whether the document is being inserted by an upsert (`$setOnInsert` applies only then).
    pub is_insert: bool,
    /// The filter's match position (`MatchDetails::position`), which a positional `$` uses.
    pub position: Option<usize>,
}

/// The fields an update changed, as dotted paths with array indexes resolved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Paths whose value was set (their new values are in the updated document).
    pub updated: Vec<String>,
    /// Paths that were removed.
    pub removed: Vec<String>,
}

impl Changes {
    /// Whether the update left the document unchanged.
    pub fn is_empty(&self) -> bool {
        self.updated.is_empty() && self.removed.is_empty()
    }
}

/// A parsed update document with its array filters.
#[derive(Clone, Debug)]
pub struct Update {
    operations: Vec<Operation>,
    array_filters: BTreeMap<String, Filter>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Field(String),
    /// `$`: the filter's match position.
    Positional,
    /// `$[]`: every element.
    Every,
    /// `$[identifier]`: the elements the identifier's array filter matches.
    Filtered(String),
}

#[derive(Clone, Debug)]
struct Operation {
    operator: &'static str,
    path: String,
    parts: Vec<Part>,
    action: Action,
}

#[derive(Clone, Debug)]
enum PushSort {
    Whole { descending: bool },
    Fields(Sort),
}

#[derive(Clone, Debug)]
enum Action {
    Set(Bson),
    SetOnInsert(Bson),
    Unset,
    Increment(Bson),
    Multiply(Bson),
    Minimum(Bson),
    Maximum(Bson),
    Rename { target: Vec<String> },
    Push { items: Vec<Bson>, position: Option<i64>, slice: Option<i64>, sort: Option<PushSort> },
    AddToSet(Vec<Bson>),
    Pop { first: bool },
    Pull(Box<ElementMatcher>),
    PullAll(Vec<Bson>),
    CurrentDate { timestamp: bool },
}

/// Most operations one update document may hold, so the pairwise conflict check stays bounded.
const OPERATION_COUNT_MAX: usize = 10_000;

const MODIFIERS: [&str; 14] = [
    "$set",
    "$setOnInsert",
    "$unset",
    "$inc",
    "$mul",
    "$min",
    "$max",
    "$rename",
    "$push",
    "$addToSet",
    "$pop",
    "$pull",
    "$pullAll",
    "$currentDate",
];

/// Whether an update document is a replacement (no `$` modifier first) rather than operators.
pub fn is_replacement(update: &Document) -> bool {
    !update.keys().next().is_some_and(|key| key.starts_with('$'))
}

impl Update {
    /// Parses an update document and its array filters (see the module doc for what is checked).
    pub fn parse(update: &Document, array_filters: &[Document]) -> Result<Update, QueryError> {
        if path::too_deep(update) || array_filters.iter().any(path::too_deep) {
            return Err(QueryError::bad_value("update", "", "nested too deeply"));
        }
        if update.is_empty() {
            return Err(QueryError::failed_to_parse("update", "", "the update document is empty"));
        }
        let mut operations = Vec::new();
        for (modifier, operand) in update {
            let Some(operator) = MODIFIERS.iter().copied().find(|known| known == modifier) else {
                if !modifier.starts_with('$') {
                    let message = "an update document needs $ operators; use a replacement";
                    return Err(QueryError::failed_to_parse(modifier, "", message));
                }
                return Err(QueryError::UnknownModifier { operator: modifier.clone() });
            };
            let Bson::Document(fields) = operand else {
                let message = format!("modifiers operate on fields but found {operand}");
                return Err(QueryError::failed_to_parse(operator, "", message));
            };
            if fields.is_empty() {
                return Err(QueryError::failed_to_parse(operator, "", "names no field"));
            }
            for (path, value) in fields {
                let action = parse_action(operator, path, value)?;
                operations.push(Operation {
                    operator,
                    path: path.clone(),
                    parts: parse_parts(path),
                    action,
                });
            }
        }
        if operations.len() > OPERATION_COUNT_MAX {
            return Err(QueryError::bad_value("update", "", "too many fields in one update"));
        }
        let array_filters = parse_array_filters(array_filters)?;
        check_identifiers_used(&operations, &array_filters)?;
        for operation in &operations {
            check_parts(operation, &array_filters)?;
        }
        check_static_conflicts(&operations)?;
        Ok(Update { operations, array_filters })
    }
}

fn parse_parts(path: &str) -> Vec<Part> {
    path.split('.')
        .map(|part| match part {
            "$" => Part::Positional,
            "$[]" => Part::Every,
            _ => match part.strip_prefix("$[").and_then(|rest| rest.strip_suffix(']')) {
                Some(identifier) if !identifier.is_empty() => Part::Filtered(identifier.to_owned()),
                _ => Part::Field(part.to_owned()),
            },
        })
        .collect()
}

fn parse_array_filters(filters: &[Document]) -> Result<BTreeMap<String, Filter>, QueryError> {
    let mut parsed = BTreeMap::new();
    for document in filters {
        let filter = Filter::parse(document)?;
        let names = filter.first_parts();
        let Some(identifier) = names.first().map(|name| (*name).to_owned()) else {
            return Err(QueryError::failed_to_parse(
                "arrayFilters",
                "",
                "an array filter is empty",
            ));
        };
        if names.iter().any(|name| *name != identifier) {
            let message = "an array filter may name only one identifier";
            return Err(QueryError::failed_to_parse("arrayFilters", &identifier, message));
        }
        let starts_lowercase = identifier.chars().next().is_some_and(|c| c.is_ascii_lowercase());
        if !starts_lowercase || !identifier.chars().all(|c| c.is_ascii_alphanumeric()) {
            let message = "an identifier starts with a lowercase letter and is alphanumeric";
            return Err(QueryError::bad_value("arrayFilters", &identifier, message));
        }
        if parsed.insert(identifier.clone(), filter).is_some() {
            let message = "two array filters name the same identifier";
            return Err(QueryError::failed_to_parse("arrayFilters", &identifier, message));
        }
    }
    Ok(parsed)
}

fn check_identifiers_used(
    operations: &[Operation],
    array_filters: &BTreeMap<String, Filter>,
) -> Result<(), QueryError> {
    for identifier in array_filters.keys() {
        let used = operations.iter().any(|operation| {
            operation.parts.iter().any(|part| *part == Part::Filtered(identifier.clone()))
        });
        if !used {
            let message = format!("the array filter for identifier '{identifier}' was not used");
            return Err(QueryError::failed_to_parse("arrayFilters", identifier, message));
        }
    }
    Ok(())
}

fn check_parts(
    operation: &Operation,
    array_filters: &BTreeMap<String, Filter>,
) -> Result<(), QueryError> {
    let Operation { operator, path, .. } = operation;
    for part in &operation.parts {
        match part {
            Part::Field(name) if name.is_empty() => {
                return Err(QueryError::EmptyFieldName {
                    operator: (*operator).to_owned(),
                    path: path.clone(),
                });
            }
            Part::Field(name) if name.starts_with('$') => {
                return Err(QueryError::DollarPrefixedField {
                    operator: (*operator).to_owned(),
                    path: path.clone(),
                });
            }
            Part::Filtered(identifier) if !array_filters.contains_key(identifier) => {
                let message = format!("no array filter found for identifier '{identifier}'");
                return Err(QueryError::bad_value(operator, path, message));
            }
            _ => {}
        }
    }
    let positional_count = operation.parts.iter().filter(|p| **p == Part::Positional).count();
    if positional_count > 1 {
        return Err(QueryError::bad_value(operator, path, "too many positional ($) elements"));
    }
    if let Action::Rename { target } = &operation.action {
        check_rename(operation, target)?;
    }
    Ok(())
}

fn check_rename(operation: &Operation, target: &[String]) -> Result<(), QueryError> {
    let path = &operation.path;
    let source_plain = operation.parts.iter().all(|part| matches!(part, Part::Field(_)));
    let target_plain = target.iter().all(|part| !part.is_empty() && !part.starts_with('$'));
    if !source_plain || !target_plain {
        return Err(QueryError::bad_value("$rename", path, "$rename paths may not be positional"));
    }
    let source: Vec<String> = path.split('.').map(str::to_owned).collect();
    if source == target {
        return Err(QueryError::bad_value("$rename", path, "source and target must differ"));
    }
    if is_prefix(&source, target) || is_prefix(target, &source) {
        let message = "source and target must not be on the same path";
        return Err(QueryError::bad_value("$rename", path, message));
    }
    Ok(())
}

fn is_prefix<T: PartialEq>(shorter: &[T], longer: &[T]) -> bool {
    shorter.len() <= longer.len() && longer[..shorter.len()] == *shorter
}

/// The written paths of an operation, as strings per part (positional parts kept as written).
fn written_paths(operation: &Operation) -> Vec<Vec<String>> {
    let source = operation.path.split('.').map(str::to_owned).collect();
    match &operation.action {
        Action::Rename { target } => vec![source, target.clone()],
        _ => vec![source],
    }
}

fn check_static_conflicts(operations: &[Operation]) -> Result<(), QueryError> {
    let mut seen: Vec<Vec<String>> = Vec::new();
    for operation in operations {
        for path in written_paths(operation) {
            if let Some(earlier) = seen.iter().find(|earlier| {
                is_prefix(earlier.as_slice(), &path) || is_prefix(&path, earlier.as_slice())
            }) {
                return Err(QueryError::ConflictingPaths {
                    operator: operation.operator.to_owned(),
                    path: path.join("."),
                    conflict: earlier.join("."),
                });
            }
            seen.push(path);
        }
    }
    Ok(())
}

/// Refuses `$`-prefixed field names inside a value that will be stored.
fn check_storable(operator: &str, path: &str, value: &Bson) -> Result<(), QueryError> {
    match value {
        Bson::Document(document) => {
            for (key, inner) in document {
                let inner_path = format!("{path}.{key}");
                if key.starts_with('$') {
                    return Err(QueryError::DollarPrefixedField {
                        operator: operator.to_owned(),
                        path: inner_path,
                    });
                }
                check_storable(operator, &inner_path, inner)?;
            }
            Ok(())
        }
        Bson::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                check_storable(operator, &format!("{path}.{index}"), item)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn parse_action(operator: &'static str, path: &str, value: &Bson) -> Result<Action, QueryError> {
    let numeric = |verb: &str| {
        if value::number(value).is_none() {
            let message = format!("cannot {verb} with non-numeric argument: {value}");
            return Err(QueryError::type_mismatch(operator, path, message));
        }
        Ok(value.clone())
    };
    let stored = || check_storable(operator, path, value).map(|()| value.clone());
    Ok(match operator {
        "$set" => Action::Set(stored()?),
        "$setOnInsert" => Action::SetOnInsert(stored()?),
        "$unset" => Action::Unset,
        "$inc" => Action::Increment(numeric("increment")?),
        "$mul" => Action::Multiply(numeric("multiply")?),
        "$min" => Action::Minimum(stored()?),
        "$max" => Action::Maximum(stored()?),
        "$rename" => {
            let Bson::String(target) = value else {
                return Err(QueryError::bad_value(operator, path, "the target must be a string"));
            };
            Action::Rename { target: target.split('.').map(str::to_owned).collect() }
        }
        "$push" => parse_push(path, value)?,
        "$addToSet" => parse_add_to_set(path, value)?,
        "$pop" => {
            let first = match exact_integer(value) {
                Some(1) => false,
                Some(-1) => true,
                _ => {
                    let message = format!("expected 1 or -1, found {value}");
                    return Err(QueryError::failed_to_parse(operator, path, message));
                }
            };
            Action::Pop { first }
        }
        "$pull" => Action::Pull(Box::new(ElementMatcher::for_pull(value, path)?)),
        "$pullAll" => {
            let Bson::Array(items) = value else {
                return Err(QueryError::bad_value(operator, path, "needs an array argument"));
            };
            Action::PullAll(items.clone())
        }
        "$currentDate" => parse_current_date(path, value)?,
        _ => unreachable!("{operator} is in MODIFIERS"),
    })
}

fn parse_current_date(path: &str, value: &Bson) -> Result<Action, QueryError> {
    match value {
        Bson::Boolean(_) => Ok(Action::CurrentDate { timestamp: false }),
        Bson::Document(spec) if spec.len() == 1 => match spec.get("$type") {
            Some(Bson::String(kind)) if kind == "date" => {
                Ok(Action::CurrentDate { timestamp: false })
            }
            Some(Bson::String(kind)) if kind == "timestamp" => {
                Ok(Action::CurrentDate { timestamp: true })
            }
            _ => Err(QueryError::bad_value("$currentDate", path, "$type is 'date' or 'timestamp'")),
        },
        _ => Err(QueryError::bad_value("$currentDate", path, "needs a boolean or {$type: ...}")),
    }
}

/// The `$each` array of a `$push` or `$addToSet` operand.
fn each_items(operator: &str, path: &str, each: &Bson) -> Result<Vec<Bson>, QueryError> {
    let Bson::Array(items) = each else {
        let message = format!("the argument to $each must be an array but was {each}");
        return Err(QueryError::type_mismatch(operator, path, message));
    };
    check_storable(operator, path, each)?;
    Ok(items.clone())
}

fn has_each(value: &Bson) -> Option<&Document> {
    match value {
        Bson::Document(spec) if spec.contains_key("$each") => Some(spec),
        _ => None,
    }
}

fn parse_add_to_set(path: &str, value: &Bson) -> Result<Action, QueryError> {
    let Some(spec) = has_each(value) else {
        check_storable("$addToSet", path, value)?;
        return Ok(Action::AddToSet(vec![value.clone()]));
    };
    if spec.len() != 1 {
        let message = format!("found unexpected fields after $each: {spec}");
        return Err(QueryError::bad_value("$addToSet", path, message));
    }
    Ok(Action::AddToSet(each_items("$addToSet", path, &spec["$each"])?))
}

fn parse_push(path: &str, value: &Bson) -> Result<Action, QueryError> {
    let Some(spec) = has_each(value) else {
        check_storable("$push", path, value)?;
        let items = vec![value.clone()];
        return Ok(Action::Push { items, position: None, slice: None, sort: None });
    };
    let (mut position, mut slice, mut sort) = (None, None, None);
    for (clause, operand) in spec {
        let integer = || {
            exact_integer(operand).ok_or_else(|| {
                let message = format!("the value for {clause} must be an integer, not {operand}");
                QueryError::bad_value("$push", path, message)
            })
        };
        match clause.as_str() {
            "$each" => {}
            "$position" => position = Some(integer()?),
            "$slice" => slice = Some(integer()?),
            "$sort" => sort = Some(parse_push_sort(path, operand)?),
            _ => {
                let message = format!("unrecognized clause in $push: {clause}");
                return Err(QueryError::bad_value("$push", path, message));
            }
        }
    }
    let items = each_items("$push", path, &spec["$each"])?;
    Ok(Action::Push { items, position, slice, sort })
}

fn parse_push_sort(path: &str, operand: &Bson) -> Result<PushSort, QueryError> {
    let message = "the $sort element value must be either 1 or -1";
    match operand {
        Bson::Document(spec) => {
            let sort =
                Sort::parse(spec).map_err(|_| QueryError::bad_value("$push", path, message))?;
            if sort.is_empty() {
                return Err(QueryError::bad_value("$push", path, "$sort must not be empty"));
            }
            Ok(PushSort::Fields(sort))
        }
        _ => match exact_integer(operand) {
            Some(1) => Ok(PushSort::Whole { descending: false }),
            Some(-1) => Ok(PushSort::Whole { descending: true }),
            _ => Err(QueryError::bad_value("$push", path, message)),
        },
    }
}

/// Longest run of `null`s an update may add to reach an array index (MongoDB allows 1,500,000).
const ARRAY_PADDING_MAX: usize = 1_500_000;

fn child<'a>(value: &'a Bson, name: &str) -> Option<&'a Bson> {
    match value {
        Bson::Document(document) => document.get(name),
        Bson::Array(items) => items.get(array_index(name)?),
        _ => None,
    }
}

fn child_mut<'a>(value: &'a mut Bson, name: &str) -> Option<&'a mut Bson> {
    match value {
        Bson::Document(document) => document.get_mut(name),
        Bson::Array(items) => items.get_mut(array_index(name)?),
        _ => None,
    }
}

fn get<'a>(root: &'a Bson, path: &[String]) -> Option<&'a Bson> {
    path.iter().try_fold(root, |value, part| child(value, part))
}

fn get_mut<'a>(root: &'a mut Bson, path: &[String]) -> Option<&'a mut Bson> {
    path.iter().try_fold(root, |value, part| child_mut(value, part))
}

fn not_viable(operator: &str, path: &[String], part: &str, element: &Bson) -> QueryError {
    QueryError::PathNotViable {
        operator: operator.to_owned(),
        path: path.join("."),
        message: format!("cannot create field '{part}' in element {element}"),
    }
}

/// Sets the value at `path`, creating documents (and null-padded array slots) on the way.
fn set(root: &mut Bson, path: &[String], value: Bson, operator: &str) -> Result<(), QueryError> {
    assert!(!path.is_empty(), "{operator} sets a field, never the root");
    let mut current = root;
    for (depth, part) in path.iter().enumerate() {
        let last = depth + 1 == path.len();
        current = match current {
            Bson::Document(document) => {
                if last {
                    document.insert(part.clone(), value);
                    return Ok(());
                }
                if !document.contains_key(part) {
                    document.insert(part.clone(), Document::new());
                }
                document.get_mut(part).expect("present: found or just inserted")
            }
            Bson::Array(items) => {
                let Some(index) = array_index(part) else {
                    return Err(not_viable(operator, path, part, &Bson::Array(items.clone())));
                };
                if index >= items.len() {
                    if index - items.len() > ARRAY_PADDING_MAX {
                        let message = format!("index {index} would pad the array too far");
                        return Err(QueryError::bad_value(operator, &path.join("."), message));
                    }
                    items.resize(index, Bson::Null);
                    items.push(Bson::Document(Document::new()));
                }
                if last {
                    items[index] = value;
                    return Ok(());
                }
                &mut items[index]
            }
            other => return Err(not_viable(operator, path, part, other)),
        };
    }
    unreachable!("the loop returns at the last part of a non-empty path")
}

/// Removes the value at `path`; an array element becomes `null`. Returns whether it existed.
fn remove(root: &mut Bson, path: &[String]) -> bool {
    let Some((last, parents)) = path.split_last() else { return false };
    match get_mut(root, parents) {
        Some(Bson::Document(document)) => document.remove(last).is_some(),
        Some(Bson::Array(items)) => {
            match array_index(last).and_then(|index| items.get_mut(index)) {
                Some(slot) => {
                    *slot = Bson::Null;
                    true
                }
                None => false,
            }
        }
        _ => false,
    }
}

fn set_if_different(
    root: &mut Bson,
    path: &[String],
    value: Bson,
    operator: &str,
    changes: &mut Changes,
) -> Result<(), QueryError> {
    if get(root, path) == Some(&value) {
        return Ok(());
    }
    set(root, path, value, operator)?;
    changes.updated.push(path.join("."));
    Ok(())
}

/// `$inc` (add) or `$mul` of two numbers, with MongoDB's result type; `None` on overflow.
fn arithmetic(add: bool, current: &Bson, operand: &Bson) -> Option<Bson> {
    let decimal = matches!(current, Bson::Decimal128(_)) || matches!(operand, Bson::Decimal128(_));
    let double = matches!(current, Bson::Double(_)) || matches!(operand, Bson::Double(_));
    let (x, y) = (value::number(current)?, value::number(operand)?);
    if decimal || double {
        let as_f64 = |number| match number {
            value::Number::Integer(integer) => integer as f64,
            value::Number::Double(double) => double,
        };
        let (a, b) = (as_f64(x), as_f64(y));
        let result = if add { a + b } else { a * b };
        if decimal {
            return Some(Bson::Decimal128(result.to_string().parse().ok()?));
        }
        return Some(Bson::Double(result));
    }
    let (value::Number::Integer(a), value::Number::Integer(b)) = (x, y) else {
        unreachable!("neither operand is a double or a decimal");
    };
    let result = if add { a.checked_add(b)? } else { a.checked_mul(b)? };
    let both_int32 = matches!(current, Bson::Int32(_)) && matches!(operand, Bson::Int32(_));
    match i32::try_from(result) {
        Ok(small) if both_int32 => Some(Bson::Int32(small)),
        _ => Some(Bson::Int64(result)),
    }
}

fn zero_like(operand: &Bson) -> Bson {
    match operand {
        Bson::Int64(_) => Bson::Int64(0),
        Bson::Double(_) => Bson::Double(0.0),
        Bson::Decimal128(_) => Bson::Decimal128("0".parse().expect("0 is a decimal")),
        _ => Bson::Int32(0),
    }
}

impl Update {
    /// Applies the update to one document; on error the document is left unchanged.
    pub fn apply(
        &self,
        document: &mut Document,
        context: &UpdateContext,
    ) -> Result<Changes, QueryError> {
        let mut root = Bson::Document(document.clone());
        let mut resolved: Vec<(usize, Vec<String>)> = Vec::new();
        for (index, operation) in self.operations.iter().enumerate() {
            if matches!(operation.action, Action::SetOnInsert(_)) && !context.is_insert {
                continue;
            }
            let mut paths = Vec::new();
            self.resolve(
                operation,
                Some(&root),
                &operation.parts,
                Vec::new(),
                context,
                &mut paths,
            )?;
            resolved.extend(paths.into_iter().map(|path| (index, path)));
        }
        self.check_resolved_conflicts(&resolved)?;
        // Stable, so operations on one path keep their written order.
        resolved.sort_by(|a, b| a.1.cmp(&b.1));
        let mut changes = Changes::default();
        for (index, path) in &resolved {
            let operation = &self.operations[*index];
            apply_operation(operation, path, &mut root, context, &mut changes)?;
        }
        let Bson::Document(updated) = root else {
            unreachable!("the root stays a document: every path has a field name first");
        };
        if let Some(id) = document.get("_id")
            && updated.get("_id") != Some(id)
        {
            let operator = resolved
                .iter()
                .map(|(index, _)| &self.operations[*index])
                .find(|operation| operation.path.split('.').next() == Some("_id"))
                .map_or("$set", |operation| operation.operator);
            return Err(QueryError::ImmutableField {
                operator: operator.to_owned(),
                path: "_id".to_owned(),
            });
        }
        // Every reported path is a concrete one: positional parts were all resolved.
        assert!(changes.updated.iter().chain(&changes.removed).all(|path| !path.contains('$')));
        *document = updated;
        Ok(changes)
    }

    /// The concrete paths an operation's positional parts stand for in this document.
    fn resolve(
        &self,
        operation: &Operation,
        value: Option<&Bson>,
        parts: &[Part],
        prefix: Vec<String>,
        context: &UpdateContext,
        out: &mut Vec<Vec<String>>,
    ) -> Result<(), QueryError> {
        let Some((part, rest)) = parts.split_first() else {
            out.push(prefix);
            return Ok(());
        };
        let descend = |name: String, out: &mut Vec<Vec<String>>| {
            let next = value.and_then(|value| child(value, &name));
            let mut longer = prefix.clone();
            longer.push(name);
            self.resolve(operation, next, rest, longer, context, out)
        };
        let filter = match part {
            Part::Field(name) => return descend(name.clone(), out),
            Part::Positional => {
                let Some(position) = context.position else {
                    let message = "the positional operator did not find the match needed";
                    return Err(QueryError::bad_value(
                        operation.operator,
                        &operation.path,
                        message,
                    ));
                };
                return descend(position.to_string(), out);
            }
            Part::Every => None,
            Part::Filtered(identifier) => Some((identifier, &self.array_filters[identifier])),
        };
        let items = match value {
            Some(Bson::Array(items)) => items,
            Some(other) => {
                let message = format!("cannot apply array updates to non-array element {other}");
                return Err(QueryError::bad_value(operation.operator, &prefix.join("."), message));
            }
            None => {
                let message = "the path must exist in the document to apply array updates";
                return Err(QueryError::bad_value(operation.operator, &prefix.join("."), message));
            }
        };
        for (index, item) in items.iter().enumerate() {
            let selected = filter.is_none_or(|(identifier, filter)| {
                let mut wrapper = Document::new();
                wrapper.insert(identifier.clone(), item.clone());
                filter.matches(&wrapper)
            });
            if selected {
                descend(index.to_string(), out)?;
            }
        }
        Ok(())
    }

    fn check_resolved_conflicts(
        &self,
        resolved: &[(usize, Vec<String>)],
    ) -> Result<(), QueryError> {
        let mut seen: Vec<&[String]> = Vec::with_capacity(resolved.len());
        for (index, path) in resolved {
            let operation = &self.operations[*index];
            let mut paths = vec![path.as_slice()];
            if let Action::Rename { target } = &operation.action {
                paths.push(target.as_slice());
            }
            for path in paths {
                let earlier = seen
                    .iter()
                    .find(|earlier| is_prefix(earlier, path) || is_prefix(path, earlier));
                if let Some(earlier) = earlier {
                    return Err(QueryError::ConflictingPaths {
                        operator: operation.operator.to_owned(),
                        path: path.join("."),
                        conflict: earlier.join("."),
                    });
                }
                seen.push(path);
            }
        }
        Ok(())
    }

    /// The document an upsert inserts when nothing matched `filter`: the filter's equality
    /// fields (MongoDB's rule), then this update applied with `context.is_insert` set.
    pub fn upsert(
        &self,
        filter: &Filter,
        context: &UpdateContext,
    ) -> Result<(Document, Changes), QueryError> {
        assert!(context.is_insert, "an upsert inserts");
        let mut document = upsert_seed(filter)?;
        let changes = self.apply(&mut document, context)?;
        Ok((document, changes))
    }
}

/// The fields an upsert copies from its filter: every top-level equality (and those inside a
/// top-level `$and`), with `_id` first.
pub fn upsert_seed(filter: &Filter) -> Result<Document, QueryError> {
    let mut root = Bson::Document(Document::new());
    for (path, value) in filter.equalities() {
        let parts: Vec<String> = path.split('.').map(str::to_owned).collect();
        if parts.iter().any(|part| part.is_empty() || part.starts_with('$')) {
            continue;
        }
        if get(&root, &parts).is_none() {
            set(&mut root, &parts, value.clone(), "upsert")?;
        }
    }
    let Bson::Document(seed) = root else { unreachable!("the root stays a document") };
    Ok(with_id_first(seed))
}

/// The document with its `_id` (if any) moved to the front, as MongoDB stores documents.
pub fn with_id_first(document: Document) -> Document {
    if document.keys().next().is_none_or(|key| key == "_id") || !document.contains_key("_id") {
        return document;
    }
    let mut ordered = Document::new();
    ordered.insert("_id", document.get("_id").cloned().unwrap_or(Bson::Null));
    for (key, value) in document {
        if key != "_id" {
            ordered.insert(key, value);
        }
    }
    ordered
}

/// Checks a replacement document and returns what is stored: no `$`-prefixed field names, and
/// an `_id`, if given, equal to the replaced document's (which is kept, first).
pub fn validate_replacement(
    replacement: &Document,
    original: Option<&Document>,
) -> Result<Document, QueryError> {
    for (key, value) in replacement {
        if key.starts_with('$') {
            return Err(QueryError::DollarPrefixedField {
                operator: "replace".to_owned(),
                path: key.clone(),
            });
        }
        check_storable("replace", key, value)?;
    }
    let Some(original_id) = original.and_then(|original| original.get("_id")) else {
        return Ok(with_id_first(replacement.clone()));
    };
    if replacement.get("_id").is_some_and(|id| id != original_id) {
        return Err(QueryError::ImmutableField {
            operator: "replace".to_owned(),
            path: "_id".to_owned(),
        });
    }
    let mut stored = Document::new();
    stored.insert("_id", original_id.clone());
    for (key, value) in replacement {
        if key != "_id" {
            stored.insert(key.clone(), value.clone());
        }
    }
    Ok(stored)
}

/// The document a replacement upsert inserts: the replacement, with the filter's `_id`
/// equality when the replacement has none.
pub fn replacement_upsert(filter: &Filter, replacement: &Document) -> Result<Document, QueryError> {
    let mut stored = validate_replacement(replacement, None)?;
    if !stored.contains_key("_id")
        && let Some((_, id)) = filter.equalities().into_iter().find(|(path, _)| *path == "_id")
    {
        stored.insert("_id", id.clone());
        stored = with_id_first(stored);
    }
    Ok(stored)
}

fn apply_operation(
    operation: &Operation,
    path: &[String],
    root: &mut Bson,
    context: &UpdateContext,
    changes: &mut Changes,
) -> Result<(), QueryError> {
    let operator = operation.operator;
    let shown = || path.join(".");
    let current = get(root, path);
    let replacement = match &operation.action {
        Action::Set(value) | Action::SetOnInsert(value) => Some(value.clone()),
        Action::Unset => {
            if remove(root, path) {
                changes.removed.push(shown());
            }
            None
        }
        Action::Increment(operand) | Action::Multiply(operand) => {
            let add = matches!(operation.action, Action::Increment(_));
            Some(match current {
                None if add => operand.clone(),
                None => zero_like(operand),
                Some(current) if value::number(current).is_none() => {
                    let message = format!("cannot apply {operator} to non-numeric value {current}");
                    return Err(QueryError::type_mismatch(operator, &shown(), message));
                }
                Some(current) => arithmetic(add, current, operand).ok_or_else(|| {
                    let message = format!("{operator} of {current} by {operand} overflows");
                    QueryError::bad_value(operator, &shown(), message)
                })?,
            })
        }
        Action::Minimum(operand) | Action::Maximum(operand) => {
            let wanted = if matches!(operation.action, Action::Minimum(_)) {
                Ordering::Less
            } else {
                Ordering::Greater
            };
            let replace = current.is_none_or(|current| value::compare(operand, current) == wanted);
            replace.then(|| operand.clone())
        }
        Action::Rename { target } => {
            rename(operation, path, target, root, changes)?;
            None
        }
        Action::CurrentDate { timestamp } => Some(if *timestamp {
            let seconds = context.now.timestamp_millis().div_euclid(1000);
            let time = u32::try_from(seconds).unwrap_or(0);
            Bson::Timestamp(bson::Timestamp { time, increment: 1 })
        } else {
            Bson::DateTime(context.now)
        }),
        _ => apply_array_operation(operation, path, current)?,
    };
    if let Some(value) = replacement {
        set_if_different(root, path, value, operator, changes)?;
    }
    Ok(())
}

/// The new array for `$push`, `$addToSet`, `$pop`, `$pull` and `$pullAll`, or `None` to leave
/// the field alone.
fn apply_array_operation(
    operation: &Operation,
    path: &[String],
    current: Option<&Bson>,
) -> Result<Option<Bson>, QueryError> {
    let operator = operation.operator;
    let shown = path.join(".");
    let mut items = match current {
        Some(Bson::Array(items)) => items.clone(),
        None => match operation.action {
            Action::Push { .. } | Action::AddToSet(_) => Vec::new(),
            _ => return Ok(None),
        },
        Some(other) => {
            let message = format!("the field '{shown}' must be an array but holds {other}");
            return Err(match operation.action {
                Action::Pop { .. } => QueryError::type_mismatch(operator, &shown, message),
                _ => QueryError::bad_value(operator, &shown, message),
            });
        }
    };
    match &operation.action {
        Action::Push { items: pushed, position, slice, sort } => {
            push(&mut items, pushed, *position, *slice, sort.as_ref())
        }
        Action::AddToSet(added) => {
            for item in added {
                if !items.iter().any(|present| value::equal(present, item)) {
                    items.push(item.clone());
                }
            }
        }
        Action::Pop { first } => {
            if items.is_empty() {
                return Ok(None);
            }
            if *first {
                items.remove(0);
            } else {
                items.pop();
            }
        }
        Action::Pull(matcher) => items.retain(|item| !matcher.matches(item)),
        Action::PullAll(pulled) => {
            items.retain(|item| !pulled.iter().any(|value| value::equal(item, value)))
        }
        _ => unreachable!("{operator} is not an array operator"),
    }
    Ok(Some(Bson::Array(items)))
}

fn push(
    items: &mut Vec<Bson>,
    pushed: &[Bson],
    position: Option<i64>,
    slice: Option<i64>,
    sort: Option<&PushSort>,
) {
    let length = i64::try_from(items.len()).expect("an array length fits i64");
    let at = match position {
        None => length,
        Some(position) if position >= 0 => position.min(length),
        Some(position) => (length + position).max(0),
    };
    let at = usize::try_from(at).expect("clamped to 0..=length");
    assert!(at <= items.len());
    let length_before = items.len();
    items.splice(at..at, pushed.iter().cloned());
    assert_eq!(items.len(), length_before + pushed.len());
    match sort {
        None => {}
        Some(PushSort::Whole { descending }) => items.sort_by(|a, b| {
            let order = value::compare(a, b);
            if *descending { order.reverse() } else { order }
        }),
        Some(PushSort::Fields(sort)) => items.sort_by(|a, b| sort.compare_elements(a, b)),
    }
    if let Some(slice) = slice {
        let keep = usize::try_from(slice.unsigned_abs()).unwrap_or(usize::MAX).min(items.len());
        if slice >= 0 {
            items.truncate(keep);
        } else {
            items.drain(..items.len() - keep);
        }
        assert!(items.len() <= keep);
    }
}

fn rename(
    operation: &Operation,
    source: &[String],
    target: &[String],
    root: &mut Bson,
    changes: &mut Changes,
) -> Result<(), QueryError> {
    let Some(value) = get(root, source).cloned() else { return Ok(()) };
    let through_array = |path: &[String]| {
        (1..path.len()).any(|depth| matches!(get(root, &path[..depth]), Some(Bson::Array(_))))
    };
    if through_array(source) {
        let message = "the source field cannot be an array element";
        return Err(QueryError::bad_value(operation.operator, &operation.path, message));
    }
    if through_array(target) {
        let message = "the destination field cannot be an array element";
        return Err(QueryError::bad_value(operation.operator, &target.join("."), message));
    }
    remove(root, source);
    changes.removed.push(source.join("."));
    set(root, target, value, operation.operator)?;
    changes.updated.push(target.join("."));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    fn context(position: Option<usize>) -> UpdateContext {
        UpdateContext { now: bson::DateTime::from_millis(86_400_000), is_insert: false, position }
    }

    /// Applies `update` to `document` and compares the result and the changed paths.
    #[track_caller]
    fn check(update: Document, document: Document, expected: Document, updated: &[&str]) {
        let parsed = Update::parse(&update, &[]).expect("a valid update");
        let mut result = document;
        let changes = parsed.apply(&mut result, &context(Some(1))).expect("applies");
        assert_eq!(result, expected, "{update}");
        assert_eq!(changes.updated, updated, "{update}");
    }

    #[test]
    fn field_operators() {
        check(
            doc! {"$set": {"b": 1, "a.c": 2}},
            doc! {"_id": 0},
            doc! {"_id": 0, "a": {"c": 2}, "b": 1},
            &["a.c", "b"],
        );
        check(
            doc! {"$inc": {"a": 1, "b": 2.5}},
            doc! {"a": i32::MAX},
            doc! {"a": 2_147_483_648_i64, "b": 2.5},
            &["a", "b"],
        );
        check(
            doc! {"$mul": {"a": 2, "z": 3_i64}},
            doc! {"a": 1.5},
            doc! {"a": 3.0, "z": 0_i64},
            &["a", "z"],
        );
        check(
            doc! {"$min": {"a": 1}, "$max": {"b": "x"}},
            doc! {"a": 2, "b": 3},
            doc! {"a": 1, "b": "x"},
            &["a", "b"],
        );
        check(doc! {"$set": {"a": 1}}, doc! {"a": 1}, doc! {"a": 1}, &[]);
        check(doc! {"$rename": {"a.b": "c"}}, doc! {"a": {"b": 1}}, doc! {"a": {}, "c": 1}, &["c"]);
        check(doc! {"$set": {"a.3": 1}}, doc! {"a": [0]}, doc! {"a": [0, null, null, 1]}, &["a.3"]);
        check(
            doc! {"$currentDate": {"d": true}},
            doc! {},
            doc! {"d": bson::DateTime::from_millis(86_400_000)},
            &["d"],
        );
    }

    #[test]
    fn array_operators() {
        let push = doc! {"$push": {"a": {"$each": [5, 1], "$sort": -1, "$slice": 3}}};
        check(push, doc! {"a": [3, 2]}, doc! {"a": [5, 3, 2]}, &["a"]);
        check(
            doc! {"$addToSet": {"a": {"$each": [1, 4]}}},
            doc! {"a": [1.0]},
            doc! {"a": [1.0, 4]},
            &["a"],
        );
        check(doc! {"$pop": {"a": -1}}, doc! {"a": [1, 2]}, doc! {"a": [2]}, &["a"]);
        check(doc! {"$pull": {"a": {"$gte": 2}}}, doc! {"a": [1, 2, 3]}, doc! {"a": [1]}, &["a"]);
        check(
            doc! {"$pull": {"a": {"b": 1}}},
            doc! {"a": [{"b": 1, "c": 1}, {"b": 2}]},
            doc! {"a": [{"b": 2}]},
            &["a"],
        );
        check(doc! {"$pullAll": {"a": [1, 3]}}, doc! {"a": [1, 2, 3]}, doc! {"a": [2]}, &["a"]);
        check(
            doc! {"$set": {"a.$.b": 9}},
            doc! {"a": [{"b": 1}, {"b": 2}]},
            doc! {"a": [{"b": 1}, {"b": 9}]},
            &["a.1.b"],
        );
        check(doc! {"$inc": {"a.$[]": 1}}, doc! {"a": [1, 2]}, doc! {"a": [2, 3]}, &["a.0", "a.1"]);
    }

    #[test]
    fn array_filters_select_elements() {
        let update =
            Update::parse(&doc! {"$set": {"a.$[big].ok": true}}, &[doc! {"big.v": {"$gt": 1}}])
                .expect("valid");
        let mut document = doc! {"a": [{"v": 1}, {"v": 2}]};
        let changes = update.apply(&mut document, &context(None)).expect("applies");
        assert_eq!(document, doc! {"a": [{"v": 1}, {"v": 2, "ok": true}]});
        assert_eq!(changes.updated, ["a.1.ok"]);
    }

    #[test]
    fn errors_name_operator_and_path_and_leave_the_document_alone() {
        let parse = |update: Document| Update::parse(&update, &[]).expect_err("malformed");
        assert_eq!(parse(doc! {"$inc": {"a": 1}, "$set": {"a.b": 1}}).code(), 40);
        assert_eq!(
            parse(doc! {"$foo": {"a": 1}}),
            QueryError::UnknownModifier { operator: "$foo".into() }
        );
        assert_eq!(parse(doc! {"$inc": {"a": "1"}}).code(), 14);
        assert_eq!(parse(doc! {"$set": {"a..b": 1}}).code(), 56);
        assert_eq!(parse(doc! {"$set": {"a": {"$b": 1}}}).code(), 52);
        assert_eq!(parse(doc! {"$pop": {"a": 2}}).code(), 9);
        assert_eq!(parse(doc! {"a": 1}).code(), 9);
        let update = Update::parse(&doc! {"$inc": {"a": 1, "b": 1}}, &[]).expect("valid");
        let mut document = doc! {"_id": 1, "a": 1, "b": "x"};
        let error = update.apply(&mut document, &context(None)).expect_err("b is a string");
        assert_eq!(error.code(), 14);
        assert_eq!(document, doc! {"_id": 1, "a": 1, "b": "x"});
        let update = Update::parse(&doc! {"$set": {"_id": 2}}, &[]).expect("valid");
        assert_eq!(update.apply(&mut document, &context(None)).expect_err("immutable").code(), 66);
    }

    #[test]
    fn upserts_and_replacements() {
        let filter =
            Filter::parse(&doc! {"x": 1, "a.b": 2, "c": {"$gt": 1}, "_id": 7}).expect("valid");
        let update =
            Update::parse(&doc! {"$set": {"d": 1}, "$setOnInsert": {"e": 1}}, &[]).expect("valid");
        let insert = UpdateContext { is_insert: true, ..context(None) };
        let (document, _) = update.upsert(&filter, &insert).expect("upserts");
        assert_eq!(document, doc! {"_id": 7, "x": 1, "a": {"b": 2}, "d": 1, "e": 1});
        let original = doc! {"_id": 7, "x": 1};
        let replaced = validate_replacement(&doc! {"y": 2}, Some(&original)).expect("valid");
        assert_eq!(replaced, doc! {"_id": 7, "y": 2});
        assert_eq!(
            validate_replacement(&doc! {"_id": 8}, Some(&original)).expect_err("id").code(),
            66
        );
        assert_eq!(validate_replacement(&doc! {"$set": {"a": 1}}, None).expect_err("$").code(), 52);
        assert_eq!(
            replacement_upsert(&filter, &doc! {"y": 2}).expect("valid"),
            doc! {"_id": 7, "y": 2}
        );
    }
}
