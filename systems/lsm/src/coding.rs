//! Byte encodings shared by every on-disk format: little-endian fixed integers, LEB128 varints,
//! and a bounds-checked reader that turns short or malformed input into an error, never a panic.

/// Why a decoder rejected its input (wrapped into `Error::Corruption` by the caller, who knows
/// the file and offset).
pub type DecodeResult<T> = std::result::Result<T, &'static str>;

/// The longest varint64 in bytes.
pub const VARINT64_BYTES_MAX: usize = 10;

/// Appends `value` as a LEB128 varint.
pub fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Appends a varint length followed by the bytes.
pub fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A cursor over untrusted bytes.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    data: &'a [u8],
    position: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `data`.
    pub fn new(data: &'a [u8]) -> Reader<'a> {
        Reader { data, position: 0 }
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> usize {
        self.position
    }

    /// Bytes left.
    pub fn remaining(&self) -> usize {
        self.data.len() - self.position
    }

    /// Whether every byte was consumed.
    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// The next `count` bytes.
    pub fn bytes(&mut self, count: usize) -> DecodeResult<&'a [u8]> {
        if count > self.remaining() {
            return Err("truncated");
        }
        let slice = &self.data[self.position..self.position + count];
        self.position += count;
        Ok(slice)
    }

    /// One byte.
    pub fn u8(&mut self) -> DecodeResult<u8> {
        Ok(self.bytes(1)?[0])
    }

    /// A little-endian u32.
    pub fn u32(&mut self) -> DecodeResult<u32> {
        let bytes = self.bytes(4)?;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    /// A little-endian u64.
    pub fn u64(&mut self) -> DecodeResult<u64> {
        let mut array = [0u8; 8];
        array.copy_from_slice(self.bytes(8)?);
        Ok(u64::from_le_bytes(array))
    }

    /// A LEB128 varint of at most 64 bits.
    pub fn varint(&mut self) -> DecodeResult<u64> {
        let mut value = 0u64;
        for index in 0..VARINT64_BYTES_MAX {
            let byte = self.u8()?;
            let shift = 7 * index as u32;
            if index == VARINT64_BYTES_MAX - 1 && byte > 1 {
                return Err("varint overflows u64");
            }
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("varint too long")
    }

    /// A varint that must fit `usize` and be at most `max`.
    pub fn varint_len(&mut self, max: usize) -> DecodeResult<usize> {
        let value = self.varint()?;
        if value > max as u64 {
            return Err("length out of range");
        }
        Ok(value as usize)
    }

    /// A varint length (at most the bytes left) followed by that many bytes.
    pub fn length_prefixed(&mut self) -> DecodeResult<&'a [u8]> {
        let count = self.varint_len(self.remaining())?;
        self.bytes(count)
    }
}

/// Reads a little-endian u32 at `offset` of a slice the caller has bounds-checked.
pub fn fixed_u32(data: &[u8], offset: usize) -> u32 {
    let mut array = [0u8; 4];
    array.copy_from_slice(&data[offset..offset + 4]);
    u32::from_le_bytes(array)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_and_reject_overlong() {
        for value in [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            let mut reader = Reader::new(&out);
            assert_eq!(reader.varint(), Ok(value));
            assert!(reader.is_empty());
        }
        assert!(Reader::new(&[0xff; 11]).varint().is_err());
        assert!(Reader::new(&[0x80]).varint().is_err());
        assert!(
            Reader::new(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02])
                .varint()
                .is_err()
        );
    }
}
