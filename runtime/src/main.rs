//! The `agentrt` binary: parse the command line, set up logging, run, and turn failures into
//! a message with its error code and a non-zero exit status.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = agentrt::cli::Cli::parse();
    if !matches!(cli.command, agentrt::cli::Command::Serve { .. }) {
        die_quietly_on_a_closed_pipe();
    }
    let filter = tracing_subscriber::EnvFilter::try_from_env("AGENTRT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,agentrt=info"));
    let json_logs = std::env::var("AGENTRT_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json_logs {
        builder.json().init();
    } else {
        builder.init();
    }
    match agentrt::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error {}: {}", e.code, e.message);
            std::process::ExitCode::FAILURE
        }
    }
}

/// A one-off command whose output is piped into `head` ends quietly when the reader goes away,
/// as Unix tools do, instead of panicking on the failed write (Rust ignores SIGPIPE). The
/// server keeps ignoring it: a client closing its socket must not stop it.
fn die_quietly_on_a_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: restores the default disposition of one signal before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
