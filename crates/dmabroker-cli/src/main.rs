//! `dmabroker`: the command-line front end (see `dmabroker --help`).
// Two `unsafe` calls in this crate: adopting the fds systemd passed
// (`take_listen_fds`, in `command/serve.rs`) and the socket the broker
// passes its allocation worker (`take_child_fd`, `command/charge_worker.rs`),
// promises only `main`'s start-up can make. Everything else stays safe code.
#![deny(unsafe_code)]

mod cli;
mod command;
mod output;

use clap::Parser;
use std::io::IsTerminal;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let level = match cli.verbose {
        0 => tracing::Level::WARN,
        1 => tracing::Level::INFO,
        2 => tracing::Level::DEBUG,
        _ => tracing::Level::TRACE,
    };
    // Colour only for a person at a terminal (https://no-color.org: any
    // non-empty NO_COLOR turns it off).
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let ansi = std::io::stderr().is_terminal() && !no_color;
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(ansi)
        .init();
    match command::run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("dmabroker: error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes joined with `: `, leaving out a cause whose text
/// the message already contains (many errors print their source in their own
/// message and also return it from `source()`).
pub(crate) fn error_chain(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !cause.is_empty() && !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Outer(std::io::Error);

    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "cannot read: {}", self.0)
        }
    }

    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn causes_already_in_the_message_are_not_repeated() {
        let io = std::io::Error::from_raw_os_error(2);
        let once = io.to_string();
        let e = anyhow::Error::new(Outer(io)).context("/x.toml");
        let text = error_chain(&e);
        assert_eq!(text.matches(&once).count(), 1, "{text}");
        assert!(text.starts_with("/x.toml: cannot read: "), "{text}");
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(error_chain(&plain), "outer: inner");
    }
}
