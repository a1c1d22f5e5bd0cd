//! Standard output that ends quietly: a write to a closed pipe (`... | head -1`) is the typed
//! error [`OutputClosed`], which [`crate::run`] and [`crate::exit_code`] turn into exit 0,
//! instead of the panic `println!` gives.

use std::fmt::{self, Display};
use std::io::{self, Write};

/// Standard output was closed by its reader; the run should end quietly.
#[derive(Debug)]
pub struct OutputClosed(io::Error);

impl Display for OutputClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "standard output closed: {}", self.0)
    }
}

impl std::error::Error for OutputClosed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// Writes `line` and a newline to stdout. A broken pipe is [`OutputClosed`]; other failures
/// are errors naming stdout.
pub fn println(line: impl Display) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    let written = writeln!(out, "{line}").and_then(|()| out.flush());
    match written {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::BrokenPipe => Err(OutputClosed(error).into()),
        Err(error) => Err(anyhow::Error::new(error).context("writing to standard output")),
    }
}

/// Whether `error` (or one of its causes) is [`OutputClosed`].
pub fn is_output_closed(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| cause.is::<OutputClosed>())
}
