//! The `omstream` command-line tool, one concept per module.

mod access;
pub(crate) mod args;
mod checkpoints;
mod consume;
mod input;
mod key_value;
pub(crate) mod logging;
mod namespace;
pub(crate) mod output;
mod pacer;
mod produce;
mod progress;
mod queue;
pub(crate) mod report;
mod shutdown;
mod start;
mod units;

use args::{Cli, Command};

/// Runs the parsed command line.
pub(crate) async fn run(cli: Cli) -> anyhow::Result<()> {
    let access = &cli.access;
    match cli.command {
        Command::Queue(command) => queue::run(access, command).await,
        Command::Namespace(command) => namespace::run(access, command).await,
        Command::Produce(args) => produce::run(access, args).await,
        Command::Consume(args) => consume::run(access, args).await,
        Command::Checkpoints(command) => checkpoints::run(command),
    }
}
