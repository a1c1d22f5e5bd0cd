//! MongoDB's order over BSON values: the one comparison that sorts, filters, index keys and
//! `$min`/`$max` share.
//!
//! Values of different types compare by a canonical type rank (MinKey < null < numbers <
//! strings < documents < arrays < binary < ObjectId < booleans < dates < timestamps < regular
//! expressions < ... < MaxKey); numbers of every width compare by value (`Int32(5)`, `Int64(5)`
//! and `Double(5.0)` are equal, NaN is below every other number); strings compare as bytes (no
//! collation); documents compare element by element (value type rank, then field name, then
//! value), the shorter first when one is a prefix of the other; arrays compare element by
//! element. `keycode` encodes values so that byte order is exactly this order.
//!
//! Decimal128 values are compared through their `f64` approximation (documented limitation).

use std::cmp::Ordering;

use bson::Bson;

/// MongoDB's canonical type rank (its `canonicalizeBSONType`): values of lower rank sort first.
pub fn type_rank(value: &Bson) -> u8 {
    match value {
        Bson::MinKey => 1,
        Bson::Undefined => 2,
        Bson::Null => 3,
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_) => 4,
        Bson::String(_) | Bson::Symbol(_) => 5,
        Bson::Document(_) => 6,
        Bson::Array(_) => 7,
        Bson::Binary(_) => 8,
        Bson::ObjectId(_) => 9,
        Bson::Boolean(_) => 10,
        Bson::DateTime(_) => 11,
        Bson::Timestamp(_) => 12,
        Bson::RegularExpression(_) => 13,
        Bson::DbPointer(_) => 14,
        Bson::JavaScriptCode(_) => 15,
        Bson::JavaScriptCodeWithScope(_) => 16,
        Bson::MaxKey => 17,
    }
}

/// A number as MongoDB compares it: an exact integer, or a double (NaN included).
#[derive(Clone, Copy, Debug)]
pub enum Number {
    /// Int32 and Int64.
    Integer(i64),
    /// Double, and Decimal128 through its `f64` approximation.
    Double(f64),
}

/// The number `value` holds, if it is one.
pub fn number(value: &Bson) -> Option<Number> {
    match value {
        Bson::Int32(v) => Some(Number::Integer(i64::from(*v))),
        Bson::Int64(v) => Some(Number::Integer(*v)),
        Bson::Double(v) => Some(Number::Double(*v)),
        Bson::Decimal128(v) => Some(Number::Double(decimal_to_f64(v))),
        _ => None,
    }
}

/// The `f64` nearest to a Decimal128 (NaN when it does not parse, as for `NaN` decimals).
pub fn decimal_to_f64(value: &bson::Decimal128) -> f64 {
    value.to_string().parse::<f64>().unwrap_or(f64::NAN)
}

/// Compares two numbers by value; NaN equals NaN and is below everything else.
pub fn compare_numbers(a: Number, b: Number) -> Ordering {
    match (a, b) {
        (Number::Integer(x), Number::Integer(y)) => x.cmp(&y),
        (Number::Double(x), Number::Double(y)) => compare_doubles(x, y),
        (Number::Integer(x), Number::Double(y)) => compare_integer_double(x, y),
        (Number::Double(x), Number::Integer(y)) => compare_integer_double(y, x).reverse(),
    }
}

fn compare_doubles(x: f64, y: f64) -> Ordering {
    match (x.is_nan(), y.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        // Neither is NaN, so `partial_cmp` answers; -0.0 equals 0.0 as in MongoDB.
        (false, false) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
    }
}

/// Exact comparison of an integer with a double (no rounding of large integers).
fn compare_integer_double(x: i64, y: f64) -> Ordering {
    if y.is_nan() {
        return Ordering::Greater;
    }
    // 2^63 is exactly representable; every i64 is below it and at or above -2^63.
    const TWO_POW_63: f64 = 9_223_372_036_854_775_808.0;
    if y >= TWO_POW_63 {
        return Ordering::Less;
    }
    if y < -TWO_POW_63 {
        return Ordering::Greater;
    }
    let whole = y.trunc();
    // In range, so the cast is exact.
    let whole_integer = whole as i64;
    match x.cmp(&whole_integer) {
        Ordering::Equal => compare_doubles(0.0, y - whole),
        other => other,
    }
}

/// MongoDB's total order over BSON values (see the module doc).
pub fn compare(a: &Bson, b: &Bson) -> Ordering {
    let (rank_a, rank_b) = (type_rank(a), type_rank(b));
    if rank_a != rank_b {
        return rank_a.cmp(&rank_b);
    }
    match (a, b) {
        (Bson::Document(x), Bson::Document(y)) => compare_documents(x, y),
        (Bson::Array(x), Bson::Array(y)) => compare_arrays(x, y),
        _ => compare_same_rank_scalars(a, b),
    }
}

/// Documents compare element by element: value type rank, then field name, then value.
pub fn compare_documents(a: &bson::Document, b: &bson::Document) -> Ordering {
    let mut left = a.iter();
    let mut right = b.iter();
    loop {
        match (left.next(), right.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some((key_a, value_a)), Some((key_b, value_b))) => {
                let order = type_rank(value_a)
                    .cmp(&type_rank(value_b))
                    .then_with(|| key_a.as_bytes().cmp(key_b.as_bytes()))
                    .then_with(|| compare(value_a, value_b));
                if order != Ordering::Equal {
                    return order;
                }
            }
        }
    }
}

fn compare_arrays(a: &[Bson], b: &[Bson]) -> Ordering {
    for (x, y) in a.iter().zip(b) {
        let order = compare(x, y);
        if order != Ordering::Equal {
            return order;
        }
    }
    a.len().cmp(&b.len())
}

fn compare_same_rank_scalars(a: &Bson, b: &Bson) -> Ordering {
    if let (Some(x), Some(y)) = (number(a), number(b)) {
        return compare_numbers(x, y);
    }
    match (a, b) {
        (Bson::String(x) | Bson::Symbol(x), Bson::String(y) | Bson::Symbol(y)) => {
            x.as_bytes().cmp(y.as_bytes())
        }
        (Bson::Binary(x), Bson::Binary(y)) => x
            .bytes
            .len()
            .cmp(&y.bytes.len())
            .then_with(|| u8::from(x.subtype).cmp(&u8::from(y.subtype)))
            .then_with(|| x.bytes.cmp(&y.bytes)),
        (Bson::ObjectId(x), Bson::ObjectId(y)) => x.bytes().cmp(&y.bytes()),
        (Bson::Boolean(x), Bson::Boolean(y)) => x.cmp(y),
        (Bson::DateTime(x), Bson::DateTime(y)) => x.timestamp_millis().cmp(&y.timestamp_millis()),
        (Bson::Timestamp(x), Bson::Timestamp(y)) => {
            (x.time, x.increment).cmp(&(y.time, y.increment))
        }
        (Bson::RegularExpression(x), Bson::RegularExpression(y)) => x
            .pattern
            .as_str()
            .as_bytes()
            .cmp(y.pattern.as_str().as_bytes())
            .then_with(|| x.options.as_str().as_bytes().cmp(y.options.as_str().as_bytes())),
        (Bson::JavaScriptCode(x), Bson::JavaScriptCode(y)) => x.as_bytes().cmp(y.as_bytes()),
        (Bson::JavaScriptCodeWithScope(x), Bson::JavaScriptCodeWithScope(y)) => x
            .code
            .as_bytes()
            .cmp(y.code.as_bytes())
            .then_with(|| compare_documents(&x.scope, &y.scope)),
        (Bson::DbPointer(x), Bson::DbPointer(y)) => format!("{x:?}").cmp(&format!("{y:?}")),
        // MinKey, MaxKey, null and undefined: one value per rank.
        _ => Ordering::Equal,
    }
}

/// Whether two values are equal in MongoDB's order (`1 == 1.0`, field order matters).
pub fn equal(a: &Bson, b: &Bson) -> bool {
    compare(a, b) == Ordering::Equal
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[track_caller]
    fn check(a: Bson, b: Bson, expected: Ordering) {
        assert_eq!(compare(&a, &b), expected, "{a:?} vs {b:?}");
        assert_eq!(compare(&b, &a), expected.reverse(), "{b:?} vs {a:?}");
    }

    #[test]
    fn numbers_compare_by_value_across_widths() {
        check(Bson::Int32(5), Bson::Double(5.0), Ordering::Equal);
        check(Bson::Int64(5), Bson::Double(5.5), Ordering::Less);
        check(Bson::Double(f64::NAN), Bson::Double(f64::NEG_INFINITY), Ordering::Less);
        check(Bson::Int64(i64::MAX), Bson::Double(9.3e18), Ordering::Less);
        check(
            Bson::Int64(9_007_199_254_740_993),
            Bson::Double(9_007_199_254_740_992.0),
            Ordering::Greater,
        );
        check(Bson::Double(-0.0), Bson::Int32(0), Ordering::Equal);
    }

    #[test]
    fn types_order_by_rank() {
        check(Bson::Null, Bson::Int32(0), Ordering::Less);
        check(Bson::Int32(100), Bson::String("".into()), Ordering::Less);
        check(Bson::String("z".into()), Bson::Document(doc! {}), Ordering::Less);
        check(Bson::Document(doc! {}), Bson::Array(vec![]), Ordering::Less);
        check(Bson::Boolean(true), Bson::DateTime(bson::DateTime::from_millis(0)), Ordering::Less);
        check(Bson::MinKey, Bson::Null, Ordering::Less);
        check(Bson::MaxKey, Bson::Boolean(true), Ordering::Greater);
    }

    #[test]
    fn documents_compare_type_then_name_then_value() {
        check(Bson::Document(doc! {"a": 1}), Bson::Document(doc! {"a": 1, "b": 0}), Ordering::Less);
        check(Bson::Document(doc! {"a": "x"}), Bson::Document(doc! {"b": 1}), Ordering::Greater);
        check(Bson::Document(doc! {"a": 2}), Bson::Document(doc! {"b": 1}), Ordering::Less);
        check(
            Bson::Array(vec![1.into(), 2.into()]),
            Bson::Array(vec![1.into()]),
            Ordering::Greater,
        );
    }
}
