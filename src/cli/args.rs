//! The command line, as clap parses it: global options, subcommands and their flags.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use super::key_value::parse_key_value;
use super::start::StartFrom;
use super::units::{parse_duration, parse_size};

/// The default access point: the embedded store's `default` region on this machine.
pub(crate) const DEFAULT_URL: &str = "oms:embedded://localhost/default";

/// `omstream`: manage OpenMessaging queues and move messages in and out of them.
#[derive(Debug, Parser)]
#[command(name = "omstream", version, about, propagate_version = true)]
pub(crate) struct Cli {
    /// Where to connect: the access point options shared by every subcommand.
    #[command(flatten)]
    pub(crate) access: AccessArgs,
    /// What to do.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The access point options; `global` so they may come before or after the subcommand.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Access point")]
pub(crate) struct AccessArgs {
    /// The access point URL, oms:<driver>://[account@]host[:port][,...]/<region>.
    #[arg(long, global = true, env = "OMSTREAM_URL", default_value = DEFAULT_URL, value_name = "URL")]
    pub(crate) url: String,
    /// The data root of the embedded store (the EMBEDDED_DIR attribute).
    #[arg(long, global = true, env = "OMSTREAM_DATA_DIR", value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// An extra access point attribute, such as EMBEDDED_FSYNC=always (repeatable; wins over --data-dir).
    #[arg(long = "attr", global = true, value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub(crate) attrs: Vec<(String, String)>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Create, list, describe and delete queues.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Create, list and delete namespaces (queues named ns://name live in namespace ns).
    #[command(subcommand)]
    Namespace(NamespaceCommand),
    /// Send messages read from stdin (or a file), one per line.
    Produce(ProduceArgs),
    /// Print the messages of a queue, one per line.
    Consume(ConsumeArgs),
    /// List a job's checkpoints, show one, or choose the one its next start restores.
    #[command(subcommand)]
    Checkpoints(CheckpointsCommand),
}

/// `omstream checkpoints ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum CheckpointsCommand {
    /// List the complete checkpoints of a job's state directory, newest first, and any damaged
    /// record files.
    List {
        /// The job's state directory (CheckpointConfig::dir).
        #[arg(long, value_name = "DIR")]
        state_dir: PathBuf,
        /// Print the records as JSON (one array) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one checkpoint: its offsets per partition, sizes and timings.
    Show {
        /// The job's state directory.
        #[arg(long, value_name = "DIR")]
        state_dir: PathBuf,
        /// The checkpoint's epoch.
        epoch: u64,
    },
    /// Make the job's next start restore this checkpoint instead of the latest one.
    Use {
        /// The job's state directory.
        #[arg(long, value_name = "DIR")]
        state_dir: PathBuf,
        /// The checkpoint's epoch.
        epoch: u64,
    },
}

/// `omstream queue ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum QueueCommand {
    /// Create a queue.
    Create(QueueCreateArgs),
    /// List the queues, one full name per line.
    List {
        /// Only the queues of this namespace.
        #[arg(long, value_name = "NS")]
        namespace: Option<String>,
    },
    /// Show a queue's partitions, offsets, sizes and retention.
    Describe {
        /// The queue (name, or ns://name).
        name: String,
        /// Print the description as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Delete a queue and every message and committed offset it has.
    Delete {
        /// The queue (name, or ns://name).
        name: String,
    },
}

/// `omstream queue create`.
#[derive(Debug, Args)]
pub(crate) struct QueueCreateArgs {
    /// The queue (name, or ns://name).
    pub(crate) name: String,
    /// The number of partitions.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub(crate) partitions: u32,
    /// Drop messages older than this: a whole number and a unit, such as 90s, 30m, 12h or 7d.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub(crate) retention_age: Option<Duration>,
    /// Keep about this many bytes per partition, such as 500MB, 1GiB or 1048576.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub(crate) retention_bytes: Option<u64>,
    /// Succeed without changes when the queue exists already.
    #[arg(long)]
    pub(crate) if_not_exists: bool,
}

/// `omstream namespace ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum NamespaceCommand {
    /// Create a namespace.
    Create {
        /// The namespace.
        name: String,
    },
    /// List the namespaces, one per line.
    List,
    /// Delete a namespace and every queue in it.
    Delete {
        /// The namespace.
        name: String,
    },
}

/// How `produce` reads its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum InputFormat {
    /// Each line's bytes are one message body.
    Lines,
    /// Each line is one message in the OMS JSON shape (as `consume --format json` prints); its
    /// destination is always the queue given to `produce`.
    Json,
}

/// `omstream produce`.
#[derive(Debug, Args)]
pub(crate) struct ProduceArgs {
    /// The queue to send to.
    pub(crate) queue: String,
    /// Read this file instead of stdin.
    #[arg(long, value_name = "PATH")]
    pub(crate) file: Option<PathBuf>,
    /// How each input line becomes a message.
    #[arg(long, value_enum, default_value_t = InputFormat::Lines)]
    pub(crate) format: InputFormat,
    /// The message key of every message (messages with one key go to one partition, in order).
    #[arg(long, value_name = "K")]
    pub(crate) key: Option<String>,
    /// A user property of every message (repeatable).
    #[arg(long = "property", value_name = "K=V", value_parser = parse_key_value)]
    pub(crate) properties: Vec<(String, String)>,
    /// Send every message to this partition instead of the key's.
    #[arg(long, value_name = "P")]
    pub(crate) partition: Option<i32>,
    /// Send at most this many messages per second.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) rate: Option<u64>,
    /// Send at most this many messages per call.
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub(crate) batch: u64,
}

/// How `consume` prints messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum OutputFormat {
    /// One message per line in the OMS JSON shape, headers and properties included.
    Json,
    /// The body bytes of each message, then a newline.
    Raw,
}

/// `omstream consume`.
#[derive(Debug, Args)]
pub(crate) struct ConsumeArgs {
    /// The queue to read.
    pub(crate) queue: String,
    /// Where to start: beginning, end, offset:N, time:RFC3339 or committed
    /// [default: committed with --group, else beginning].
    #[arg(long, value_name = "POSITION")]
    pub(crate) from: Option<StartFrom>,
    /// Read only this partition.
    #[arg(long, value_name = "P")]
    pub(crate) partition: Option<i32>,
    /// The consumer group whose committed offsets are read and advanced.
    #[arg(long, value_name = "G")]
    pub(crate) group: Option<String>,
    /// Keep waiting for new messages instead of stopping at the end.
    #[arg(long)]
    pub(crate) follow: bool,
    /// How to print each message.
    #[arg(long, value_enum, default_value_t = OutputFormat::Json)]
    pub(crate) format: OutputFormat,
    /// Stop after this many messages.
    #[arg(long, value_name = "N")]
    pub(crate) limit: Option<u64>,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_options_go_before_or_after_the_subcommand() {
        let before =
            Cli::try_parse_from(["omstream", "--data-dir", "/d", "queue", "list"]).unwrap();
        let after = Cli::try_parse_from(["omstream", "queue", "list", "--data-dir", "/d"]).unwrap();
        assert_eq!(before.access.data_dir, after.access.data_dir);
        let attrs = Cli::try_parse_from([
            "omstream", "queue", "list", "--attr", "A=1", "--attr", "B=x=y",
        ])
        .unwrap();
        assert_eq!(
            attrs.access.attrs,
            vec![("A".into(), "1".into()), ("B".into(), "x=y".into())]
        );
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for argv in [
            &["omstream", "--attr", "nope", "queue", "list"][..],
            &["omstream", "consume", "q", "--from", "sideways"],
            &["omstream", "queue", "create", "q", "--retention-age", "7"],
            &["omstream", "produce", "q", "--batch", "0"],
        ] {
            assert!(Cli::try_parse_from(argv).is_err(), "{argv:?}");
        }
    }
}
