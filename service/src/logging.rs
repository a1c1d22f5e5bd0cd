//! Logs: `tracing` events on stderr, filtered by `RUST_LOG` (default `info`; a malformed
//! directive is skipped, not fatal), as human-readable text or one JSON object per line.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;

/// How log lines are written.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per event (for log shippers).
    Json,
}

/// The logging flags (every binary, servers and clients).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct LogOptions {
    /// Log line format on stderr; `RUST_LOG` (e.g. `info,lsm=debug`) filters, default `info`.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

/// Installs the global subscriber (a second call in one process is a no-op).
pub fn init_logging(options: &LogOptions) {
    let filter =
        EnvFilter::builder().with_default_directive(LevelFilter::INFO.into()).from_env_lossy();
    // Colours only for a person at a terminal, never into files or pipes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let installed = match options.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    // Already installed (tests that run twice in one process): keep the first.
    drop(installed);
}
