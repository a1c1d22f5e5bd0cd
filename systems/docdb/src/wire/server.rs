//! The accept loop and the per-connection loop, generic over `sim::Env`: the same code serves
//! real clients (`docdb-server` on `TokioEnv`) and simulated ones (`World` streams).
//!
//! A connection reads one message at a time (bounded by `MESSAGE_BYTES_MAX` and the idle
//! timeout), answers it, and goes on. A message with a bad length closes the connection after
//! an error reply (the stream has no known next boundary); any other malformed message gets an
//! error reply and the connection stays open. Past the connection limit, a connection's first
//! request is answered with an error and the connection is closed.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bson::Document;
use sim::{Env, TcpListener};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::wire::WireServer;
use crate::wire::frame::{self, FrameError, HEADER_BYTES, Header, RequestKind};
use crate::wire::reply::{CommandError, code};

/// Decrements the live connection count when a connection task ends (or dies with its node).
struct ConnectionSlot(Arc<AtomicUsize>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Accepts connections on `listener` and serves them until accepting fails.
pub async fn serve<E: Env>(server: WireServer<E>, listener: E::TcpListener) -> std::io::Result<()> {
    let env = server.inner.env.clone();
    let live = Arc::new(AtomicUsize::new(0));
    loop {
        let (stream, _) = listener.accept().await?;
        let over_limit =
            live.fetch_add(1, Ordering::AcqRel) >= server.inner.options.connection_count_max;
        let slot = ConnectionSlot(Arc::clone(&live));
        let server = server.clone();
        drop(env.spawn(async move {
            let _slot = slot;
            if over_limit {
                refuse(server, stream).await;
            } else {
                connection(server, stream).await;
            }
        }));
    }
}

/// Past the limit: answer the first request with an error, then close.
async fn refuse<E: Env>(server: WireServer<E>, mut stream: E::TcpStream) {
    let env = server.inner.env.clone();
    let timeout = server.inner.options.idle_timeout;
    let Ok(Ok(Some((header, _)))) = env.timeout(timeout, read_message(&mut stream)).await else {
        return;
    };
    let limit = server.inner.options.connection_count_max;
    let message = format!("connection limit of {limit} reached; try again later");
    let reply = CommandError::new(code::TOO_MANY, message).to_reply();
    let kind =
        if header.op_code == frame::OP_QUERY { RequestKind::Query } else { RequestKind::Msg };
    let bytes = frame::encode_reply(kind, 0, header.request_id, &reply);
    let _ = env.timeout(timeout, write_all(&mut stream, &bytes)).await;
}

/// Serves one connection until the peer closes, idles, or sends an unframeable message.
async fn connection<E: Env>(server: WireServer<E>, mut stream: E::TcpStream) {
    let env = server.inner.env.clone();
    let timeout = server.inner.options.idle_timeout;
    let mut state = server.connection();
    let mut reply_id = 0i32;
    loop {
        let (request_id, kind, reply, keep_open) =
            match env.timeout(timeout, read_message(&mut stream)).await {
                Err(_) | Ok(Ok(None)) => return,
                Ok(Err(ReadError::Io)) => return,
                Ok(Err(ReadError::Frame { request_id, error })) => {
                    (request_id, RequestKind::Msg, frame_error_reply(&error), false)
                }
                Ok(Ok(Some((header, body)))) => match frame::decode_request(&header, &body) {
                    Err(error) => {
                        (header.request_id, RequestKind::Msg, frame_error_reply(&error), true)
                    }
                    Ok(request) => {
                        let reply = server.handle(&mut state, request.command).await;
                        if request.more_to_come {
                            continue;
                        }
                        (header.request_id, request.kind, reply, true)
                    }
                },
            };
        reply_id = reply_id.wrapping_add(1);
        let bytes = frame::encode_reply(kind, reply_id, request_id, &reply);
        let written = env.timeout(timeout, write_all(&mut stream, &bytes)).await;
        if !matches!(written, Ok(Ok(()))) || !keep_open {
            return;
        }
    }
}

fn frame_error_reply(error: &FrameError) -> Document {
    let mut reply = CommandError::new(error.code(), error.to_string()).to_reply();
    reply.insert("$err", error.to_string());
    reply
}

/// Why a message could not be read.
enum ReadError {
    /// The stream broke.
    Io,
    /// The header is unusable; `request_id` is what it claimed.
    Frame { request_id: i32, error: FrameError },
}

/// Reads one whole message: `None` at a clean end of stream before a header.
async fn read_message<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Option<(Header, Vec<u8>)>, ReadError> {
    let mut header_bytes = [0u8; HEADER_BYTES];
    match stream.read(&mut header_bytes[..1]).await {
        Ok(0) => return Ok(None),
        Ok(_) => {}
        Err(_) => return Err(ReadError::Io),
    }
    stream.read_exact(&mut header_bytes[1..]).await.map_err(|_| ReadError::Io)?;
    let header = Header::decode(&header_bytes).map_err(|error| ReadError::Frame {
        request_id: i32::from_le_bytes(header_bytes[4..8].try_into().expect("four bytes")),
        error,
    })?;
    // Grow the buffer with what actually arrives, so a message that only claims to be large
    // costs nothing until its bytes come.
    let body_bytes = header.message_length - HEADER_BYTES;
    let mut body = Vec::with_capacity(body_bytes.min(64 * 1024));
    let read = (&mut *stream).take(body_bytes as u64).read_to_end(&mut body).await;
    if read.is_err() || body.len() != body_bytes {
        return Err(ReadError::Io);
    }
    Ok(Some((header, body)))
}

async fn write_all<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) -> std::io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}
