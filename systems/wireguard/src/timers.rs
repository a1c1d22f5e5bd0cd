//! WireGuard's protocol constants (section 6.1 of the paper) and the jitter rule.

use std::time::Duration;

/// After this many messages under one keypair the initiator starts a new handshake.
pub const REKEY_AFTER_MESSAGES: u64 = 1 << 60;
/// No message is sent or accepted under a keypair past this counter.
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);
/// After this age the initiator of a keypair starts a new handshake when it sends.
pub const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
/// A keypair older than this is never used to send or receive.
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);
/// How long to keep retrying a handshake before giving up (and dropping staged packets).
pub const REKEY_ATTEMPT_TIME: Duration = Duration::from_secs(90);
/// How long to wait for a handshake response before retrying, and the least time between two
/// initiations.
pub const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
/// Send a keepalive if data was received and nothing sent for this long.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest random extra delay added to handshake retries (the kernel's one third second).
pub const REKEY_TIMEOUT_JITTER_MAX: Duration = Duration::from_millis(333);
/// Handshake retries before giving up: `REKEY_ATTEMPT_TIME / REKEY_TIMEOUT`.
pub const HANDSHAKE_ATTEMPT_MAX: u32 = 18;
/// The least time between two accepted initiations from one peer (the kernel's 50 per second).
pub const INITIATION_INTERVAL_MIN: Duration = Duration::from_millis(20);

const _: () = assert!(REKEY_AFTER_MESSAGES < REJECT_AFTER_MESSAGES);
const _: () = assert!(REKEY_AFTER_TIME.as_secs() < REJECT_AFTER_TIME.as_secs());
const _: () =
    assert!(HANDSHAKE_ATTEMPT_MAX as u64 * REKEY_TIMEOUT.as_secs() == REKEY_ATTEMPT_TIME.as_secs());
