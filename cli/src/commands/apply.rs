//! `blixard apply -f`, `blixard diff -f` and `blixard export`: the
//! platform document against the cluster (the pure parts are in
//! `platform/`).

use std::collections::BTreeSet;
use std::io::{IsTerminal, Read, Write};

use blixard_api::pb;

use crate::cli::{ApplyArgs, DiffArgs, ExportArgs, OutputFormat};
use crate::client::{self, status_error, Conn};
use crate::commands::wait::{self, Goal};
use crate::exit::{self, Exit};
use crate::output;
use blixard_platform::plan::{check_nodes, plan, Change, Conflict, Plan};
use blixard_platform::{self as platform, Document};

type Vms = pb::vm_client::VmClient<Conn>;

/// The document's text: given inline (REPL here-document), standard input
/// for `-`, else the file.
fn read_document(
    file: &std::path::Path,
    inline: Option<String>,
) -> anyhow::Result<(String, String)> {
    let name = file.display().to_string();
    if let Some(text) = inline {
        return Ok((text, "the here-document".into()));
    }
    // Standard input may wait on a person or a pipe: off the async workers.
    let text = tokio::task::block_in_place(|| {
        if name == "-" {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text).map(|_| text)
        } else {
            std::fs::read_to_string(file)
        }
    })
    .map_err(|e| exit::error(Exit::Usage, format!("{name}: {e}")))?;
    Ok((text, name))
}

fn parse(file: &std::path::Path, inline: Option<String>) -> anyhow::Result<Document> {
    let (text, name) = read_document(file, inline)?;
    platform::parse(&text, &name).map_err(|e| exit::error(Exit::Usage, e.to_string()))
}

async fn current(vms: &mut Vms) -> anyhow::Result<Vec<pb::VmInfo>> {
    Ok(client::list_vms(vms, "").await?.vms)
}

/// The plan, once the document's pinned nodes are known to be members.
async fn make_plan(addr: &str, document: &Document, vms: &mut Vms) -> anyhow::Result<Plan> {
    let members: BTreeSet<u64> = client::list_nodes(&client::node(addr).await?)
        .await?
        .nodes
        .iter()
        .filter(|node| node.member)
        .map(|node| node.node_id)
        .collect();
    let conflict = |c: Conflict| exit::error(Exit::Failed, c.to_string());
    check_nodes(document, &members).map_err(conflict)?;
    plan(document, &current(vms).await?).map_err(conflict)
}

fn plan_table(plan: &Plan) -> comfy_table::Table {
    let mut table = output::table(&["", "ACTION", "WHAT"]);
    for change in &plan.changes {
        let (sign, action, what) = change.summary();
        table.add_row(vec![sign.to_string(), action.to_string(), what]);
    }
    table
}

fn print_plan(format: OutputFormat, plan: &Plan) -> anyhow::Result<()> {
    if format != OutputFormat::Table {
        return output::print(format, plan, plan_table);
    }
    if plan.changes.is_empty() {
        println!(
            "platform {}: no changes; {} entr{} as the document says.",
            plan.platform,
            plan.unchanged,
            if plan.unchanged == 1 { "y" } else { "ies" }
        );
        return Ok(());
    }
    println!("{}", plan_table(plan));
    let count = |f: fn(&Change) -> bool| plan.changes.iter().filter(|c| f(c)).count();
    println!(
        "Plan for platform {}: {} to create, {} to scale, {} to replace, {} to start or stop, {} to delete; {} unchanged.",
        plan.platform,
        count(|c| matches!(c, Change::Create { .. })),
        count(|c| matches!(c, Change::Scale { .. })),
        count(|c| matches!(c, Change::Replace { .. })),
        count(|c| matches!(c, Change::Start { .. } | Change::Stop { .. })),
        count(|c| matches!(c, Change::Delete { .. })),
        plan.unchanged
    );
    Ok(())
}

/// Prints the plan; exits 0 when there is nothing to change and 1 when
/// there is (as `diff`, `kubectl diff` and `nomad job plan` do), 2 for a
/// document that does not fit the cluster.
pub async fn diff(args: DiffArgs, addr: &str, format: OutputFormat) -> anyhow::Result<()> {
    let document = parse(&args.file, args.document)?;
    let mut vms = client::vm(addr).await?;
    let plan = make_plan(addr, &document, &mut vms)
        .await
        .map_err(|error| match exit::classify(&error) {
            // A conflict: trouble, not a difference.
            Exit::Failed => exit::error(Exit::Usage, format!("{error:#}")),
            _ => error,
        })?;
    print_plan(format, &plan)?;
    match plan.changes.is_empty() {
        true => Ok(()),
        false => Err(exit::Quiet(Exit::Failed).into()),
    }
}

pub async fn export(args: ExportArgs, addr: &str, format: OutputFormat) -> anyhow::Result<()> {
    if let Some(name) = &args.name {
        blixard_api::validate::platform_name(name)?;
    }
    let mut vms = client::vm(addr).await?;
    let document = platform::from_vms(&current(&mut vms).await?, args.name.as_deref());
    match format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&document)?),
        // The document is YAML; a table would not apply.
        OutputFormat::Yaml | OutputFormat::Table => {
            print!("{}", serde_yaml_ng::to_string(&document)?)
        }
    }
    Ok(())
}

/// Asks on the terminal; piped runs do not ask.
fn confirmed(yes: bool) -> anyhow::Result<bool> {
    if yes || !std::io::stdin().is_terminal() {
        return Ok(true);
    }
    eprint!("Apply these changes? [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    // The answer waits on a person: off the async workers.
    tokio::task::block_in_place(|| std::io::stdin().read_line(&mut answer))?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

async fn create(
    vms: &mut Vms,
    spec: &pb::VmSpec,
    replicas: Option<u32>,
    start: bool,
) -> anyhow::Result<()> {
    vms.create(pb::CreateVmRequest {
        spec: Some(spec.clone()),
        replicas: replicas.unwrap_or(0),
        stopped: !start,
    })
    .await
    .map_err(status_error)?;
    // One VM is created stopped; a group as asked.
    if replicas.is_none() && start {
        vms.start(pb::VmNameRequest {
            name: spec.name.clone(),
        })
        .await
        .map_err(status_error)?;
    }
    Ok(())
}

async fn carry_out(vms: &mut Vms, change: &Change) -> anyhow::Result<()> {
    let name = |vm: &str| pb::VmNameRequest { name: vm.into() };
    match change {
        Change::Create {
            replicas,
            start,
            spec,
            ..
        } => create(vms, spec, *replicas, *start).await,
        Change::Replace {
            replicas,
            start,
            spec,
            vms: old,
            ..
        } => {
            for vm in old {
                vms.delete(name(vm)).await.map_err(status_error)?;
            }
            create(vms, spec, *replicas, *start).await
        }
        Change::Scale {
            name: group,
            to,
            start,
            ..
        } => {
            vms.scale(pb::ScaleVmRequest {
                name: group.clone(),
                replicas: *to,
                stopped: !start,
            })
            .await
            .map_err(status_error)?;
            Ok(())
        }
        Change::Start { vms: names, .. } => {
            for vm in names {
                vms.start(name(vm)).await.map_err(status_error)?;
            }
            Ok(())
        }
        Change::Stop { vms: names, .. } => {
            for vm in names {
                vms.stop(name(vm)).await.map_err(status_error)?;
            }
            Ok(())
        }
        Change::Delete { vms: names, .. } => {
            for vm in names {
                vms.delete(name(vm)).await.map_err(status_error)?;
            }
            Ok(())
        }
    }
}

/// What `--wait` waits for: every VM of the document in its state, every
/// deleted VM gone.
fn goals(document: &Document, plan: &Plan) -> Vec<(String, Goal)> {
    let mut goals: Vec<(String, Goal)> = document
        .spec
        .vms
        .iter()
        .flat_map(|entry| {
            let goal = match entry.state {
                platform::RunState::Running => Goal::Running,
                platform::RunState::Stopped => Goal::Stopped,
            };
            platform::member_names(entry)
                .into_iter()
                .map(move |name| (name, goal))
        })
        .collect();
    let kept: std::collections::BTreeSet<String> = goals.iter().map(|(n, _)| n.clone()).collect();
    for change in &plan.changes {
        if let Change::Delete { vms, .. } | Change::Replace { vms, .. } = change {
            goals.extend(
                vms.iter()
                    .filter(|vm| !kept.contains(*vm))
                    .map(|vm| (vm.clone(), Goal::Gone)),
            );
        }
    }
    goals
}

pub async fn apply(args: ApplyArgs, addr: &str, format: OutputFormat) -> anyhow::Result<()> {
    let document = parse(&args.file, args.document)?;
    let mut vms = client::vm(addr).await?;
    let plan = make_plan(addr, &document, &mut vms).await?;
    print_plan(format, &plan)?;
    if plan.changes.is_empty() {
        return Ok(());
    }
    if !confirmed(args.yes)? {
        return Err(exit::error(Exit::Failed, "not applied"));
    }
    let progress = output::bar(plan.changes.len() as u64, "applying");
    for change in &plan.changes {
        let (_, action, what) = change.summary();
        progress.set_message(format!("{action} {what}"));
        carry_out(&mut vms, change)
            .await
            .map_err(|e| e.context(format!("{action} {what}")))?;
        progress.inc(1);
    }
    progress.finish_and_clear();
    if args.wait.wait {
        wait::vms(addr, goals(&document, &plan), args.wait.timeout).await?;
    }
    if format == OutputFormat::Table {
        println!(
            "Applied {} change(s) to platform {}.",
            plan.changes.len(),
            plan.platform
        );
    }
    Ok(())
}
