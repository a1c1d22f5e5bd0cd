//! A client of the key-value server over any `Env` stream: one request at a time.

use std::fmt;

use crate::batch::BatchOp;
use crate::options::Durability;
use crate::protocol::{
    ErrorCode, FRAME_BYTES_MAX, ProtocolError, Request, Response, read_frame, write_frame,
};

/// What can go wrong with a call.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClientError {
    /// The stream or the framing failed.
    Protocol(ProtocolError),
    /// The server answered with an error.
    Server {
        /// What kind of failure.
        code: ErrorCode,
        /// The server's reason.
        message: String,
    },
    /// The server answered with a response of the wrong kind.
    Unexpected(Response),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Protocol(error) => write!(f, "{error}"),
            ClientError::Server { code, message } => write!(f, "server error {code:?}: {message}"),
            ClientError::Unexpected(response) => write!(f, "unexpected response {response:?}"),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Protocol(error) => Some(error),
            _ => None,
        }
    }
}

impl From<ProtocolError> for ClientError {
    fn from(error: ProtocolError) -> ClientError {
        ClientError::Protocol(error)
    }
}

/// A connection to a key-value server.
#[derive(Debug)]
pub struct Client<S> {
    stream: S,
}

impl<S: sim::TcpStream> Client<S> {
    /// A client over a connected stream.
    pub fn new(stream: S) -> Client<S> {
        Client { stream }
    }

    /// Sends `request` and waits for the response; an error response becomes `Err`.
    pub async fn call(&mut self, request: &Request) -> Result<Response, ClientError> {
        write_frame(&mut self.stream, &request.encode()).await.map_err(ProtocolError::Io)?;
        let Some(body) = read_frame(&mut self.stream, FRAME_BYTES_MAX).await? else {
            let closed = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "server closed");
            return Err(ClientError::Protocol(ProtocolError::Io(closed)));
        };
        match Response::decode(&body).map_err(ProtocolError::Malformed)? {
            Response::Error { code, message } => Err(ClientError::Server { code, message }),
            response => Ok(response),
        }
    }

    async fn call_ok(&mut self, request: &Request) -> Result<(), ClientError> {
        match self.call(request).await? {
            Response::Ok => Ok(()),
            other => Err(ClientError::Unexpected(other)),
        }
    }

    /// The value of `key`.
    pub async fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, ClientError> {
        match self.call(&Request::Get { key: key.to_vec() }).await? {
            Response::Value(value) => Ok(value),
            other => Err(ClientError::Unexpected(other)),
        }
    }

    /// Sets `key` to `value`.
    pub async fn put(
        &mut self,
        key: &[u8],
        value: &[u8],
        durability: Durability,
    ) -> Result<(), ClientError> {
        self.call_ok(&Request::Put { key: key.to_vec(), value: value.to_vec(), durability }).await
    }

    /// Removes `key`.
    pub async fn delete(&mut self, key: &[u8], durability: Durability) -> Result<(), ClientError> {
        self.call_ok(&Request::Delete { key: key.to_vec(), durability }).await
    }

    /// Up to `limit` pairs in `[start, end)`, descending if `reverse`.
    pub async fn scan(
        &mut self,
        start: Option<&[u8]>,
        end: Option<&[u8]>,
        limit: u32,
        reverse: bool,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, ClientError> {
        let request = Request::Scan {
            start: start.map(<[u8]>::to_vec),
            end: end.map(<[u8]>::to_vec),
            limit,
            reverse,
        };
        match self.call(&request).await? {
            Response::Items(items) => Ok(items),
            other => Err(ClientError::Unexpected(other)),
        }
    }

    /// Applies `ops` atomically.
    pub async fn batch(
        &mut self,
        ops: Vec<BatchOp>,
        durability: Durability,
    ) -> Result<(), ClientError> {
        self.call_ok(&Request::Batch { ops, durability }).await
    }
}
