//! MongoDB wire messages as bytes: the header, OP_MSG (sections, checksum) and the legacy
//! OP_QUERY / OP_REPLY pair that old clients use for their first `isMaster`. Sans-IO: these
//! functions take and return byte slices; `server` moves the bytes.
//!
//! ## Format (every integer little-endian)
//!
//! Header, 16 bytes: | messageLength i32 | requestID i32 | responseTo i32 | opCode i32 |.
//! `messageLength` counts the header itself.
//!
//! OP_MSG (opCode 2013): | flagBits u32 | section+ | checksum u32 (if flagBits bit 0) |.
//! A section is kind byte 0 followed by one BSON document (the command body, exactly one per
//! message), or kind byte 1 followed by | size i32 | identifier cstring | BSON document* |,
//! where `size` counts itself, the identifier and the documents. The checksum is CRC-32C
//! over every byte of the message before it, header included.
//!
//! OP_QUERY (opCode 2004): | flags i32 | fullCollectionName cstring | numberToSkip i32 |
//! numberToReturn i32 | query document | returnFieldsSelector document? |.
//! OP_REPLY (opCode 1): | responseFlags i32 | cursorID i64 | startingFrom i32 |
//! numberReturned i32 | document* |.

use std::fmt;

use bson::{Bson, Document, RawBsonRef, RawDocument};

/// Bytes of the message header.
pub const HEADER_BYTES: usize = 16;
/// The largest message accepted or sent (MongoDB's `maxMessageSizeBytes`).
pub const MESSAGE_BYTES_MAX: usize = 48_000_000;
/// The largest BSON document accepted (MongoDB's `maxBsonObjectSize`, 16 MiB).
pub const DOCUMENT_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Nesting of documents and arrays accepted; deeper input is refused before it is decoded, so
/// a hostile message cannot exhaust the stack of the recursive decoder.
pub const DEPTH_MAX: usize = 100;
/// Documents accepted in one kind-1 section (MongoDB's `maxWriteBatchSize`).
pub const SEQUENCE_DOCUMENTS_MAX: usize = 100_000;

/// OP_MSG.
pub const OP_MSG: i32 = 2013;
/// Legacy OP_QUERY.
pub const OP_QUERY: i32 = 2004;
/// Legacy OP_REPLY.
pub const OP_REPLY: i32 = 1;

/// OP_MSG flag: a CRC-32C checksum ends the message.
pub const FLAG_CHECKSUM_PRESENT: u32 = 1;
/// OP_MSG flag: the sender expects no reply.
pub const FLAG_MORE_TO_COME: u32 = 1 << 1;
/// OP_MSG flag: the client accepts exhaust replies (ignored: we never stream).
pub const FLAG_EXHAUST_ALLOWED: u32 = 1 << 16;
/// Flags this server understands; an unknown bit among the low 16 ("required") is an error.
const FLAGS_KNOWN: u32 = FLAG_CHECKSUM_PRESENT | FLAG_MORE_TO_COME | FLAG_EXHAUST_ALLOWED;

const _: () = assert!(DOCUMENT_BYTES_MAX < MESSAGE_BYTES_MAX);
const _: () = assert!(MESSAGE_BYTES_MAX <= i32::MAX as usize);

/// Why a message could not be decoded. The connection can go on after any of these except
/// `Length`, which leaves the byte stream without a known next message boundary.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// `messageLength` below the header size or above `MESSAGE_BYTES_MAX`.
    Length(i64),
    /// An opCode this server does not speak (OP_COMPRESSED, OP_INSERT, ...).
    OpCode(i32),
    /// Structurally wrong content, with what is wrong.
    Malformed(String),
    /// The checksum does not match the bytes.
    Checksum {
        /// The checksum in the message.
        expected: u32,
        /// The checksum of the bytes.
        actual: u32,
    },
}

impl FrameError {
    /// MongoDB's error code for the reply.
    pub fn code(&self) -> i32 {
        match self {
            FrameError::Length(_) => 10334, // BSONObjectTooLarge
            FrameError::OpCode(_) => 2,     // BadValue
            FrameError::Malformed(_) | FrameError::Checksum { .. } => 9, // FailedToParse
        }
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Length(length) => write!(
                formatter,
                "message length {length} is outside 16..={MESSAGE_BYTES_MAX} bytes"
            ),
            FrameError::OpCode(code) => write!(formatter, "unsupported opCode {code}"),
            FrameError::Malformed(reason) => write!(formatter, "malformed message: {reason}"),
            FrameError::Checksum { expected, actual } => write!(
                formatter,
                "checksum mismatch: message says {expected:#010x}, bytes give {actual:#010x}"
            ),
        }
    }
}

impl std::error::Error for FrameError {}

/// A message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Bytes of the whole message, header included.
    pub message_length: usize,
    /// The sender's id for this message.
    pub request_id: i32,
    /// The request this message answers (0 in requests).
    pub response_to: i32,
    /// The message type.
    pub op_code: i32,
}

impl Header {
    /// Decodes and bounds-checks a header.
    pub fn decode(bytes: &[u8; HEADER_BYTES]) -> Result<Header, FrameError> {
        let length = i64::from(read_i32(bytes, 0));
        if length < HEADER_BYTES as i64 || length > MESSAGE_BYTES_MAX as i64 {
            return Err(FrameError::Length(length));
        }
        let header = Header {
            message_length: length as usize,
            request_id: read_i32(bytes, 4),
            response_to: read_i32(bytes, 8),
            op_code: read_i32(bytes, 12),
        };
        assert!(header.message_length >= HEADER_BYTES);
        Ok(header)
    }

    fn encode(&self, out: &mut Vec<u8>) {
        assert!(self.message_length <= MESSAGE_BYTES_MAX);
        out.extend_from_slice(&(self.message_length as i32).to_le_bytes());
        out.extend_from_slice(&self.request_id.to_le_bytes());
        out.extend_from_slice(&self.response_to.to_le_bytes());
        out.extend_from_slice(&self.op_code.to_le_bytes());
    }
}

/// A decoded request: the command document (kind-1 sequences folded in as arrays), where it
/// came from, and how to answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The command; its first key names it, `$db` names the database.
    pub command: Document,
    /// Which framing to answer in.
    pub kind: RequestKind,
    /// Whether the client asked for no reply (OP_MSG `moreToCome`).
    pub more_to_come: bool,
}

/// The framing a request came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// OP_MSG: answer with OP_MSG.
    Msg,
    /// Legacy OP_QUERY on `db.$cmd`: answer with OP_REPLY.
    Query,
}

/// Decodes the body of a message (the bytes after the header) into a request.
pub fn decode_request(header: &Header, body: &[u8]) -> Result<Request, FrameError> {
    assert_eq!(header.message_length, HEADER_BYTES + body.len());
    match header.op_code {
        OP_MSG => decode_msg(header, body),
        OP_QUERY => decode_query(body),
        other => Err(FrameError::OpCode(other)),
    }
}

fn decode_msg(header: &Header, body: &[u8]) -> Result<Request, FrameError> {
    let mut reader = Reader { bytes: body, position: 0 };
    let flags = reader.u32()?;
    if flags & 0xFFFF & !FLAGS_KNOWN != 0 {
        return Err(malformed(format!("unknown required flag bits {flags:#x}")));
    }
    let mut end = body.len();
    if flags & FLAG_CHECKSUM_PRESENT != 0 {
        end = end.checked_sub(4).filter(|&end| end >= 4).ok_or_else(|| malformed("no checksum"))?;
        let expected = read_u32(body, end);
        let mut header_bytes = Vec::with_capacity(HEADER_BYTES);
        header.encode(&mut header_bytes);
        let actual = crc32c::crc32c_append(crc32c::crc32c(&header_bytes), &body[..end]);
        if expected != actual {
            return Err(FrameError::Checksum { expected, actual });
        }
    }
    let mut command = None;
    let mut sequences = Vec::new();
    while reader.position < end {
        match reader.u8()? {
            0 if command.is_some() => return Err(malformed("two kind-0 sections")),
            0 => command = Some(reader.document(end)?),
            1 => sequences.push(decode_sequence(&mut reader, end)?),
            kind => return Err(malformed(format!("unknown section kind {kind}"))),
        }
    }
    let mut command = command.ok_or_else(|| malformed("no kind-0 section"))?;
    for (identifier, documents) in sequences {
        if command.contains_key(&identifier) {
            return Err(malformed(format!("'{identifier}' both in the body and a sequence")));
        }
        command.insert(identifier, Bson::Array(documents.into_iter().map(Bson::from).collect()));
    }
    Ok(Request { command, kind: RequestKind::Msg, more_to_come: flags & FLAG_MORE_TO_COME != 0 })
}

fn decode_sequence(
    reader: &mut Reader<'_>,
    end: usize,
) -> Result<(String, Vec<Document>), FrameError> {
    let start = reader.position;
    let size = reader.i32()?;
    let size = usize::try_from(size).map_err(|_| malformed("negative sequence size"))?;
    let sequence_end = start.checked_add(size).filter(|&e| e <= end && size >= 5);
    let sequence_end = sequence_end.ok_or_else(|| malformed("sequence overruns the message"))?;
    let identifier = reader.cstring(sequence_end)?;
    let mut documents = Vec::new();
    while reader.position < sequence_end {
        if documents.len() >= SEQUENCE_DOCUMENTS_MAX {
            return Err(malformed(format!("more than {SEQUENCE_DOCUMENTS_MAX} documents")));
        }
        documents.push(reader.document(sequence_end)?);
    }
    assert_eq!(reader.position, sequence_end);
    Ok((identifier, documents))
}

fn decode_query(body: &[u8]) -> Result<Request, FrameError> {
    let mut reader = Reader { bytes: body, position: 0 };
    let _flags = reader.i32()?;
    let namespace = reader.cstring(body.len())?;
    let _skip = reader.i32()?;
    let _return = reader.i32()?;
    let query = reader.document(body.len())?;
    let Some(database) = namespace.strip_suffix(".$cmd") else {
        return Err(malformed(format!("OP_QUERY on '{namespace}': only commands are served")));
    };
    // Old shells wrap the command: {$query: {isMaster: 1}, $readPreference: ...}.
    let mut command = match query.get("$query") {
        Some(Bson::Document(inner)) => inner.clone(),
        _ => query,
    };
    command.insert("$db", database);
    Ok(Request { command, kind: RequestKind::Query, more_to_come: false })
}

/// Encodes a reply to the request `response_to` in the framing `kind`.
pub fn encode_reply(
    kind: RequestKind,
    request_id: i32,
    response_to: i32,
    reply: &Document,
) -> Vec<u8> {
    let mut document = Vec::new();
    reply.to_writer(&mut document).expect("a document encodes into a Vec");
    let (op_code, prefix) = match kind {
        RequestKind::Msg => (OP_MSG, vec![0, 0, 0, 0, 0]), // flagBits 0, section kind 0.
        RequestKind::Query => {
            let mut prefix = Vec::with_capacity(20);
            prefix.extend_from_slice(&0i32.to_le_bytes()); // responseFlags
            prefix.extend_from_slice(&0i64.to_le_bytes()); // cursorID
            prefix.extend_from_slice(&0i32.to_le_bytes()); // startingFrom
            prefix.extend_from_slice(&1i32.to_le_bytes()); // numberReturned
            (OP_REPLY, prefix)
        }
    };
    let message_length = HEADER_BYTES + prefix.len() + document.len();
    let header = Header { message_length, request_id, response_to, op_code };
    let mut out = Vec::with_capacity(message_length);
    header.encode(&mut out);
    out.extend_from_slice(&prefix);
    out.extend_from_slice(&document);
    assert_eq!(out.len(), message_length);
    out
}

/// Encodes an OP_MSG request (for clients and tests), with a checksum if asked.
pub fn encode_msg(request_id: i32, command: &Document, checksum: bool) -> Vec<u8> {
    let mut document = Vec::new();
    command.to_writer(&mut document).expect("a document encodes into a Vec");
    let flags = if checksum { FLAG_CHECKSUM_PRESENT } else { 0 };
    let message_length = HEADER_BYTES + 5 + document.len() + if checksum { 4 } else { 0 };
    let header = Header { message_length, request_id, response_to: 0, op_code: OP_MSG };
    let mut out = Vec::with_capacity(message_length);
    header.encode(&mut out);
    out.extend_from_slice(&flags.to_le_bytes());
    out.push(0);
    out.extend_from_slice(&document);
    if checksum {
        out.extend_from_slice(&crc32c::crc32c(&out).to_le_bytes());
    }
    assert_eq!(out.len(), message_length);
    out
}

/// Decodes the single document of an OP_MSG reply body (for clients and tests).
pub fn decode_reply_body(body: &[u8]) -> Result<Document, FrameError> {
    let mut reader = Reader { bytes: body, position: 4 };
    if reader.u8()? != 0 {
        return Err(malformed("reply does not start with a kind-0 section"));
    }
    reader.document(body.len())
}

fn malformed(reason: impl Into<String>) -> FrameError {
    FrameError::Malformed(reason.into())
}

fn read_i32(bytes: &[u8], at: usize) -> i32 {
    i32::from_le_bytes(bytes[at..at + 4].try_into().expect("four bytes"))
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("four bytes"))
}

/// A bounds-checked cursor over a message body.
struct Reader<'b> {
    bytes: &'b [u8],
    position: usize,
}

impl Reader<'_> {
    fn take(&mut self, count: usize) -> Result<&[u8], FrameError> {
        let end = self.position.checked_add(count).filter(|&end| end <= self.bytes.len());
        let end = end.ok_or_else(|| malformed("truncated"))?;
        let slice = &self.bytes[self.position..end];
        self.position = end;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, FrameError> {
        Ok(read_u32(self.take(4)?, 0))
    }

    fn i32(&mut self) -> Result<i32, FrameError> {
        Ok(read_i32(self.take(4)?, 0))
    }

    fn cstring(&mut self, end: usize) -> Result<String, FrameError> {
        let rest = self.bytes.get(self.position..end.min(self.bytes.len())).unwrap_or(&[]);
        let length = rest.iter().position(|&byte| byte == 0);
        let length = length.ok_or_else(|| malformed("unterminated string"))?;
        let text = std::str::from_utf8(&rest[..length]).map_err(|_| malformed("non-UTF-8 name"))?;
        let text = text.to_string();
        self.position += length + 1;
        Ok(text)
    }

    /// One BSON document that must end by `end`: length-checked, depth-checked, decoded.
    fn document(&mut self, end: usize) -> Result<Document, FrameError> {
        let start = self.position;
        let length = read_i32(self.bytes.get(start..start + 4).ok_or_else(truncated)?, 0);
        let length = usize::try_from(length).map_err(|_| malformed("negative document size"))?;
        if length > DOCUMENT_BYTES_MAX {
            return Err(malformed(format!("document of {length} bytes over {DOCUMENT_BYTES_MAX}")));
        }
        if start + length > end {
            return Err(truncated());
        }
        let bytes = self.take(length)?;
        let raw = RawDocument::from_bytes(bytes).map_err(|e| malformed(e.to_string()))?;
        check_depth(raw, 1)?;
        Document::try_from(raw).map_err(|error| malformed(error.to_string()))
    }
}

fn truncated() -> FrameError {
    malformed("truncated document")
}

/// Refuses documents nested deeper than `DEPTH_MAX` (bounded recursion: at most `DEPTH_MAX`).
fn check_depth(document: &RawDocument, depth: usize) -> Result<(), FrameError> {
    if depth > DEPTH_MAX {
        return Err(malformed(format!("nested deeper than {DEPTH_MAX}")));
    }
    for element in document {
        let (_, value) = element.map_err(|error| malformed(error.to_string()))?;
        match value {
            RawBsonRef::Document(inner) => check_depth(inner, depth + 1)?,
            RawBsonRef::Array(inner) => {
                let inner = RawDocument::from_bytes(inner.as_bytes())
                    .map_err(|error| malformed(error.to_string()))?;
                check_depth(inner, depth + 1)?
            }
            RawBsonRef::JavaScriptCodeWithScope(code) => check_depth(code.scope, depth + 1)?,
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[track_caller]
    fn check(message: &[u8]) -> Result<Request, FrameError> {
        let header: [u8; HEADER_BYTES] = message[..HEADER_BYTES].try_into().expect("header");
        let header = Header::decode(&header)?;
        decode_request(&header, &message[HEADER_BYTES..])
    }

    #[test]
    fn op_msg_round_trips_with_and_without_checksum() {
        let command = doc! {"ping": 1, "$db": "admin"};
        for checksum in [false, true] {
            let request = check(&encode_msg(1, &command, checksum)).expect("decodes");
            assert_eq!((request.command, request.kind), (command.clone(), RequestKind::Msg));
        }
    }

    #[test]
    fn op_query_commands_are_unwrapped() {
        let mut body = Vec::new();
        body.extend_from_slice(&0i32.to_le_bytes());
        body.extend_from_slice(b"admin.$cmd\0");
        body.extend_from_slice(&0i32.to_le_bytes());
        body.extend_from_slice(&(-1i32).to_le_bytes());
        doc! {"$query": {"isMaster": 1}}.to_writer(&mut body).expect("encode");
        let length = (HEADER_BYTES + body.len()) as i32;
        let mut message = Vec::new();
        for field in [length, 5, 0, OP_QUERY] {
            message.extend_from_slice(&field.to_le_bytes());
        }
        message.extend_from_slice(&body);
        let request = check(&message).expect("decodes");
        assert_eq!(request.command, doc! {"isMaster": 1, "$db": "admin"});
        assert_eq!(request.kind, RequestKind::Query);
    }

    #[test]
    fn deep_nesting_and_bad_lengths_are_refused() {
        let mut deep = doc! {"x": 1};
        for _ in 0..DEPTH_MAX + 1 {
            deep = doc! {"x": deep};
        }
        let message = encode_msg(1, &doc! {"ping": 1, "deep": deep}, false);
        assert!(matches!(check(&message), Err(FrameError::Malformed(_))));
        let mut short = encode_msg(1, &doc! {"ping": 1}, false);
        short[..4].copy_from_slice(&15i32.to_le_bytes());
        assert_eq!(check(&short), Err(FrameError::Length(15)));
        for cut in 1..8 {
            let whole = encode_msg(1, &doc! {"ping": 1}, false);
            let mut message = whole[..whole.len() - cut].to_vec();
            let length = message.len() as i32;
            message[..4].copy_from_slice(&length.to_le_bytes());
            assert!(check(&message).is_err(), "cut {cut}");
        }
    }
}
