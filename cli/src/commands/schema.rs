//! `blixard schema [COMMAND...]`: the JSON Schema of each command's
//! `--output json`, generated from the very types the command prints, so
//! the documentation cannot drift from the output.
//!
//! Invariant: every object in a schema lists all its properties and
//! forbids others (`additionalProperties: false`), so a renamed or added
//! field fails validation until the schema (and its consumers) follow.
//! Streaming commands (`events`, `vm watch`) print one such object per line.

use schemars::transform::RecursiveTransform;
use schemars::{generate::SchemaSettings, JsonSchema, Schema};
use serde::Serialize;

use crate::cli::OutputFormat;
use crate::commands::{acl, cluster, completions, dev, events, image, node, tls, trust, vm};
use crate::exit::{self, Exit};
use blixard_platform::{plan::Plan, Document};

/// `vm create` prints one VM, or with `--replicas` the group.
#[derive(Serialize, JsonSchema)]
#[serde(untagged)]
// Only its schema is used: `vm create` prints one of the two directly.
#[allow(dead_code)]
enum CreateOutput {
    One(Box<vm::VmView>),
    Group(vm::VmListView),
}

fn strict(schema: &mut Schema) {
    if schema.get("properties").is_some() && schema.get("additionalProperties").is_none() {
        schema.insert("additionalProperties".into(), false.into());
    }
}

fn of<T: JsonSchema>() -> Schema {
    SchemaSettings::draft2020_12()
        .with_transform(RecursiveTransform(strict))
        .into_generator()
        .into_root_schema_for::<T>()
}

/// Every command with JSON output, by its words, and its schema.
pub fn all() -> Vec<(&'static str, Schema)> {
    vec![
        ("cluster status", of::<cluster::StatusView>()),
        ("cluster join", of::<Vec<cluster::MemberView>>()),
        ("cluster remove-node", of::<Vec<cluster::MemberView>>()),
        ("cluster rotate-certs", of::<Vec<cluster::RenewedView>>()),
        ("tls trust", of::<trust::Trusted>()),
        ("tls ca fingerprint", of::<tls::Fingerprint>()),
        ("cluster join-token create", of::<cluster::JoinTokenView>()),
        (
            "cluster join-token list",
            of::<Vec<cluster::JoinTokenInfoView>>(),
        ),
        (
            "cluster join-token revoke",
            of::<cluster::JoinTokenRevokedView>(),
        ),
        ("cluster autopilot", of::<cluster::SettingsView>()),
        ("cluster failover", of::<cluster::SettingsView>()),
        ("vm create", of::<CreateOutput>()),
        ("vm list", of::<vm::VmListView>()),
        ("vm status", of::<vm::VmView>()),
        ("vm start", of::<vm::VmView>()),
        ("vm stop", of::<vm::VmView>()),
        ("vm delete", of::<vm::DeletedView>()),
        ("vm scale", of::<vm::VmListView>()),
        ("vm watch", of::<vm::VmEventView>()),
        ("node list", of::<node::NodeListView>()),
        ("node status", of::<node::NodeView>()),
        ("node eligibility", of::<node::NodeView>()),
        ("node drain", of::<node::NodeView>()),
        ("events", of::<events::EventView>()),
        ("apply", of::<Plan>()),
        ("diff", of::<Plan>()),
        ("export", of::<Document>()),
        ("image build", of::<image::GuestImage>()),
        ("tls ca create", of::<tls::Written>()),
        ("acl token create", of::<acl::CreatedTokenView>()),
        ("acl token list", of::<Vec<acl::TokenView>>()),
        ("acl token revoke", of::<acl::RevokedView>()),
        ("audit", of::<Vec<acl::AuditView>>()),
        ("acl role create", of::<acl::RoleView>()),
        ("acl role list", of::<Vec<acl::RoleView>>()),
        ("acl role delete", of::<acl::DeletedRoleView>()),
        ("tls cert create", of::<tls::Written>()),
        ("man", of::<completions::ManView>()),
        ("dev", of::<Vec<dev::DevNodeView>>()),
    ]
}

pub fn run(command: &[String], format: OutputFormat) -> anyhow::Result<()> {
    let wanted = command.join(" ");
    let value = if wanted.is_empty() {
        serde_json::Value::Object(
            all()
                .into_iter()
                .map(|(name, schema)| (name.to_string(), schema.to_value()))
                .collect(),
        )
    } else {
        all()
            .into_iter()
            .find(|(name, _)| *name == wanted)
            .map(|(_, schema)| schema.to_value())
            .ok_or_else(|| {
                let names: Vec<&str> = all().iter().map(|(name, _)| *name).collect();
                exit::error(
                    Exit::Usage,
                    format!(
                        "no JSON output for {wanted:?}; commands with one: {}",
                        names.join(", ")
                    ),
                )
            })?
    };
    match format {
        OutputFormat::Yaml => print!("{}", serde_yaml_ng::to_string(&value)?),
        OutputFormat::Json | OutputFormat::Table => {
            println!("{}", serde_json::to_string_pretty(&value)?)
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_are_strict_and_name_every_field() {
        let schemas = all();
        let (_, list) = schemas.iter().find(|(n, _)| *n == "vm list").unwrap();
        let text = serde_json::to_string(list).unwrap();
        assert!(text.contains("\"additionalProperties\":false"), "{text}");
        assert!(text.contains("\"desired_state\""), "{text}");
        // Every command in the grammar with a JSON schema exists.
        use clap::CommandFactory;
        let root = crate::cli::Cli::command();
        for (name, _) in &schemas {
            let mut command = &root;
            for word in name.split(' ') {
                command = command
                    .find_subcommand(word)
                    .unwrap_or_else(|| panic!("{name}: no such command"));
            }
        }
    }
}
