//! `omstream namespace create|list|delete`.

use super::access::connect;
use super::args::{AccessArgs, NamespaceCommand};
use super::output::print;

/// Runs one `namespace` subcommand.
pub(crate) async fn run(access: &AccessArgs, command: NamespaceCommand) -> anyhow::Result<()> {
    let resources = connect(access).await?.resource_manager().await?;
    let text = match command {
        NamespaceCommand::Create { name } => {
            resources.create_namespace(&name).await?;
            format!("created namespace {name}\n")
        }
        NamespaceCommand::List => resources
            .list_namespaces()
            .await?
            .iter()
            .map(|n| format!("{n}\n"))
            .collect(),
        NamespaceCommand::Delete { name } => {
            resources.delete_namespace(&name).await?;
            format!("deleted namespace {name}\n")
        }
    };
    Ok(print(&text)?)
}
