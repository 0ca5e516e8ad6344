//! The `agentrt` binary: parse the command line, set up logging, run, and turn failures into
//! a message with its error code and a non-zero exit status.

use std::io::IsTerminal;

use clap::{CommandFactory, FromArgMatches};

fn main() -> std::process::ExitCode {
    unset_empty_variables();
    let matches = agentrt::cli::Cli::command()
        .try_get_matches()
        .unwrap_or_else(|e| refuse_command_line(e));
    let json_output = flag_anywhere(&matches, "json");
    let cli = agentrt::cli::Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let serving = matches!(cli.command, agentrt::cli::Command::Serve { .. });
    // Long one-off commands keep SIGPIPE ignored while they work: a closed stderr pipe (the
    // progress lines' reader gone) must not kill an eval half-way; they restore the default
    // before printing their result.
    let long_work = matches!(
        cli.command,
        agentrt::cli::Command::Eval { .. } | agentrt::cli::Command::Run { .. }
    );
    if !serving && !long_work {
        agentrt::cli::die_quietly_on_a_closed_pipe();
    }
    // The server logs what it does; a one-off command prints its result, and only warnings
    // besides (AGENTRT_LOG shows more).
    let default_filter = if serving { "warn,agentrt=info" } else { "warn" };
    let filter = log_filter(default_filter);
    let json_logs = agentrt::settings::word("AGENTRT_LOG_FORMAT") == Some("json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour for a person at a terminal, not escape codes in a log file or a journal.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if json_logs {
        builder.json().init();
    } else {
        builder.init();
    }
    match agentrt::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The failure's exit status must reach the caller even when nobody reads the
            // message (`agentrt eval … 2>&1 | head`): a closed pipe neither kills the process
            // (status 141) nor makes the write panic.
            ignore_closed_pipes();
            use std::io::Write;
            // A message's later lines indented: one quoting a plugin cannot print a line of
            // its own that reads as a diagnostic.
            let message = agentrt::cli::indented(&e.message);
            let _ = writeln!(std::io::stderr(), "error {}: {message}", e.code);
            if json_output && !agentrt::cli::printed_json() {
                // What a script asked for JSON reads: the error body the HTTP API answers.
                let body = serde_json::json!({ "error": agentrt::cli::error_body(&e) });
                let _ = writeln!(std::io::stdout(), "{body}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

/// A command line clap refuses: its message and usage on stderr and exit status 2, as clap
/// does, and for a script that asked for `--json` the API's error body (`VAL_002`) on stdout
/// too, as every other failure gives it. Help and version are printed as asked.
fn refuse_command_line(e: clap::Error) -> ! {
    use clap::error::ErrorKind;
    let shown = matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion);
    // `--json` as an option, not as a value after `--` (a task's text).
    let asked_json = std::env::args_os()
        .skip(1)
        .take_while(|arg| arg != "--")
        .any(|arg| arg == "--json");
    if !shown && asked_json {
        let rendered = e.render().to_string();
        let first = rendered.lines().next().unwrap_or_default();
        let message = match e.kind() {
            // What clap prints here is the help, not a message.
            ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => "a command is needed",
            _ => first.strip_prefix("error: ").unwrap_or(first).trim(),
        };
        let refused = agentrt::cli::CliError {
            code: agentrt::error_code::ErrorCode::InvalidInput.as_str(),
            message: format!("{message} (agentrt --help lists the commands and options)"),
        };
        let body = serde_json::json!({ "error": agentrt::cli::error_body(&refused) });
        println!("{body}");
    }
    e.exit()
}

/// Writes to a closed pipe fail with an error from now on instead of ending the process.
fn ignore_closed_pipes() {
    #[cfg(unix)]
    // SAFETY: sets the disposition of one signal; no thread of this process changes it.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// An empty `AGENTRT_*` variable (`AGENTRT_PLUGINS=` in a compose or unit file) counts as
/// unset, for every reader alike: clap would refuse an empty path for its option, and an empty
/// `AGENTRT_LOG` would switch logging off.
fn unset_empty_variables() {
    let empty: Vec<std::ffi::OsString> = std::env::vars_os()
        .filter(|(name, value)| {
            name.to_str().is_some_and(|n| n.starts_with("AGENTRT_"))
                && value.to_str().is_some_and(|v| v.trim().is_empty())
        })
        .map(|(name, _)| name)
        .collect();
    for name in empty {
        // SAFETY: nothing else runs yet; no thread reads the environment meanwhile.
        unsafe { std::env::remove_var(name) };
    }
}

/// The log filter `AGENTRT_LOG` asks for, or `default` when it is unset; one that does not
/// parse is said on stderr (logging is not up yet) rather than dropped without a word.
fn log_filter(default: &str) -> tracing_subscriber::EnvFilter {
    let Ok(asked) = std::env::var("AGENTRT_LOG") else {
        return tracing_subscriber::EnvFilter::new(default);
    };
    tracing_subscriber::EnvFilter::try_new(asked.trim()).unwrap_or_else(|e| {
        eprintln!("warning: AGENTRT_LOG={asked:?} is not a log filter ({e}); using {default:?}");
        tracing_subscriber::EnvFilter::new(default)
    })
}

/// Whether the boolean flag `id` is set on the command or any of its subcommands (`--json`
/// is global, so clap records it on the subcommand it was given with).
fn flag_anywhere(matches: &clap::ArgMatches, id: &str) -> bool {
    let mut m = matches;
    loop {
        if m.try_get_one::<bool>(id).ok().flatten().copied() == Some(true) {
            return true;
        }
        match m.subcommand() {
            Some((_, sub)) => m = sub,
            None => return false,
        }
    }
}
