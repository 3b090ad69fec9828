//! `omstream queue create|list|describe|delete`.

use omstream::oms::{OmsStatus, QueueConfig, QueueDescription, RetentionPolicy};

use super::access::connect;
use super::args::{AccessArgs, QueueCommand, QueueCreateArgs};
use super::output::{print, table};
use super::units::{format_bytes, format_duration};

/// Runs one `queue` subcommand.
pub(crate) async fn run(access: &AccessArgs, command: QueueCommand) -> anyhow::Result<()> {
    let resources = connect(access).await?.resource_manager().await?;
    match command {
        QueueCommand::Create(args) => create(resources.as_ref(), args).await,
        QueueCommand::List { namespace } => {
            let names = resources.list_queues(namespace.as_deref()).await?;
            Ok(print(
                &names.iter().map(|n| format!("{n}\n")).collect::<String>(),
            )?)
        }
        QueueCommand::Describe { name, json } => {
            let description = resources.describe_queue(&name).await?;
            let text = if json {
                format!("{}\n", serde_json::to_string_pretty(&description)?)
            } else {
                describe_table(&description)
            };
            Ok(print(&text)?)
        }
        QueueCommand::Delete { name } => {
            resources.delete_queue(&name).await?;
            Ok(print(&format!("deleted queue {name}\n"))?)
        }
    }
}

async fn create(
    resources: &dyn omstream::oms::ResourceManager,
    args: QueueCreateArgs,
) -> anyhow::Result<()> {
    let config = QueueConfig {
        partitions: args.partitions,
        retention: RetentionPolicy {
            max_age: args.retention_age,
            max_bytes: args.retention_bytes,
        },
    };
    match resources.create_queue(&args.name, config).await {
        Ok(()) => Ok(print(&format!(
            "created queue {} with {}\n",
            args.name,
            partitions_phrase(args.partitions as usize)
        ))?),
        Err(err) if args.if_not_exists && err.status() == OmsStatus::DESTINATION_ALREADY_EXISTS => {
            // Say what exists, so that a script that asked for other settings can notice.
            let existing = resources.describe_queue(&args.name).await?;
            Ok(print(&format!(
                "queue {} exists already with {}\n",
                args.name,
                partitions_phrase(existing.partitions.len())
            ))?)
        }
        Err(err) => Err(err.into()),
    }
}

/// The retention policy in words.
fn retention_text(retention: &RetentionPolicy) -> String {
    let mut parts = Vec::new();
    if let Some(age) = retention.max_age {
        parts.push(format!("messages older than {}", format_duration(age)));
    }
    if let Some(bytes) = retention.max_bytes {
        parts.push(format!("beyond {} per partition", format_bytes(bytes)));
    }
    if parts.is_empty() {
        "keep everything".to_string()
    } else {
        format!("drop {}", parts.join(", and "))
    }
}

/// The human description: a summary, then one row per partition.
fn describe_table(d: &QueueDescription) -> String {
    let total_bytes: u64 = d.partitions.iter().map(|p| p.bytes).sum();
    let mut out = format!(
        "queue:      {}\npartitions: {}\nretention:  {}\nmessages:   {}\nbytes:      {} ({})\n\n",
        d.name,
        d.partitions.len(),
        retention_text(&d.config.retention),
        d.message_count(),
        total_bytes,
        format_bytes(total_bytes),
    );
    let rows: Vec<Vec<String>> = d
        .partitions
        .iter()
        .map(|p| {
            vec![
                p.partition.to_string(),
                p.start_offset.to_string(),
                p.end_offset.to_string(),
                (p.end_offset - p.start_offset).to_string(),
                p.bytes.to_string(),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "PARTITION",
            "START OFFSET",
            "END OFFSET",
            "MESSAGES",
            "BYTES",
        ],
        &rows,
    ));
    out
}

/// "1 partition", "4 partitions".
fn partitions_phrase(n: usize) -> String {
    if n == 1 {
        "1 partition".to_string()
    } else {
        format!("{n} partitions")
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use omstream::oms::PartitionDescription;

    use super::*;

    #[test]
    fn the_table_has_a_row_per_partition_and_the_retention() {
        let d = QueueDescription {
            name: "orders".into(),
            config: QueueConfig {
                partitions: 2,
                retention: RetentionPolicy {
                    max_age: Some(Duration::from_secs(7 * 86400 / 7)),
                    max_bytes: Some(1 << 30),
                },
            },
            partitions: vec![
                PartitionDescription {
                    partition: 0,
                    start_offset: 0,
                    end_offset: 3,
                    bytes: 300,
                },
                PartitionDescription {
                    partition: 1,
                    start_offset: 5,
                    end_offset: 7,
                    bytes: 200,
                },
            ],
        };
        let text = describe_table(&d);
        assert!(text.contains("messages:   5\n"), "{text}");
        assert!(
            text.contains("drop messages older than 1d, and beyond 1.0 GiB per partition"),
            "{text}"
        );
        assert!(
            text.contains("1                     5           7         2    200"),
            "{text}"
        );
        assert_eq!(
            retention_text(&RetentionPolicy::default()),
            "keep everything"
        );
    }
}
