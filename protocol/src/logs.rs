//! Every binary's logs: to stderr, filtered by `RUST_LOG` (else `default`),
//! coloured only on a terminal, so a log file never holds escape codes.

use std::io::IsTerminal;

pub fn init(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
