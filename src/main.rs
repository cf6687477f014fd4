//! The `meterbook` binary: parse, set up logging, run, map the result to an exit code.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use meterbook::cli::{Cli, LogLevel};
use meterbook::error::{exit, exit_code_for};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // Before anything reads the environment, and while this is the only thread.
    let unset = meterbook::env::unset_empty();
    let cli = Cli::parse();
    init_logging(cli.global.verbose, cli.global.quiet, cli.global.log_level);
    if !unset.is_empty() {
        tracing::info!("empty variables treated as unset: {}", unset.join(", "));
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("meterbook: starting the async runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let ledger = cli.global.ledger_file();
    match runtime.block_on(meterbook::commands::dispatch(cli)) {
        Ok(outcome) => ExitCode::from(outcome.exit_code()),
        Err(err) if is_broken_pipe(&err) => ExitCode::from(exit::SUCCESS),
        Err(err) => {
            eprintln!("meterbook: {err:#}");
            if meterbook::ledger::is_busy(&err) {
                eprintln!(
                    "meterbook: another process kept ledger {} busy for longer than the busy \
                     timeout ({}s); try again when it is done, or wait longer with --busy-timeout",
                    ledger.path.display(),
                    ledger.busy_timeout.as_secs_f64()
                );
            }
            ExitCode::from(exit_code_for(&err))
        }
    }
}

/// METERBOOK_LOG (a filter) wins, then -q/-v, then LOG_LEVEL, then info.
fn init_logging(verbose: u8, quiet: bool, level: Option<LogLevel>) {
    let default = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => level.map_or("info", LogLevel::filter),
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let wanted = std::env::var("METERBOOK_LOG").unwrap_or_else(|_| default.to_string());
    // Libraries stay quiet unless asked for by name.
    let filter = EnvFilter::try_new(format!(
        "refinery_core=warn,aws_config=warn,aws_smithy_runtime=warn,hyper=warn,{wanted}"
    ))
    .unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
