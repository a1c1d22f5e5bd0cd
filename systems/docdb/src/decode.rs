//! A direct BSON decoder for stored documents: bytes to `bson::Document` in one pass.
//!
//! `bson::Document::from_reader` copies the bytes into a raw buffer, builds an owned raw value
//! per element and converts that again; on a 200-byte document that was about half the cost of
//! a find by `_id`. This decoder reads each element once. It checks everything the BSON
//! specification requires (lengths inside their parent, terminators, UTF-8, known types,
//! nesting depth) and answers `Err` with a reason instead of panicking; the caller turns that
//! into `Corruption`, after trying the `bson` crate (which also decodes the rare types this one
//! leaves out: regular expressions, DBPointer, code with scope). A test checks it against the
//! `bson` crate.

use bson::spec::BinarySubtype;
use bson::{Binary, Bson, Decimal128, Document, Timestamp};

/// Deepest nesting decoded (MongoDB's own limit is 100 levels of documents).
const DEPTH_MAX: usize = 200;

/// Decodes one whole BSON document that fills `bytes` exactly.
pub fn document(bytes: &[u8]) -> Result<Document, String> {
    let mut reader = Reader { bytes, at: 0 };
    let document = reader.document(0)?;
    if reader.at != bytes.len() {
        return Err(format!("{} bytes after the document", bytes.len() - reader.at));
    }
    Ok(document)
}

/// The top-level fields `names` of a BSON document, decoded without decoding the others: every
/// other element is skipped by its type's size. Stops once every name was found.
pub fn fields(bytes: &[u8], names: &[&str]) -> Result<Document, String> {
    let mut reader = Reader { bytes, at: 0 };
    let length = reader.length(5)?;
    if length != bytes.len() {
        return Err(format!("document length {length} of {} bytes", bytes.len()));
    }
    let mut found = Document::new();
    loop {
        let kind = reader.fixed::<1>()?[0];
        if kind == 0 {
            break;
        }
        let key = reader.cstr()?;
        match names.iter().find(|name| name.as_bytes() == key) {
            Some(name) if !found.contains_key(*name) => {
                let value = reader.value(kind, 0)?;
                found.insert(*name, value);
                if found.len() == names.len() {
                    break;
                }
            }
            _ => reader.skip(kind)?,
        }
    }
    Ok(found)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, count: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(count).filter(|&end| end <= self.bytes.len());
        let end = end.ok_or_else(|| {
            format!("{count} bytes wanted at {} of {}", self.at, self.bytes.len())
        })?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], String> {
        Ok(self.take(N)?.try_into().expect("take gave N bytes"))
    }

    fn i32(&mut self) -> Result<i32, String> {
        Ok(i32::from_le_bytes(self.fixed()?))
    }

    fn length(&mut self, minimum: i32) -> Result<usize, String> {
        let length = self.i32()?;
        if length < minimum {
            return Err(format!("length {length} below {minimum}"));
        }
        Ok(length as usize)
    }

    /// The bytes of a NUL-terminated name, not checked or copied.
    fn cstr(&mut self) -> Result<&'a [u8], String> {
        let rest = &self.bytes[self.at..];
        let end = rest.iter().position(|&byte| byte == 0).ok_or("unterminated name")?;
        self.at += end + 1;
        Ok(&rest[..end])
    }

    /// Moves past one value of type `kind` without decoding it.
    fn skip(&mut self, kind: u8) -> Result<(), String> {
        let size = match kind {
            0x06 | 0x0A | 0x7F | 0xFF => 0,
            0x08 => 1,
            0x10 => 4,
            0x01 | 0x09 | 0x11 | 0x12 => 8,
            0x07 => 12,
            0x13 => 16,
            0x02 | 0x0D | 0x0E => self.length(1)?,
            // The length of a document, an array or code with scope counts itself.
            0x03 | 0x04 | 0x0F => self.length(5)? - 4,
            0x05 => self.length(0)? + 1,
            0x0B => {
                self.cstr()?;
                self.cstr()?;
                0
            }
            0x0C => self.length(1)? + 12,
            other => return Err(format!("unknown element type {other:#04x}")),
        };
        self.take(size).map(drop)
    }

    /// A NUL-terminated UTF-8 string (field names, regular expressions).
    fn cstring(&mut self) -> Result<String, String> {
        let rest = &self.bytes[self.at..];
        let end = rest.iter().position(|&byte| byte == 0).ok_or("unterminated name")?;
        let text = std::str::from_utf8(&rest[..end]).map_err(|error| error.to_string())?;
        self.at += end + 1;
        Ok(text.to_owned())
    }

    /// A length-prefixed, NUL-terminated UTF-8 string.
    fn string(&mut self) -> Result<String, String> {
        let length = self.length(1)?;
        let body = self.take(length)?;
        let (text, terminator) = body.split_at(length - 1);
        if terminator != [0] {
            return Err("string not terminated".into());
        }
        Ok(std::str::from_utf8(text).map_err(|error| error.to_string())?.to_owned())
    }

    fn document(&mut self, depth: usize) -> Result<Document, String> {
        if depth > DEPTH_MAX {
            return Err("documents nest too deeply".into());
        }
        let start = self.at;
        let length = self.length(5)?;
        let end = start
            .checked_add(length)
            .filter(|&end| end <= self.bytes.len())
            .ok_or("document longer than its parent")?;
        let mut document = Document::new();
        loop {
            let kind = self.fixed::<1>()?[0];
            if kind == 0 {
                break;
            }
            let key = self.cstring()?;
            let value = self.value(kind, depth)?;
            document.insert(key, value);
            if self.at >= end {
                return Err("document not terminated".into());
            }
        }
        if self.at != end {
            return Err(format!("document length {length} disagrees with its elements"));
        }
        Ok(document)
    }

    fn array(&mut self, depth: usize) -> Result<Vec<Bson>, String> {
        let document = self.document(depth + 1)?;
        Ok(document.into_iter().map(|(_, value)| value).collect())
    }

    fn value(&mut self, kind: u8, depth: usize) -> Result<Bson, String> {
        Ok(match kind {
            0x01 => Bson::Double(f64::from_le_bytes(self.fixed()?)),
            0x02 => Bson::String(self.string()?),
            0x03 => Bson::Document(self.document(depth + 1)?),
            0x04 => Bson::Array(self.array(depth)?),
            0x05 => self.binary()?,
            0x06 => Bson::Undefined,
            0x07 => Bson::ObjectId(bson::oid::ObjectId::from_bytes(self.fixed()?)),
            0x08 => match self.fixed::<1>()?[0] {
                0 => Bson::Boolean(false),
                1 => Bson::Boolean(true),
                other => return Err(format!("boolean byte {other}")),
            },
            0x09 => Bson::DateTime(bson::DateTime::from_millis(i64::from_le_bytes(self.fixed()?))),
            0x0A => Bson::Null,
            0x0D => Bson::JavaScriptCode(self.string()?),
            0x0E => Bson::Symbol(self.string()?),
            0x10 => Bson::Int32(self.i32()?),
            0x11 => {
                let increment = u32::from_le_bytes(self.fixed()?);
                let time = u32::from_le_bytes(self.fixed()?);
                Bson::Timestamp(Timestamp { time, increment })
            }
            0x12 => Bson::Int64(i64::from_le_bytes(self.fixed()?)),
            0x13 => Bson::Decimal128(Decimal128::from_bytes(self.fixed()?)),
            0x7F => Bson::MaxKey,
            0xFF => Bson::MinKey,
            // Regular expressions, DBPointer and code with scope are rare in stored documents:
            // the caller falls back to the bson crate for them.
            0x0B | 0x0C | 0x0F => {
                return Err(format!("element type {kind:#04x} is not decoded here"));
            }
            other => return Err(format!("unknown element type {other:#04x}")),
        })
    }

    fn binary(&mut self) -> Result<Bson, String> {
        let length = self.length(0)?;
        let subtype = BinarySubtype::from(self.fixed::<1>()?[0]);
        let mut bytes = self.take(length)?;
        if subtype == BinarySubtype::BinaryOld {
            // The old subtype repeats the length inside.
            let (inner, rest) = bytes.split_at_checked(4).ok_or("short old binary")?;
            let inner = i32::from_le_bytes(inner.try_into().expect("4 bytes"));
            if usize::try_from(inner).ok() != Some(rest.len()) {
                return Err("old binary length disagrees".into());
            }
            bytes = rest;
        }
        Ok(Bson::Binary(Binary { subtype, bytes: bytes.to_vec() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{Regex, doc};

    #[track_caller]
    fn check(document: Document) {
        let mut bytes = Vec::new();
        document.to_writer(&mut bytes).unwrap();
        assert_eq!(super::document(&bytes).unwrap(), document);
    }

    fn value() -> impl proptest::strategy::Strategy<Value = Bson> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            any::<i32>().prop_map(Bson::Int32),
            any::<i64>().prop_map(Bson::Int64),
            (-1e12f64..1e12).prop_map(Bson::Double),
            ".{0,6}".prop_map(Bson::String),
            any::<bool>().prop_map(Bson::Boolean),
            Just(Bson::Null),
            any::<i64>().prop_map(|millis| Bson::DateTime(bson::DateTime::from_millis(millis))),
            any::<[u8; 12]>()
                .prop_map(|bytes| Bson::ObjectId(bson::oid::ObjectId::from_bytes(bytes))),
            prop::collection::vec(any::<u8>(), 0..5)
                .prop_map(|bytes| Bson::Binary(Binary { subtype: BinarySubtype::Generic, bytes })),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Bson::Array),
                prop::collection::btree_map("[a-z_]{0,3}", inner, 0..4)
                    .prop_map(|map| Bson::Document(map.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn agrees_with_the_bson_crate(
            entries in proptest::collection::btree_map("[a-z]{1,3}", value(), 0..6)
        ) {
            let document: Document = entries.into_iter().collect();
            let mut bytes = Vec::new();
            document.to_writer(&mut bytes).unwrap();
            let reference = Document::from_reader(bytes.as_slice()).unwrap();
            assert_eq!(super::document(&bytes).unwrap(), reference);
            let every: Vec<&str> = reference.keys().map(String::as_str).collect();
            for names in [vec!["a"], vec!["b", "zz"], every] {
                let expected: Document = reference
                    .iter()
                    .filter(|(key, _)| names.contains(&key.as_str()))
                    .map(|(key, value)| (key.clone(), value.clone()))
                    .collect();
                // Both keep the document's element order.
                assert_eq!(fields(&bytes, &names).unwrap(), expected);
            }
        }
    }

    #[test]
    fn reads_named_fields_and_skips_the_rest() {
        let binary = Binary { subtype: BinarySubtype::Generic, bytes: vec![1] };
        let pattern = "a.".to_string().try_into().unwrap();
        let regex = Regex { pattern, options: "i".to_string().try_into().unwrap() };
        let document = doc! {"_id": 1, "s": "text", "n": {"x": [1, 2]}, "b": binary, "r": regex,
        "age": 40, "city": "x"};
        let mut bytes = Vec::new();
        document.to_writer(&mut bytes).unwrap();
        assert_eq!(fields(&bytes, &["city", "age"]).unwrap(), doc! {"age": 40, "city": "x"});
        assert_eq!(fields(&bytes, &["missing"]).unwrap(), doc! {});
        assert_eq!(fields(&bytes, &["n"]).unwrap(), doc! {"n": {"x": [1, 2]}});
        assert!(fields(&bytes[..bytes.len() - 1], &["city"]).is_err());
    }

    #[test]
    fn decodes_what_bson_encodes_and_refuses_damage() {
        check(doc! {"_id": 1, "s": "text", "d": 1.5, "l": 9_i64, "n": null, "b": true,
        "a": [1, "x", {"y": [2]}], "o": bson::oid::ObjectId::from_bytes([7; 12]),
        "t": bson::DateTime::from_millis(-5),
        "bin": Binary { subtype: BinarySubtype::Generic, bytes: vec![1, 2] },
        "ts": Timestamp { time: 3, increment: 4 }, "min": Bson::MinKey});
        let mut bytes = Vec::new();
        doc! {"a": "hello"}.to_writer(&mut bytes).unwrap();
        for cut in 0..bytes.len() {
            assert!(super::document(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad_type = bytes.clone();
        bad_type[4] = 0x42;
        assert!(super::document(&bad_type).is_err());
        let mut bad_length = bytes.clone();
        bad_length[9] = 0x7F;
        assert!(super::document(&bad_length).is_err());
    }
}
