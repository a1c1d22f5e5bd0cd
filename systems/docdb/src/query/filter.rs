//! MongoDB query filters: parsing a filter document once, then matching documents against it.
//!
//! Semantics follow MongoDB 4.2: implicit equality, dotted paths through nested documents and
//! arrays (`query::path`), a condition on an array field matching any element or the whole
//! array, `null` matching missing fields, and type bracketing (`$gt: 5` never matches a string;
//! MinKey and MaxKey compare across types; NaN only equals NaN). A match also reports the index
//! of the first array iterated on the way, which the positional `$` of projections and updates
//! uses. `predicates` exposes the top-level AND-ed conditions a planner may serve from an index.

use bson::{Bson, Document};

use crate::query::error::QueryError;
use crate::query::path::{self, Candidate};
use crate::query::regex::Pattern;
use crate::value;

/// A parsed filter: every expression must match (an implicit `$and`).
#[derive(Clone, Debug)]
pub struct Filter {
    expressions: Vec<Expression>,
}

/// What a successful match learned about the document.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MatchDetails {
    /// The index of the first array the last positive condition iterated, for positional `$`.
    pub position: Option<usize>,
}

/// A top-level condition a planner may answer from an index on `path` (see `Filter::predicates`).
#[derive(Clone, Debug, PartialEq)]
pub enum Predicate {
    /// The field equals this value (numbers compare across widths).
    Eq(Bson),
    /// The field lies within these bounds; `true` means the bound is inclusive.
    Range {
        /// The lower bound, if any.
        lower: Option<(Bson, bool)>,
        /// The upper bound, if any.
        upper: Option<(Bson, bool)>,
    },
    /// The field equals one of these values.
    In(Vec<Bson>),
}

#[derive(Clone, Debug)]
enum Expression {
    And(Vec<Expression>),
    Or(Vec<Expression>),
    Nor(Vec<Expression>),
    Field { path: String, parts: Vec<String>, conditions: Vec<Condition> },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Comparison {
    Greater,
    GreaterOrEqual,
    Less,
    LessOrEqual,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TypeSpec {
    Code(u8),
    Number,
}

#[derive(Clone, Debug)]
pub(crate) enum Condition {
    Equal(Bson),
    Compare(Comparison, Bson),
    In(Vec<Condition>),
    Not(Vec<Condition>),
    Exists(bool),
    Type(Vec<TypeSpec>),
    Size(usize),
    Modulo { divisor: i64, remainder: i64 },
    Regex(Pattern),
    All(Vec<Condition>),
    ElemMatch(Box<ElementMatcher>),
}

/// A condition on one array element: `$elemMatch`, `$pull` and projection `$elemMatch` use it.
#[derive(Clone, Debug)]
pub(crate) enum ElementMatcher {
    /// A filter over an element that is a document (or an array, by index).
    Document(Filter),
    /// Operator conditions on the element itself (`{$gt: 5}`).
    Value(Vec<Condition>),
}

/// The root a filter is evaluated against: a document, or an array element.
#[derive(Clone, Copy)]
enum Root<'a> {
    Document(&'a Document),
    Value(&'a Bson),
}

impl Filter {
    /// Compiles a filter document; a malformed one is a typed error naming operator and path.
    pub fn parse(filter: &Document) -> Result<Filter, QueryError> {
        if path::too_deep(filter) {
            return Err(QueryError::bad_value("filter", "", "nested too deeply"));
        }
        Filter::parse_nested(filter)
    }

    /// `parse` for a part of a filter whose depth the caller has checked.
    pub(crate) fn parse_nested(filter: &Document) -> Result<Filter, QueryError> {
        Ok(Filter { expressions: parse_document(filter)? })
    }

    /// Whether `document` matches.
    pub fn matches(&self, document: &Document) -> bool {
        self.match_details(document).is_some()
    }

    /// `Some` with what the match learned when `document` matches, else `None`.
    pub fn match_details(&self, document: &Document) -> Option<MatchDetails> {
        let mut details = MatchDetails::default();
        let matched = all_match(&self.expressions, Root::Document(document), &mut details);
        matched.then_some(details)
    }

    /// Whether the filter is empty (matches every document).
    pub fn is_empty(&self) -> bool {
        self.expressions.is_empty()
    }

    /// The top-level AND-ed conditions an index on their path can serve, conservatively: each
    /// alone selects a superset of the matching documents. Two on the same path may only be
    /// intersected when the index is not multikey (`{a: {$gt: 5, $lt: 3}}` matches `[1, 10]`).
    pub fn predicates(&self) -> Vec<(String, Predicate)> {
        let mut out = Vec::new();
        predicates_of(&self.expressions, &mut out);
        out
    }

    /// Paths and values of the top-level equality conditions, as an upsert copies them.
    pub(crate) fn equalities(&self) -> Vec<(&str, &Bson)> {
        let mut out = Vec::new();
        equalities_of(&self.expressions, &mut out);
        out
    }

    /// The first part of every field path, through `$and`, `$or` and `$nor`.
    pub(crate) fn first_parts(&self) -> Vec<&str> {
        let mut out = Vec::new();
        first_parts_of(&self.expressions, &mut out);
        out
    }
}

fn first_parts_of<'a>(expressions: &'a [Expression], out: &mut Vec<&'a str>) {
    for expression in expressions {
        match expression {
            Expression::And(children) | Expression::Or(children) | Expression::Nor(children) => {
                first_parts_of(children, out)
            }
            Expression::Field { parts, .. } => out.push(&parts[0]),
        }
    }
}

fn equalities_of<'a>(expressions: &'a [Expression], out: &mut Vec<(&'a str, &'a Bson)>) {
    for expression in expressions {
        match expression {
            Expression::And(children) => equalities_of(children, out),
            // A one-clause `$or` is its clause (MongoDB normalises it so).
            Expression::Or(children) if children.len() == 1 => equalities_of(children, out),
            Expression::Field { path, conditions, .. } => {
                for condition in conditions {
                    if let Condition::Equal(value) = condition {
                        out.push((path.as_str(), value));
                    }
                }
            }
            Expression::Or(_) | Expression::Nor(_) => {}
        }
    }
}

/// Whether a value can bound an index scan: not null (which also matches missing fields), not
/// an array (which matches by element), not NaN, not MinKey/MaxKey (which compare across types).
fn indexable(value: &Bson) -> bool {
    let not_a_number = matches!(value::number(value), Some(value::Number::Double(x)) if x.is_nan());
    !not_a_number
        && !matches!(
            value,
            Bson::Null | Bson::Undefined | Bson::Array(_) | Bson::MinKey | Bson::MaxKey
        )
}

fn predicates_of(expressions: &[Expression], out: &mut Vec<(String, Predicate)>) {
    for expression in expressions {
        let Expression::Field { path, conditions, .. } = expression else {
            if let Expression::And(children) = expression {
                predicates_of(children, out);
            }
            continue;
        };
        for condition in conditions {
            let predicate = match condition {
                Condition::Equal(value) if indexable(value) => Predicate::Eq(value.clone()),
                Condition::Compare(comparison, value) if indexable(value) => {
                    let bound = Some((
                        value.clone(),
                        !matches!(comparison, Comparison::Greater | Comparison::Less),
                    ));
                    match comparison {
                        Comparison::Greater | Comparison::GreaterOrEqual => {
                            Predicate::Range { lower: bound, upper: None }
                        }
                        Comparison::Less | Comparison::LessOrEqual => {
                            Predicate::Range { lower: None, upper: bound }
                        }
                    }
                }
                Condition::In(items) => {
                    let values: Option<Vec<Bson>> = items
                        .iter()
                        .map(|item| match item {
                            Condition::Equal(value) if indexable(value) => Some(value.clone()),
                            _ => None,
                        })
                        .collect();
                    let Some(values) = values else { continue };
                    Predicate::In(values)
                }
                _ => continue,
            };
            out.push((path.clone(), predicate));
        }
    }
}

fn parse_document(filter: &Document) -> Result<Vec<Expression>, QueryError> {
    let mut expressions = Vec::with_capacity(filter.len());
    for (key, value) in filter {
        if !key.starts_with('$') {
            let parts = path::split(key);
            let conditions = parse_field_value(key, value)?;
            expressions.push(Expression::Field { path: key.clone(), parts, conditions });
            continue;
        }
        let children = match key.as_str() {
            "$and" | "$or" | "$nor" => parse_clauses(key, value)?,
            "$comment" => continue,
            _ => {
                return Err(QueryError::UnknownOperator {
                    operator: key.clone(),
                    path: String::new(),
                });
            }
        };
        expressions.push(match key.as_str() {
            "$and" => Expression::And(children),
            "$or" => Expression::Or(children),
            _ => Expression::Nor(children),
        });
    }
    Ok(expressions)
}

fn parse_clauses(operator: &str, value: &Bson) -> Result<Vec<Expression>, QueryError> {
    let Bson::Array(items) = value else {
        return Err(QueryError::bad_value(operator, "", "argument must be an array"));
    };
    if items.is_empty() {
        return Err(QueryError::bad_value(operator, "", "argument must be a nonempty array"));
    }
    let mut children = Vec::with_capacity(items.len());
    for item in items {
        let Bson::Document(clause) = item else {
            return Err(QueryError::bad_value(operator, "", "every entry must be an object"));
        };
        children.push(Expression::And(parse_document(clause)?));
    }
    Ok(children)
}

fn is_operator_document(document: &Document) -> bool {
    document.keys().next().is_some_and(|key| key.starts_with('$'))
}

fn parse_field_value(path: &str, value: &Bson) -> Result<Vec<Condition>, QueryError> {
    match value {
        Bson::Document(operators) if is_operator_document(operators) => {
            parse_operators(path, operators)
        }
        Bson::RegularExpression(regex) => {
            Ok(vec![Condition::Regex(Pattern::from_bson(regex, path)?)])
        }
        _ => Ok(vec![Condition::Equal(value.clone())]),
    }
}

/// Parses `{$gt: 1, $lt: 5, ...}` on `path`.
pub(crate) fn parse_operators(
    path: &str,
    operators: &Document,
) -> Result<Vec<Condition>, QueryError> {
    let mut conditions = Vec::with_capacity(operators.len());
    let mut regex: Option<&Bson> = None;
    let mut options: Option<&Bson> = None;
    for (operator, operand) in operators {
        let condition = match operator.as_str() {
            "$regex" => {
                regex = Some(operand);
                continue;
            }
            "$options" => {
                options = Some(operand);
                continue;
            }
            _ => parse_operator(path, operator, operand)?,
        };
        conditions.push(condition);
    }
    if regex.is_some() || options.is_some() {
        conditions.push(Condition::Regex(Pattern::from_operators(regex, options, path)?));
    }
    Ok(conditions)
}

fn parse_operator(path: &str, operator: &str, operand: &Bson) -> Result<Condition, QueryError> {
    let compare = |comparison| Ok(Condition::Compare(comparison, operand.clone()));
    match operator {
        "$eq" => Ok(Condition::Equal(operand.clone())),
        "$ne" => Ok(Condition::Not(vec![Condition::Equal(operand.clone())])),
        "$gt" => compare(Comparison::Greater),
        "$gte" => compare(Comparison::GreaterOrEqual),
        "$lt" => compare(Comparison::Less),
        "$lte" => compare(Comparison::LessOrEqual),
        "$in" => Ok(Condition::In(parse_in_list(path, operator, operand)?)),
        "$nin" => Ok(Condition::Not(vec![Condition::In(parse_in_list(path, operator, operand)?)])),
        "$exists" => Ok(Condition::Exists(truthy(operand))),
        "$type" => Ok(Condition::Type(parse_types(path, operand)?)),
        "$size" => parse_size(path, operand),
        "$mod" => parse_modulo(path, operand),
        "$all" => parse_all(path, operand),
        "$elemMatch" => {
            Ok(Condition::ElemMatch(Box::new(ElementMatcher::for_elem_match(operand, path)?)))
        }
        "$not" => parse_not(path, operand),
        _ => Err(QueryError::UnknownOperator {
            operator: operator.to_owned(),
            path: path.to_owned(),
        }),
    }
}

fn truthy(value: &Bson) -> bool {
    match value {
        Bson::Boolean(flag) => *flag,
        Bson::Null | Bson::Undefined => false,
        _ => match value::number(value) {
            Some(value::Number::Integer(number)) => number != 0,
            Some(value::Number::Double(number)) => number != 0.0,
            None => true,
        },
    }
}

fn parse_in_list(path: &str, operator: &str, operand: &Bson) -> Result<Vec<Condition>, QueryError> {
    let Bson::Array(items) = operand else {
        return Err(QueryError::bad_value(operator, path, "needs an array"));
    };
    let mut conditions = Vec::with_capacity(items.len());
    for item in items {
        conditions.push(match item {
            Bson::RegularExpression(regex) => Condition::Regex(Pattern::from_bson(regex, path)?),
            Bson::Document(inner) if is_operator_document(inner) => {
                return Err(QueryError::bad_value(operator, path, "cannot nest $ under $in"));
            }
            _ => Condition::Equal(item.clone()),
        });
    }
    Ok(conditions)
}

fn parse_not(path: &str, operand: &Bson) -> Result<Condition, QueryError> {
    match operand {
        Bson::RegularExpression(regex) => {
            Ok(Condition::Not(vec![Condition::Regex(Pattern::from_bson(regex, path)?)]))
        }
        Bson::Document(inner) if is_operator_document(inner) => {
            Ok(Condition::Not(parse_operators(path, inner)?))
        }
        _ => Err(QueryError::bad_value("$not", path, "needs a regex or a document of operators")),
    }
}

/// The integer a numeric operand holds exactly, if it does.
pub(crate) fn exact_integer(value: &Bson) -> Option<i64> {
    match value::number(value)? {
        value::Number::Integer(number) => Some(number),
        value::Number::Double(number) => {
            let in_range = number.fract() == 0.0 && number.abs() < 9.2e18;
            // In range and whole, so the cast is exact.
            in_range.then_some(number as i64)
        }
    }
}

fn parse_size(path: &str, operand: &Bson) -> Result<Condition, QueryError> {
    let Some(size) = exact_integer(operand) else {
        return Err(QueryError::bad_value("$size", path, "needs a whole number"));
    };
    let Ok(size) = usize::try_from(size) else {
        return Err(QueryError::bad_value("$size", path, "may not be negative"));
    };
    Ok(Condition::Size(size))
}

/// A number truncated toward zero, as `$mod` reads its operands and fields.
fn truncated(value: &Bson) -> Option<i64> {
    match value::number(value)? {
        value::Number::Integer(number) => Some(number),
        value::Number::Double(number) => {
            // Saturating and NaN-to-zero, as MongoDB's conversion to long.
            number.is_finite().then_some(number.trunc() as i64)
        }
    }
}

fn parse_modulo(path: &str, operand: &Bson) -> Result<Condition, QueryError> {
    let Bson::Array(items) = operand else {
        return Err(QueryError::bad_value("$mod", path, "needs an array"));
    };
    let [divisor, remainder] = items.as_slice() else {
        return Err(QueryError::bad_value("$mod", path, "needs [divisor, remainder]"));
    };
    let Some(divisor) = truncated(divisor) else {
        return Err(QueryError::bad_value("$mod", path, "malformed mod, divisor not a number"));
    };
    let Some(remainder) = truncated(remainder) else {
        return Err(QueryError::bad_value("$mod", path, "malformed mod, remainder not a number"));
    };
    if divisor == 0 {
        return Err(QueryError::bad_value("$mod", path, "divisor cannot be 0"));
    }
    Ok(Condition::Modulo { divisor, remainder })
}

fn parse_all(path: &str, operand: &Bson) -> Result<Condition, QueryError> {
    let Bson::Array(items) = operand else {
        return Err(QueryError::bad_value("$all", path, "needs an array"));
    };
    let mut conditions = Vec::with_capacity(items.len());
    for item in items {
        conditions.push(match item {
            Bson::RegularExpression(regex) => Condition::Regex(Pattern::from_bson(regex, path)?),
            Bson::Document(inner) if inner.keys().next().is_some_and(|key| key == "$elemMatch") => {
                if inner.len() != 1 {
                    return Err(QueryError::bad_value("$all", path, "malformed $elemMatch entry"));
                }
                let operand = inner.get("$elemMatch").unwrap_or(&Bson::Null);
                Condition::ElemMatch(Box::new(ElementMatcher::for_elem_match(operand, path)?))
            }
            Bson::Document(inner) if is_operator_document(inner) => {
                return Err(QueryError::bad_value("$all", path, "no $ expressions in $all"));
            }
            _ => Condition::Equal(item.clone()),
        });
    }
    Ok(Condition::All(conditions))
}

fn parse_types(path: &str, operand: &Bson) -> Result<Vec<TypeSpec>, QueryError> {
    let items = match operand {
        Bson::Array(items) => items.as_slice(),
        single => std::slice::from_ref(single),
    };
    let mut specs = Vec::with_capacity(items.len());
    for item in items {
        let spec = match item {
            Bson::String(alias) => type_alias(alias),
            _ => exact_integer(item).and_then(type_code),
        };
        let Some(spec) = spec else {
            return Err(QueryError::bad_value("$type", path, format!("unknown type {item}")));
        };
        specs.push(spec);
    }
    Ok(specs)
}

fn type_code(code: i64) -> Option<TypeSpec> {
    match code {
        -1 => Some(TypeSpec::Code(0xFF)),
        127 => Some(TypeSpec::Code(0x7F)),
        // Every code from 1 to 19 names a BSON type.
        1..=19 => Some(TypeSpec::Code(u8::try_from(code).ok()?)),
        _ => None,
    }
}

fn type_alias(alias: &str) -> Option<TypeSpec> {
    const ALIASES: [(&str, i64); 21] = [
        ("double", 1),
        ("string", 2),
        ("object", 3),
        ("array", 4),
        ("binData", 5),
        ("undefined", 6),
        ("objectId", 7),
        ("bool", 8),
        ("date", 9),
        ("null", 10),
        ("regex", 11),
        ("dbPointer", 12),
        ("javascript", 13),
        ("symbol", 14),
        ("javascriptWithScope", 15),
        ("int", 16),
        ("timestamp", 17),
        ("long", 18),
        ("decimal", 19),
        ("minKey", -1),
        ("maxKey", 127),
    ];
    if alias == "number" {
        return Some(TypeSpec::Number);
    }
    let (_, code) = ALIASES.iter().find(|(name, _)| *name == alias)?;
    type_code(*code)
}

impl ElementMatcher {
    /// The operand of `$elemMatch`: operators on the element, or a filter over it.
    pub(crate) fn for_elem_match(operand: &Bson, path: &str) -> Result<Self, QueryError> {
        let Bson::Document(inner) = operand else {
            return Err(QueryError::bad_value("$elemMatch", path, "needs an object"));
        };
        let logical = ["$and", "$or", "$nor"];
        let value_form = inner
            .keys()
            .next()
            .is_some_and(|key| key.starts_with('$') && !logical.contains(&key.as_str()));
        if value_form {
            Ok(ElementMatcher::Value(parse_operators(path, inner)?))
        } else {
            Ok(ElementMatcher::Document(Filter::parse_nested(inner)?))
        }
    }

    /// The condition of `$pull`: a filter over document elements, operators, or a value.
    pub(crate) fn for_pull(operand: &Bson, path: &str) -> Result<Self, QueryError> {
        match operand {
            Bson::Document(inner) if is_operator_document(inner) => {
                let logical = ["$and", "$or", "$nor"];
                if inner.keys().next().is_some_and(|key| logical.contains(&key.as_str())) {
                    return Ok(ElementMatcher::Document(Filter::parse_nested(inner)?));
                }
                Ok(ElementMatcher::Value(parse_operators(path, inner)?))
            }
            Bson::Document(inner) => Ok(ElementMatcher::Document(Filter::parse_nested(inner)?)),
            _ => Ok(ElementMatcher::Value(parse_field_value(path, operand)?)),
        }
    }

    /// Whether one array element satisfies the condition.
    pub(crate) fn matches(&self, element: &Bson) -> bool {
        let mut details = MatchDetails::default();
        match self {
            ElementMatcher::Document(filter) => match element {
                Bson::Document(_) | Bson::Array(_) => {
                    all_match(&filter.expressions, Root::Value(element), &mut details)
                }
                _ => false,
            },
            ElementMatcher::Value(conditions) => {
                let single = [Candidate { value: Some(element), expanded: false, position: None }];
                conditions.iter().all(|condition| condition.test(&single, &mut details))
            }
        }
    }
}

fn all_match(expressions: &[Expression], root: Root<'_>, details: &mut MatchDetails) -> bool {
    expressions.iter().all(|expression| expression.matches(root, details))
}

impl Expression {
    fn matches(&self, root: Root<'_>, details: &mut MatchDetails) -> bool {
        match self {
            Expression::And(children) => all_match(children, root, details),
            Expression::Or(children) => children.iter().any(|child| {
                // A branch that fails must not leave its position behind.
                let mut branch = *details;
                let matched = child.matches(root, &mut branch);
                if matched {
                    *details = branch;
                }
                matched
            }),
            Expression::Nor(children) => {
                let mut scratch = MatchDetails::default();
                !children.iter().any(|child| child.matches(root, &mut scratch))
            }
            Expression::Field { parts, conditions, .. } => {
                let mut candidates = Vec::new();
                match root {
                    Root::Document(document) => {
                        path::collect_document(document, parts, None, &mut candidates)
                    }
                    Root::Value(value) => {
                        // `collect` yields the root itself for an empty path; a field needs one.
                        assert!(!parts.is_empty());
                        path::collect(value, parts, None, &mut candidates)
                    }
                }
                conditions.iter().all(|condition| condition.test(&candidates, details))
            }
        }
    }
}

/// Whether `value` and `bound` compare under type bracketing, and how.
fn bracketed_order(value: &Bson, bound: &Bson) -> Option<std::cmp::Ordering> {
    if matches!(bound, Bson::MinKey | Bson::MaxKey) {
        return Some(value::compare(value, bound));
    }
    if value::type_rank(value) != value::type_rank(bound) {
        return None;
    }
    let is_nan =
        |x: &Bson| matches!(value::number(x), Some(value::Number::Double(n)) if n.is_nan());
    match (is_nan(value), is_nan(bound)) {
        (false, false) => Some(value::compare(value, bound)),
        (true, true) => Some(std::cmp::Ordering::Equal),
        _ => None,
    }
}

fn type_matches(value: &Bson, spec: TypeSpec) -> bool {
    match spec {
        TypeSpec::Number => value::number(value).is_some(),
        TypeSpec::Code(code) => value.element_type() as u8 == code,
    }
}

impl Condition {
    /// Whether the condition holds for the values a path reached; records the array position.
    fn test(&self, candidates: &[Candidate<'_>], details: &mut MatchDetails) -> bool {
        match self {
            Condition::Not(inner) => {
                let mut scratch = MatchDetails::default();
                !inner.iter().all(|condition| condition.test(candidates, &mut scratch))
            }
            Condition::Exists(wanted) => {
                candidates.iter().any(|candidate| candidate.value.is_some()) == *wanted
            }
            Condition::All(inner) => {
                !inner.is_empty()
                    && inner.iter().all(|condition| condition.test(candidates, details))
            }
            Condition::In(inner) => {
                inner.iter().any(|condition| condition.test(candidates, details))
            }
            Condition::ElemMatch(matcher) => {
                for candidate in candidates.iter().filter(|candidate| !candidate.expanded) {
                    let Some(Bson::Array(items)) = candidate.value else { continue };
                    if let Some(index) = items.iter().position(|item| matcher.matches(item)) {
                        details.position = candidate.position.or(Some(index));
                        return true;
                    }
                }
                false
            }
            _ => {
                let found = candidates.iter().find(|candidate| self.test_one(candidate));
                if let Some(position) = found.and_then(|candidate| candidate.position) {
                    details.position = Some(position);
                }
                found.is_some()
            }
        }
    }

    /// Whether the condition holds for one reached value.
    fn test_one(&self, candidate: &Candidate<'_>) -> bool {
        let Some(value) = candidate.value else {
            return match self {
                Condition::Equal(Bson::Null) => true,
                Condition::Compare(Comparison::GreaterOrEqual | Comparison::LessOrEqual, bound) => {
                    matches!(bound, Bson::Null)
                }
                _ => false,
            };
        };
        match self {
            Condition::Equal(wanted) => match wanted {
                Bson::Null => matches!(value, Bson::Null | Bson::Undefined),
                _ => value::equal(value, wanted),
            },
            Condition::Compare(comparison, bound) => {
                let Some(order) = bracketed_order(value, bound) else { return false };
                match comparison {
                    Comparison::Greater => order.is_gt(),
                    Comparison::GreaterOrEqual => order.is_ge(),
                    Comparison::Less => order.is_lt(),
                    Comparison::LessOrEqual => order.is_le(),
                }
            }
            Condition::Type(specs) => specs.iter().any(|spec| type_matches(value, *spec)),
            Condition::Size(size) => {
                !candidate.expanded && matches!(value, Bson::Array(items) if items.len() == *size)
            }
            Condition::Modulo { divisor, remainder } => {
                truncated(value).is_some_and(|number| number.wrapping_rem(*divisor) == *remainder)
            }
            Condition::Regex(pattern) => pattern.matches_value(value),
            Condition::Not(_)
            | Condition::Exists(_)
            | Condition::All(_)
            | Condition::In(_)
            | Condition::ElemMatch(_) => {
                unreachable!("handled over all candidates")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    /// Parses `filter` and checks which of `documents` match, by index.
    #[track_caller]
    fn check(filter: Document, documents: &[Document], expected: &[usize]) {
        let parsed = Filter::parse(&filter).expect("a valid filter");
        let matched: Vec<usize> = documents
            .iter()
            .enumerate()
            .filter(|(_, document)| parsed.matches(document))
            .map(|(index, _)| index)
            .collect();
        assert_eq!(matched, expected, "{filter}");
    }

    #[test]
    fn arrays_match_by_element_or_whole() {
        let documents = [doc! {"a": [1, 2]}, doc! {"a": 2}, doc! {"a": [[2], 3]}, doc! {}];
        check(doc! {"a": 2}, &documents, &[0, 1]);
        check(doc! {"a": [2]}, &documents, &[2]);
        check(doc! {"a": {"$gt": 1, "$lt": 2}}, &documents, &[0]);
        check(doc! {"a": {"$elemMatch": {"$gt": 1, "$lt": 3}}}, &documents, &[0]);
        check(doc! {"a": {"$size": 2}}, &documents, &[0, 2]);
        check(doc! {"a": {"$all": [1, 2]}}, &documents, &[0]);
        check(doc! {"a": {"$ne": 2}}, &documents, &[2, 3]);
    }

    #[test]
    fn null_matches_missing_but_not_scalars_inside_arrays() {
        let documents = [doc! {"a": [{"b": 1}, {"c": 1}]}, doc! {"a": [0, 1]}, doc! {"a": 5}];
        check(doc! {"a.b": null}, &documents, &[0, 2]);
        check(doc! {"a.b": {"$exists": true}}, &documents, &[0]);
        check(doc! {"a.1": 1}, &documents, &[1]);
        // Documents inside an array lack field "5", so it is missing there too.
        check(doc! {"a.5": null}, &documents, &[0, 2]);
    }

    #[test]
    fn comparisons_bracket_types() {
        let documents = [doc! {"a": 10}, doc! {"a": "10"}, doc! {"a": 10.5}, doc! {"a": f64::NAN}];
        check(doc! {"a": {"$gte": 10}}, &documents, &[0, 2]);
        check(doc! {"a": {"$lt": "2"}}, &documents, &[1]);
        check(doc! {"a": {"$gt": Bson::MinKey}}, &documents, &[0, 1, 2, 3]);
        check(doc! {"a": {"$lt": 100}}, &documents, &[0, 2]);
        check(doc! {"a": {"$type": "number"}}, &documents, &[0, 2, 3]);
        check(doc! {"a": {"$mod": [3, 1]}}, &documents, &[0, 2]);
        check(doc! {"a": {"$regex": "^1", "$options": "i"}}, &documents, &[1]);
        check(doc! {"$or": [{"a": 10}, {"a": "10"}], "a": {"$type": 16}}, &documents, &[0]);
        check(doc! {"$nor": [{"a": 10}, {"a": {"$type": "string"}}]}, &documents, &[2, 3]);
    }

    #[test]
    fn match_positions_come_from_the_first_iterated_array() {
        let document = doc! {"a": [{"b": [1, 2]}, {"b": [3, 4]}], "c": [5, 6]};
        let position = |filter: Document| {
            Filter::parse(&filter).expect("valid").match_details(&document).map(|d| d.position)
        };
        assert_eq!(position(doc! {"a.b": 4}), Some(Some(1)));
        assert_eq!(position(doc! {"a.b.0": 1}), Some(Some(0)));
        assert_eq!(position(doc! {"a.1.b": 4}), Some(Some(1)));
        assert_eq!(position(doc! {"c": {"$elemMatch": {"$gt": 5}}}), Some(Some(1)));
        assert_eq!(position(doc! {"c.0": 5}), Some(None));
        assert_eq!(position(doc! {"c": 7}), None);
    }

    #[test]
    fn malformed_filters_name_operator_and_path() {
        let error = |filter: Document| Filter::parse(&filter).expect_err("malformed");
        let unknown = QueryError::UnknownOperator { operator: "$foo".into(), path: "a".into() };
        assert_eq!(error(doc! {"a": {"$foo": 1}}), unknown);
        assert_eq!(error(doc! {"$and": []}).code(), 2);
        assert_eq!(error(doc! {"a": {"$in": 1}}).code(), 2);
        assert_eq!(error(doc! {"a": {"$mod": [0, 1]}}).code(), 2);
        assert_eq!(error(doc! {"a": {"$type": "nope"}}).code(), 2);
        assert_eq!(error(doc! {"a": {"$regex": "("}}).code(), 2);
        assert_eq!(error(doc! {"a": {"$not": 5}}).code(), 2);
    }

    #[test]
    fn predicates_are_conservative() {
        let filter = doc! {
            "a": 5, "b": {"$gt": 1, "$lte": 9}, "c": {"$in": [1, 2]}, "d": null,
            "e": [1], "f": {"$in": [null]}, "$or": [{"g": 1}], "$and": [{"h": "x"}],
        };
        let predicates = Filter::parse(&filter).expect("valid").predicates();
        let expected = vec![
            ("a".to_owned(), Predicate::Eq(Bson::Int32(5))),
            (
                "b".to_owned(),
                Predicate::Range { lower: Some((Bson::Int32(1), false)), upper: None },
            ),
            ("b".to_owned(), Predicate::Range { lower: None, upper: Some((Bson::Int32(9), true)) }),
            ("c".to_owned(), Predicate::In(vec![Bson::Int32(1), Bson::Int32(2)])),
            ("h".to_owned(), Predicate::Eq(Bson::String("x".into()))),
        ];
        assert_eq!(predicates, expected);
    }
}
