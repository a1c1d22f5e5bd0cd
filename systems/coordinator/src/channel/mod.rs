//! The authenticated, encrypted control channel between an agent and the coordinator.
//!
//! Why: every registration, key and network map travels here, so the coordinator must know
//! which machine it talks to and the agent must know it talks to the real coordinator. The
//! channel runs `Noise_IK_25519_ChaChaPoly_BLAKE2s` (`handshake`) over one `Env` stream, the
//! initiator's static key being the node's machine key, then seals typed messages (`frame`'s
//! codec) in counted transport frames (`transport`). The protocol cores are sans-IO; `Channel`,
//! `Sender` and `Receiver` are the thin async drivers. Byte tables: `docs/channel.md`.
//!
//! Every error is fatal to the session (the half that met it answers `Broken` afterwards),
//! except a message that authenticated but did not decode as the type asked for: the stream is
//! still in step, so the caller may go on.
//!
//! What `accept` proves, and what it does not: the returned machine key is authenticated (only
//! its holder could have sealed message 1 for this server key). But message 1 can be replayed
//! by anyone who recorded it, and the replayer then holds no session keys; so the coordinator
//! treats a machine as connected only once its first transport message has opened.

pub mod handshake;
pub mod transport;

use std::fmt;
use std::io;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use sim::Env;
use tokio::io::{ReadHalf, WriteHalf};
use x25519_dalek::StaticSecret;
use zeroize::Zeroizing;

use crate::frame::{self, FrameError};
use crate::types::Key;
use handshake::{HANDSHAKE_LEN_MAX, Initiator, RESPONSE_LEN, SessionKeys};
use transport::{COUNTER_LEN, OVERHEAD_LEN, Opener, Sealer};

/// How long either side waits for the whole handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest message plaintext (encoded, with its version byte) one frame can carry.
pub const MESSAGE_LEN_MAX: usize = frame::FRAME_LEN_MAX - OVERHEAD_LEN;

/// Why the channel failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum ChannelError {
    /// A handshake message was malformed or did not authenticate.
    BadHandshake {
        /// What was wrong with it.
        reason: &'static str,
    },
    /// The peer closed the stream during the handshake: it refused our keys or our version.
    Rejected,
    /// The peer speaks a protocol or message version this build does not know.
    UnknownVersion {
        /// The version byte received.
        version: u8,
    },
    /// A frame (announced or to be sent) is longer than the limit.
    FrameTooLong {
        /// Its length in bytes.
        len: u64,
        /// The limit it broke.
        max: usize,
    },
    /// A transport frame did not authenticate: altered, or sealed under another key.
    DecryptFailed {
        /// The counter it claimed, if it was long enough to claim one.
        counter: Option<u64>,
    },
    /// A transport frame carried another counter than the next one: replayed, reordered or a
    /// frame went missing.
    BadCounter {
        /// The only counter acceptable.
        expected: u64,
        /// The counter received.
        received: u64,
    },
    /// The session used up its counters; reconnect for fresh keys.
    CounterExhausted,
    /// An authenticated message did not decode as the type asked for.
    Malformed {
        /// What the decoder said.
        reason: String,
    },
    /// A message could not be encoded.
    Unencodable {
        /// What the encoder said.
        reason: String,
    },
    /// The peer closed the stream between two messages.
    Closed,
    /// The stream failed.
    Io(io::Error),
    /// The handshake did not finish within `HANDSHAKE_TIMEOUT`.
    Timeout,
    /// An earlier error, or a call abandoned mid-frame, left this half unusable.
    Broken,
}

impl fmt::Display for ChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChannelError::BadHandshake { reason } => write!(f, "bad handshake: {reason}"),
            ChannelError::Rejected => {
                f.write_str("the peer closed the connection during the handshake (keys refused?)")
            }
            ChannelError::UnknownVersion { version } => write!(f, "unknown version {version}"),
            ChannelError::FrameTooLong { len, max } => {
                write!(f, "frame too long: {len} bytes, at most {max} allowed")
            }
            ChannelError::DecryptFailed { counter: Some(counter) } => {
                write!(f, "decrypt failed: frame {counter} did not authenticate")
            }
            ChannelError::DecryptFailed { counter: None } => {
                f.write_str("decrypt failed: frame too short to carry a counter and a tag")
            }
            ChannelError::BadCounter { expected, received } => write!(
                f,
                "frame counter {received} where {expected} was due (replayed, reordered or lost)"
            ),
            ChannelError::CounterExhausted => f.write_str("session counters exhausted: rekey"),
            ChannelError::Malformed { reason } => write!(f, "malformed message: {reason}"),
            ChannelError::Unencodable { reason } => {
                write!(f, "message cannot be encoded: {reason}")
            }
            ChannelError::Closed => f.write_str("channel closed by the peer"),
            ChannelError::Io(error) => {
                write!(f, "channel i/o failed ({:?}): {error}", error.kind())
            }
            ChannelError::Timeout => {
                write!(f, "handshake timed out after {} s", HANDSHAKE_TIMEOUT.as_secs())
            }
            ChannelError::Broken => f.write_str("channel broken by an earlier error"),
        }
    }
}

impl std::error::Error for ChannelError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ChannelError::Io(error) => Some(error),
            _ => None,
        }
    }
}

impl From<FrameError> for ChannelError {
    fn from(error: FrameError) -> Self {
        match error {
            FrameError::TooLong { len, max } => ChannelError::FrameTooLong { len, max },
            FrameError::Closed => ChannelError::Closed,
            FrameError::Io(error) => ChannelError::Io(error),
            FrameError::UnknownVersion { version } => ChannelError::UnknownVersion { version },
            FrameError::Malformed { reason } => ChannelError::Malformed { reason },
            FrameError::Unencodable { reason } => ChannelError::Unencodable { reason },
        }
    }
}

impl From<io::Error> for ChannelError {
    fn from(error: io::Error) -> Self {
        ChannelError::Io(error)
    }
}

/// An established channel: send and receive typed messages, or `split` into halves.
pub struct Channel<E: Env> {
    sender: Sender<E>,
    receiver: Receiver<E>,
}

/// The sending half.
pub struct Sender<E: Env> {
    env: E,
    writer: WriteHalf<E::TcpStream>,
    sealer: Sealer,
    sealed: Vec<u8>,
    scratch: Vec<u8>,
    broken: bool,
}

/// The receiving half.
pub struct Receiver<E: Env> {
    env: E,
    reader: ReadHalf<E::TcpStream>,
    opener: Opener,
    frame: Vec<u8>,
    broken: bool,
}

impl<E: Env> fmt::Debug for Channel<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("sent", &self.sender.sealer.counter())
            .field("received", &self.receiver.opener.expected())
            .finish_non_exhaustive()
    }
}

impl<E: Env> fmt::Debug for Sender<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender").field("sent", &self.sealer.counter()).finish_non_exhaustive()
    }
}

impl<E: Env> fmt::Debug for Receiver<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver")
            .field("received", &self.opener.expected())
            .finish_non_exhaustive()
    }
}

fn bounded<T>(result: Result<Result<T, ChannelError>, sim::Elapsed>) -> Result<T, ChannelError> {
    result.unwrap_or(Err(ChannelError::Timeout))
}

/// During the handshake a clean close means the peer refused us.
fn refused(error: FrameError) -> ChannelError {
    match error {
        FrameError::Closed => ChannelError::Rejected,
        other => other.into(),
    }
}

impl<E: Env> Channel<E> {
    /// Agent side: runs the handshake on `stream` as `machine_private` towards the coordinator
    /// whose static key is `server_public`, within `HANDSHAKE_TIMEOUT`.
    pub async fn connect(
        env: E,
        mut stream: E::TcpStream,
        machine_private: [u8; 32],
        server_public: Key,
    ) -> Result<Channel<E>, ChannelError> {
        let machine_private = Zeroizing::new(machine_private);
        let handshake = async {
            let (initiator, initiation) =
                Initiator::start(&mut env.rng(), &machine_private, &server_public)?;
            let mut scratch = Vec::new();
            frame::write_frame(&env, &mut stream, &initiation, &mut scratch).await?;
            let mut response = Vec::new();
            frame::read_frame(&mut stream, RESPONSE_LEN, &mut response).await.map_err(refused)?;
            initiator.finish(&response)
        };
        let keys = bounded(env.timeout(HANDSHAKE_TIMEOUT, handshake).await)?;
        Ok(Channel::new(env, stream, keys))
    }

    /// Coordinator side: runs the handshake on `stream` with `server_private` within
    /// `HANDSHAKE_TIMEOUT`; returns the channel and the peer's authenticated machine key.
    pub async fn accept(
        env: E,
        mut stream: E::TcpStream,
        server_private: [u8; 32],
    ) -> Result<(Channel<E>, Key), ChannelError> {
        let server_private = StaticSecret::from(server_private);
        let handshake = async {
            let mut initiation = Vec::new();
            frame::read_frame(&mut stream, HANDSHAKE_LEN_MAX, &mut initiation)
                .await
                .map_err(refused)?;
            let (machine, response, keys) =
                handshake::respond(&mut env.rng(), &server_private, &initiation)?;
            // An overloaded coordinator (a long accept queue, a busy CPU) answers handshakes
            // late; agents must tolerate a reply that arrives just inside their timeout.
            if env.buggify("coordinator.channel.slow_handshake") {
                env.sleep(HANDSHAKE_TIMEOUT * 8 / 10).await;
            }
            let mut scratch = Vec::new();
            frame::write_frame(&env, &mut stream, &response, &mut scratch).await?;
            Ok((machine, keys))
        };
        let (machine, keys) = bounded(env.timeout(HANDSHAKE_TIMEOUT, handshake).await)?;
        Ok((Channel::new(env, stream, keys), machine))
    }

    fn new(env: E, stream: E::TcpStream, keys: SessionKeys) -> Channel<E> {
        let (reader, writer) = tokio::io::split(stream);
        let sender = Sender {
            env: env.clone(),
            writer,
            sealer: Sealer::new(&keys.send),
            sealed: Vec::new(),
            scratch: Vec::new(),
            broken: false,
        };
        let receiver = Receiver {
            env,
            reader,
            opener: Opener::new(&keys.receive),
            frame: Vec::new(),
            broken: false,
        };
        Channel { sender, receiver }
    }

    /// Seals and sends one message.
    pub async fn send<T: Serialize>(&mut self, message: &T) -> Result<(), ChannelError> {
        self.sender.send(message).await
    }

    /// Receives and opens one message.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<T, ChannelError> {
        self.receiver.recv().await
    }

    /// Splits into halves that separate tasks can own (one streams maps, one reads requests).
    pub fn split(self) -> (Sender<E>, Receiver<E>) {
        (self.sender, self.receiver)
    }
}

impl<E: Env> Sender<E> {
    /// Seals and sends one message. Not cancel-safe: a send abandoned mid-frame breaks the half.
    pub async fn send<T: Serialize>(&mut self, message: &T) -> Result<(), ChannelError> {
        if self.broken {
            return Err(ChannelError::Broken);
        }
        let mut sealed = std::mem::take(&mut self.sealed);
        sealed.clear();
        sealed.extend_from_slice(&[0u8; COUNTER_LEN]);
        frame::encode_into(message, &mut sealed)?;
        if sealed.len() - COUNTER_LEN > MESSAGE_LEN_MAX {
            let len = sealed.len() + transport::OVERHEAD_LEN - COUNTER_LEN;
            self.sealed = sealed;
            return Err(ChannelError::FrameTooLong { len: len as u64, max: frame::FRAME_LEN_MAX });
        }
        self.broken = true;
        self.sealer.seal_in_place(&mut sealed)?;
        let written = frame::write_frame(&self.env, &mut self.writer, &sealed, &mut self.scratch);
        let result = written.await;
        self.sealed = sealed;
        result?;
        self.broken = false;
        Ok(())
    }

    /// Frames sent so far (the next counter).
    pub fn sent(&self) -> u64 {
        self.sealer.counter()
    }
}

impl<E: Env> Receiver<E> {
    /// Receives, opens and decodes one message. Not cancel-safe: a receive abandoned mid-frame
    /// breaks the half. Bound it with `Env::timeout` where silence must end the session.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<T, ChannelError> {
        if self.broken {
            return Err(ChannelError::Broken);
        }
        self.broken = true;
        frame::read_frame(&mut self.reader, frame::FRAME_LEN_MAX, &mut self.frame).await?;
        let plaintext = self.opener.open(&mut self.frame)?;
        self.broken = false;
        Ok(frame::decode(plaintext)?)
    }

    /// Frames received so far (the next counter expected).
    pub fn received(&self) -> u64 {
        self.opener.expected()
    }

    /// The environment this half runs in.
    pub fn env(&self) -> &E {
        &self.env
    }
}

#[cfg(test)]
mod tests;
