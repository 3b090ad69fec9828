//! `omstream`: manage OpenMessaging queues and namespaces, and produce and consume messages, on
//! any access point (the embedded store on this machine by default).
//!
//! Exit codes: 0 on success (and when stdout's reader goes away, as with `| head`), 1 on a
//! runtime error (one `error: ...` line on stderr), 2 on a usage error (clap's message).

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Usage errors exit here with clap's code 2, before anything is set up.
    let args = cli::args::Cli::parse();
    cli::logging::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(cli::run(args));
    // Do not wait for tasks still blocked (a reader on a quiet stdin): the work is done.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if cli::output::is_closed_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", cli::report::one_line(&err));
            ExitCode::FAILURE
        }
    }
}
