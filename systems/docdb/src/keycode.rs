//! Order-preserving byte encoding of BSON values: `encode(a) < encode(b)` (as bytes) exactly
//! when `value::compare(a, b)` is `Less`, so index range scans are LSM range scans.
//!
//! Format (version 1; `docs/format.md` repeats it):
//! - every value starts with one tag byte, its type rank plus `TAG_BASE` (never 0);
//! - numbers: a sub-tag (0 NaN, 1 otherwise), then the value rounded to the nearest `f64` in
//!   sortable form (8 bytes), then the exact distance from that `f64` as a sortable `i64`
//!   (8 bytes; 0 for doubles), so integers beyond 2^53 still order exactly and `Int32(5)`,
//!   `Int64(5)` and `Double(5.0)` encode the same; `-0.0` encodes as `0.0`;
//! - strings, symbols, code, field names: the UTF-8 bytes with `00` escaped as `00 FF`, then
//!   `00 00`;
//! - documents: per element the value's tag, the field name (escaped), the value's body; then
//!   `00`; arrays: per element tag and body, then `00`;
//! - binary: length (u32, big-endian), subtype, bytes; ObjectId: its 12 bytes; boolean: one
//!   byte; date: millis as a sortable `i64`; timestamp: time and increment (u32 big-endian);
//!   regular expression: pattern and options, escaped.
//!
//! The encoding is prefix-free (every part is fixed-width or terminated), so compound keys are
//! plain concatenations and a descending component is its bytes inverted.
//! Decimal128 goes through its `f64` approximation, as `value::compare` does.

use bson::Bson;

use crate::value::{self, Number};

/// Added to a type rank to make its tag byte; keeps 0 free as the end-of-document marker.
const TAG_BASE: u8 = 0x10;
const END: u8 = 0x00;
const ESCAPE: u8 = 0xFF;

/// Appends the encoding of `value` to `out`.
pub fn encode_into(value: &Bson, out: &mut Vec<u8>) {
    out.push(tag(value));
    encode_body(value, out);
}

/// The encoding of `value`.
pub fn encode(value: &Bson) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    encode_into(value, &mut out);
    out
}

/// Appends `value`'s encoding for a descending index component: every byte inverted.
pub fn encode_descending_into(value: &Bson, out: &mut Vec<u8>) {
    let start = out.len();
    encode_into(value, out);
    for byte in &mut out[start..] {
        *byte = !*byte;
    }
}

fn tag(value: &Bson) -> u8 {
    let rank = value::type_rank(value);
    assert!(rank > 0 && rank < 0x40);
    TAG_BASE + rank
}

fn encode_body(value: &Bson, out: &mut Vec<u8>) {
    match value {
        Bson::MinKey | Bson::MaxKey | Bson::Null | Bson::Undefined => {}
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_) => {
            let number = value::number(value).expect("numeric variant");
            encode_number(number, out);
        }
        Bson::String(text) | Bson::Symbol(text) | Bson::JavaScriptCode(text) => {
            encode_bytes(text.as_bytes(), out)
        }
        Bson::Document(document) => encode_document(document, out),
        Bson::Array(items) => {
            for item in items {
                encode_into(item, out);
            }
            out.push(END);
        }
        Bson::Binary(binary) => {
            let length = u32::try_from(binary.bytes.len()).unwrap_or(u32::MAX);
            out.extend_from_slice(&length.to_be_bytes());
            out.push(u8::from(binary.subtype));
            out.extend_from_slice(&binary.bytes);
        }
        Bson::ObjectId(id) => out.extend_from_slice(&id.bytes()),
        Bson::Boolean(flag) => out.push(u8::from(*flag)),
        Bson::DateTime(date) => out.extend_from_slice(&sortable_i64(date.timestamp_millis())),
        Bson::Timestamp(stamp) => {
            out.extend_from_slice(&stamp.time.to_be_bytes());
            out.extend_from_slice(&stamp.increment.to_be_bytes());
        }
        Bson::RegularExpression(regex) => {
            encode_bytes(regex.pattern.as_str().as_bytes(), out);
            encode_bytes(regex.options.as_str().as_bytes(), out);
        }
        Bson::JavaScriptCodeWithScope(code) => {
            encode_bytes(code.code.as_bytes(), out);
            encode_document(&code.scope, out);
        }
        Bson::DbPointer(pointer) => encode_bytes(format!("{pointer:?}").as_bytes(), out),
    }
}

fn encode_document(document: &bson::Document, out: &mut Vec<u8>) {
    for (key, item) in document {
        out.push(tag(item));
        encode_bytes(key.as_bytes(), out);
        encode_body(item, out);
    }
    out.push(END);
}

fn encode_bytes(bytes: &[u8], out: &mut Vec<u8>) {
    for &byte in bytes {
        out.push(byte);
        if byte == END {
            out.push(ESCAPE);
        }
    }
    out.extend_from_slice(&[END, END]);
}

fn encode_number(number: Number, out: &mut Vec<u8>) {
    let (nearest, distance) = match number {
        Number::Double(double) if double.is_nan() => {
            out.push(0);
            return;
        }
        Number::Double(double) => (double, 0i64),
        Number::Integer(integer) => {
            let nearest = integer as f64;
            // |integer - nearest| < 2^11 for every i64, so the difference fits.
            let distance = i128::from(integer) - nearest as i128;
            (nearest, i64::try_from(distance).expect("rounding distance fits"))
        }
    };
    out.push(1);
    out.extend_from_slice(&sortable_f64(nearest));
    out.extend_from_slice(&sortable_i64(distance));
}

fn sortable_f64(double: f64) -> [u8; 8] {
    // -0.0 and 0.0 are the same number.
    let double = if double == 0.0 { 0.0 } else { double };
    let bits = double.to_bits();
    let flipped = if bits >> 63 == 1 { !bits } else { bits | (1 << 63) };
    flipped.to_be_bytes()
}

fn sortable_i64(integer: i64) -> [u8; 8] {
    ((integer as u64) ^ (1 << 63)).to_be_bytes()
}

/// The smallest key strictly above every key that starts with `prefix` (for range ends).
/// `None` when no such key exists (the prefix is all `FF`).
pub fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut successor = prefix.to_vec();
    while let Some(last) = successor.pop() {
        if last != 0xFF {
            successor.push(last + 1);
            return Some(successor);
        }
    }
    None
}

/// The first key byte of values of `value`'s type, and the first byte past them: a scan over
/// `[type_start, type_end)` visits every value of the same type rank (MongoDB's type
/// bracketing for range predicates).
pub fn type_bounds(value: &Bson) -> (u8, u8) {
    let tag = tag(value);
    (tag, tag + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;
    use std::cmp::Ordering;

    #[track_caller]
    fn check(a: Bson, b: Bson) {
        let expected = value::compare(&a, &b);
        let actual = encode(&a).cmp(&encode(&b));
        assert_eq!(actual, expected, "{a:?} vs {b:?}");
        let mut down_a = Vec::new();
        let mut down_b = Vec::new();
        encode_descending_into(&a, &mut down_a);
        encode_descending_into(&b, &mut down_b);
        assert_eq!(down_a.cmp(&down_b), expected.reverse(), "descending {a:?} vs {b:?}");
    }

    #[test]
    fn numbers_encode_in_value_order() {
        check(Bson::Int32(5), Bson::Double(5.0));
        check(Bson::Int64(5), Bson::Double(5.5));
        check(Bson::Double(f64::NAN), Bson::Double(f64::NEG_INFINITY));
        check(Bson::Int64(9_007_199_254_740_993), Bson::Double(9_007_199_254_740_992.0));
        check(Bson::Int64(9_007_199_254_740_993), Bson::Int64(9_007_199_254_740_992));
        check(Bson::Int64(i64::MIN), Bson::Double(-9.3e18));
        check(Bson::Double(-0.0), Bson::Int32(0));
        check(Bson::Int32(-1), Bson::Double(-0.5));
    }

    #[test]
    fn composite_values_encode_in_value_order() {
        check(Bson::String("a".into()), Bson::String("a\0".into()));
        check(Bson::String("ab".into()), Bson::String("b".into()));
        check(Bson::Document(doc! {"a": 1}), Bson::Document(doc! {"a": 1, "b": 0}));
        check(Bson::Document(doc! {"a": "x"}), Bson::Document(doc! {"b": 1}));
        check(Bson::Array(vec![1.into()]), Bson::Array(vec![1.into(), Bson::Null]));
        check(Bson::Null, Bson::Int32(i32::MIN));
        assert_eq!(encode(&Bson::Int32(7)).cmp(&encode(&Bson::Int64(7))), Ordering::Equal);
    }

    #[test]
    fn prefix_successor_skips_trailing_ff() {
        assert_eq!(prefix_successor(&[1, 0xFF]), Some(vec![2]));
        assert_eq!(prefix_successor(&[0xFF]), None);
    }
}
