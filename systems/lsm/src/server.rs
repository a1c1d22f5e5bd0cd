//! The key-value server: serves a `Db` over the protocol of `protocol.rs` on an `Env` listener,
//! one task per connection, with a connection limit and an idle timeout.
//!
//! Runs unchanged on the simulator (`World` streams) and in production (`TokioEnv`, the
//! `lsm-server` binary).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sim::{Env, TcpListener};

use crate::batch::WriteBatch;
use crate::db::Db;
use crate::error::Error;
use crate::protocol::{ErrorCode, ProtocolError, Request, Response, read_frame, write_frame};

/// Server limits.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Connections served at once; more are answered with a `Busy` error and closed.
    pub connection_count_max: usize,
    /// The largest request frame accepted.
    pub frame_bytes_max: usize,
    /// A connection idle this long is closed.
    pub idle_timeout: Duration,
}

impl Default for ServerOptions {
    fn default() -> ServerOptions {
        ServerOptions {
            connection_count_max: 256,
            frame_bytes_max: crate::protocol::FRAME_BYTES_MAX,
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// Decrements the live connection count when a connection task ends (or dies with its node).
struct ConnectionSlot(Arc<AtomicUsize>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Accepts connections on `listener` and serves `db` until accepting fails.
pub async fn serve<E: Env>(
    env: E,
    db: Db<E>,
    listener: E::TcpListener,
    options: ServerOptions,
) -> std::io::Result<()> {
    let live = Arc::new(AtomicUsize::new(0));
    loop {
        let (mut stream, _) = listener.accept().await?;
        if live.fetch_add(1, Ordering::AcqRel) >= options.connection_count_max {
            let slot = ConnectionSlot(Arc::clone(&live));
            let timeout = options.idle_timeout;
            let refuse_env = env.clone();
            drop(env.spawn(async move {
                let _slot = slot;
                let body = error_response(ErrorCode::Busy, "connection limit reached").encode();
                let _ = refuse_env.timeout(timeout, write_frame(&mut stream, &body)).await;
            }));
            continue;
        }
        let slot = ConnectionSlot(Arc::clone(&live));
        let connection = connection(env.clone(), db.clone(), stream, options.clone());
        drop(env.spawn(async move {
            let _slot = slot;
            connection.await;
        }));
    }
}

fn error_response(code: ErrorCode, message: &str) -> Response {
    Response::Error { code, message: message.to_string() }
}

/// Serves one connection: request, response, until the peer closes, idles or misbehaves.
async fn connection<E: Env>(env: E, db: Db<E>, mut stream: E::TcpStream, options: ServerOptions) {
    loop {
        let read =
            env.timeout(options.idle_timeout, read_frame(&mut stream, options.frame_bytes_max));
        let (response, keep_open) = match read.await {
            Err(_) | Ok(Err(ProtocolError::Io(_))) | Ok(Ok(None)) => return,
            Ok(Err(error @ ProtocolError::TooLarge { .. })) => {
                (error_response(ErrorCode::TooLarge, &error.to_string()), false)
            }
            Ok(Err(error)) => (error_response(ErrorCode::Malformed, &error.to_string()), false),
            Ok(Ok(Some(body))) => match Request::decode(&body) {
                Ok(request) => (execute(&db, request).await, true),
                Err(reason) => (error_response(ErrorCode::Malformed, reason), false),
            },
        };
        let body = response.encode();
        let written = env.timeout(options.idle_timeout, write_frame(&mut stream, &body));
        if !matches!(written.await, Ok(Ok(()))) || !keep_open {
            return;
        }
    }
}

fn store_error(error: &Error) -> Response {
    let code = match error {
        Error::InvalidArgument(_) => ErrorCode::InvalidArgument,
        _ => ErrorCode::Store,
    };
    error_response(code, &error.to_string())
}

/// Runs one request against the store.
pub async fn execute<E: Env>(db: &Db<E>, request: Request) -> Response {
    let result = match request {
        Request::Get { key } => db.get(&key).await.map(Response::Value),
        Request::Put { key, value, durability } => {
            db.put(&key, &value, durability).await.map(|()| Response::Ok)
        }
        Request::Delete { key, durability } => {
            db.delete(&key, durability).await.map(|()| Response::Ok)
        }
        Request::Scan { start, end, limit, reverse } => {
            let range = (
                start.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Included),
                end.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded),
            );
            let iter = if reverse { db.range_rev(range).await } else { db.range(range).await };
            match iter {
                Ok(mut iter) => iter.collect_max(limit as usize).await.map(Response::Items),
                Err(error) => Err(error),
            }
        }
        Request::Batch { ops, durability } => {
            let mut batch = WriteBatch::new();
            for op in ops {
                match op {
                    crate::batch::BatchOp::Put { key, value } => batch.put(key, value),
                    crate::batch::BatchOp::Delete { key } => batch.delete(key),
                };
            }
            db.write(batch, durability).await.map(|()| Response::Ok)
        }
    };
    result.unwrap_or_else(|error| store_error(&error))
}
