use std::io::IsTerminal;

use chat_server::config::LogFormat;
use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let config = chat_server::config::Config::parse();
    // Logs go to stderr; stdout carries only the "listening on" lines. Colour escapes only
    // on a terminal (a log file was full of them); JSON lines for log shippers.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match config.log_format {
        LogFormat::Plain => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    match chat_server::run(config) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "chat-server stopped");
            eprintln!("chat-server: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
