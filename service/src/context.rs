//! Errors that name what they concern: an I/O error becomes "binding 127.0.0.1:7946: address
//! already in use (is another process listening there?)", with a hint for the common kinds.

use std::fmt::Display;
use std::io;

/// Adds what an error concerns (a path, an address, a peer) and a hint for common I/O kinds.
pub trait Concerning<T> {
    /// `doing` is the action ("opening the store in", "binding"), `what` the thing it
    /// concerns; the error reads "`doing` `what`: error (hint)".
    fn concerning(self, doing: &str, what: impl Display) -> anyhow::Result<T>;
}

impl<T, E> Concerning<T> for Result<T, E>
where
    E: std::error::Error + Send + Sync + 'static,
{
    fn concerning(self, doing: &str, what: impl Display) -> anyhow::Result<T> {
        self.map_err(|error| {
            let hint = io_kind(&error).and_then(hint);
            let message = match hint {
                Some(hint) => format!("{doing} {what} ({hint})"),
                None => format!("{doing} {what}"),
            };
            anyhow::Error::new(error).context(message)
        })
    }
}

/// The kind of the first `io::Error` in `error`'s chain.
fn io_kind(error: &(dyn std::error::Error + 'static)) -> Option<io::ErrorKind> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(io) = error.downcast_ref::<io::Error>() {
            return Some(io.kind());
        }
        next = error.source();
    }
    None
}

/// What an operator should check for an I/O error of `kind`.
fn hint(kind: io::ErrorKind) -> Option<&'static str> {
    Some(match kind {
        io::ErrorKind::AddrInUse => "is another process listening there?",
        io::ErrorKind::AddrNotAvailable => "is that address one of this machine's?",
        io::ErrorKind::PermissionDenied => "check the permissions, or use a port above 1023",
        io::ErrorKind::NotFound => "does it exist?",
        io::ErrorKind::ConnectionRefused => "is the server running there?",
        io::ErrorKind::WouldBlock => "is another process using it? it is locked",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_thing_and_hints() {
        let failed: Result<(), io::Error> = Err(io::ErrorKind::AddrInUse.into());
        let error = failed.concerning("binding", "127.0.0.1:1").unwrap_err();
        let text = format!("{error:#}");
        assert!(text.starts_with("binding 127.0.0.1:1 (is another process"), "{text}");
        let failed: Result<(), io::Error> = Err(io::Error::other("odd"));
        let text = format!("{:#}", failed.concerning("reading", "/x").unwrap_err());
        assert_eq!(text, "reading /x: odd");
    }
}
