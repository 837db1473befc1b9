//! `blixard vm create | list | status | start | stop | delete`.

use blixard_api::resume::Position;
use blixard_api::{pb, validate};
use serde::Serialize;

use crate::cli::{OutputFormat, VmCommand, VmCreateArgs};
use crate::client::{self, status_error};
use crate::commands::wait::{self, Goal};
use crate::output;

#[derive(Serialize, schemars::JsonSchema)]
pub struct VmView {
    pub name: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub desired_state: &'static str,
    pub phase: &'static str,
    pub node: Option<u64>,
    pub pinned_node: Option<u64>,
    pub pid: Option<u32>,
    pub boot_ms: Option<u64>,
    pub restarts: u32,
    pub exit_status: Option<String>,
    pub reason: String,
    pub runner: String,
    /// Replica group, if the VM is NAME-i of `vm create --replicas`.
    pub group: Option<String>,
    pub constraints: Vec<String>,
    pub preferences: Vec<String>,
    pub anti_affinity_group: Option<String>,
    pub affinity_group: Option<String>,
    pub strategy: String,
    /// Being stopped on its node to move elsewhere (drain).
    pub evicting: bool,
    pub create_revision: u64,
    pub mod_revision: u64,
    pub created_at_unix_ms: u64,
    /// Live figures from the VM's node (`vm status` only, when running).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats: Option<StatsView>,
}

#[derive(Serialize, schemars::JsonSchema)]
pub struct StatsView {
    pub cpu_ms: u64,
    pub rss_bytes: u64,
    pub uptime_ms: u64,
}

fn nonzero<T: Default + PartialEq>(value: T) -> Option<T> {
    (value != T::default()).then_some(value)
}

#[derive(Serialize, schemars::JsonSchema)]
pub struct VmListView {
    pub revision: u64,
    pub vms: Vec<VmView>,
}

#[derive(Serialize, schemars::JsonSchema)]
pub struct DeletedView {
    pub name: String,
    pub deleted: bool,
    pub revision: u64,
}

fn view(vm: &pb::VmInfo) -> VmView {
    let spec = vm.spec.clone().unwrap_or_default();
    let runner = match spec.runner.and_then(|r| r.source) {
        Some(pb::runner_source::Source::Kernel(k)) => {
            format!("kernel {} initrd {}", k.kernel_path, k.initrd_path)
        }
        Some(pb::runner_source::Source::Flake(f)) => format!("flake {}", f.flake_ref),
        None => "none".into(),
    };
    let observed = vm.observed.clone().unwrap_or_default();
    VmView {
        name: spec.name,
        vcpus: spec.vcpus,
        memory_mib: spec.memory_mib,
        phase: blixard_api::phase_name(vm),
        node: nonzero(vm.assigned_node).or(nonzero(observed.node)),
        pinned_node: nonzero(spec.pinned_node),
        pid: nonzero(observed.pid),
        boot_ms: nonzero(observed.boot_ms),
        restarts: observed.restarts,
        exit_status: nonzero(observed.exit_status),
        reason: observed.reason,
        stats: None,
        desired_state: match vm.desired_state() {
            pb::DesiredState::Running => "running",
            pb::DesiredState::Stopped => "stopped",
            pb::DesiredState::Unspecified => "unknown",
        },
        runner,
        group: nonzero(spec.group),
        constraints: spec.constraints,
        preferences: spec.preferences,
        anti_affinity_group: nonzero(spec.anti_affinity_group),
        affinity_group: nonzero(spec.affinity_group),
        strategy: spec.strategy,
        evicting: vm.evicting,
        create_revision: vm.create_revision,
        mod_revision: vm.mod_revision,
        created_at_unix_ms: vm.created_at_unix_ms,
    }
}

fn vms_table(vms: &[VmView]) -> comfy_table::Table {
    let mut table = output::table(&[
        "NAME",
        "VCPUS",
        "MEMORY MiB",
        "DESIRED",
        "PHASE",
        "NODE",
        "RESTARTS",
        "REVISION",
    ]);
    for vm in vms {
        table.add_row(vec![
            vm.name.clone(),
            vm.vcpus.to_string(),
            vm.memory_mib.to_string(),
            vm.desired_state.to_string(),
            vm.phase.to_string(),
            vm.node.map_or("-".into(), |n| n.to_string()),
            vm.restarts.to_string(),
            vm.mod_revision.to_string(),
        ]);
    }
    table
}

/// One VM in detail: a field per row.
fn vm_detail_table(vm: &VmView) -> comfy_table::Table {
    let mut table = output::table(&["FIELD", "VALUE"]);
    let optional = |value: Option<String>| value.unwrap_or_else(|| "-".into());
    let mut rows = vec![
        ("name", vm.name.clone()),
        ("desired", vm.desired_state.to_string()),
        ("phase", vm.phase.to_string()),
        ("node", optional(vm.node.map(|n| n.to_string()))),
        ("pinned to", optional(vm.pinned_node.map(|n| n.to_string()))),
        ("pid", optional(vm.pid.map(|p| p.to_string()))),
        ("boot ms", optional(vm.boot_ms.map(|b| b.to_string()))),
        ("restarts", vm.restarts.to_string()),
        ("exit status", optional(vm.exit_status.clone())),
        ("reason", vm.reason.clone()),
        ("vcpus", vm.vcpus.to_string()),
        ("memory MiB", vm.memory_mib.to_string()),
        ("runner", vm.runner.clone()),
        ("group", optional(vm.group.clone())),
        ("constraints", vm.constraints.join(",")),
        ("preferences", vm.preferences.join(",")),
        (
            "anti-affinity group",
            optional(vm.anti_affinity_group.clone()),
        ),
        ("affinity group", optional(vm.affinity_group.clone())),
        ("strategy", vm.strategy.clone()),
        ("revision", vm.mod_revision.to_string()),
    ];
    if let Some(stats) = &vm.stats {
        rows.push(("cpu ms", stats.cpu_ms.to_string()));
        rows.push(("rss MiB", (stats.rss_bytes / (1024 * 1024)).to_string()));
        rows.push(("uptime s", (stats.uptime_ms / 1000).to_string()));
    }
    for (field, value) in rows {
        table.add_row(vec![field.to_string(), value]);
    }
    table
}

/// Splits repeated comma-separated rule lists into single rules.
fn rules(lists: &[String]) -> Vec<String> {
    lists
        .iter()
        .flat_map(|list| list.split(','))
        .map(str::trim)
        .filter(|rule| !rule.is_empty())
        .map(str::to_string)
        .collect()
}

fn spec(args: VmCreateArgs) -> pb::VmSpec {
    let source = match (args.kernel, args.initrd, args.flake) {
        (Some(kernel_path), Some(initrd_path), _) => {
            pb::runner_source::Source::Kernel(pb::KernelRunner {
                kernel_path,
                initrd_path,
                cmdline: args.cmdline.unwrap_or_default(),
                ports: args
                    .ports
                    .iter()
                    .map(|(host, guest)| pb::PortForward {
                        host_port: (*host).into(),
                        guest_port: (*guest).into(),
                    })
                    .collect(),
            })
        }
        (_, _, Some(flake_ref)) => pb::runner_source::Source::Flake(pb::FlakeRunner { flake_ref }),
        _ => unreachable!("clap requires --kernel with --initrd, or --flake"),
    };
    pb::VmSpec {
        name: args.name,
        vcpus: args.vcpus,
        memory_mib: args.memory_mib,
        pinned_node: args.node.unwrap_or(0),
        runner: Some(pb::RunnerSource {
            source: Some(source),
        }),
        constraints: rules(&args.constraints),
        preferences: rules(&args.preferences),
        anti_affinity_group: args.anti_affinity_group.unwrap_or_default(),
        affinity_group: args.affinity_group.unwrap_or_default(),
        strategy: args.strategy.unwrap_or_default(),
        lost_after_ms: args.lost_after.unwrap_or(0),
        replace_lost: args.replace_lost,
        group: String::new(),
        platform: String::new(),
    }
}

/// Prints a list of VMs.
fn print_list(format: OutputFormat, list: &pb::ListVmsResponse) -> anyhow::Result<()> {
    let list = VmListView {
        revision: list.revision,
        vms: list.vms.iter().map(view).collect(),
    };
    output::print(format, &list, |l| vms_table(&l.vms))
}

fn print_one(format: OutputFormat, response: pb::VmResponse) -> anyhow::Result<()> {
    let vm = response
        .vm
        .as_ref()
        .map(view)
        .ok_or_else(|| anyhow::anyhow!("the server returned no VM"))?;
    output::print(format, &vm, |v| vms_table(std::slice::from_ref(v)))
}

pub async fn run(command: VmCommand, addr: &str, format: OutputFormat) -> anyhow::Result<()> {
    let is_start = matches!(command, VmCommand::Start { .. });
    match command {
        VmCommand::Create(args) => {
            let replicas = args.replicas.unwrap_or(0);
            let wait = args.wait;
            let spec = spec(*args);
            // Refuse bad input before touching the network.
            validate::vm_spec(&spec)?;
            if replicas > 0 {
                validate::replicas(&spec.name, replicas)?;
            }
            let group = spec.name.clone();
            let mut client = client::vm(addr).await?;
            let response = client
                .create(pb::CreateVmRequest {
                    spec: Some(spec),
                    replicas,
                    stopped: false,
                })
                .await
                .map_err(status_error)?;
            // One VM is created stopped: there is nothing to wait for.
            if replicas == 0 {
                return print_one(format, response.into_inner());
            }
            if wait.wait {
                let goals = (1..=replicas)
                    .map(|i| (format!("{group}-{i}"), Goal::Running))
                    .collect();
                wait::vms(addr, goals, wait.timeout).await?;
            }
            print_list(format, &client::list_vms(&client, &group).await?)
        }
        VmCommand::Scale {
            name,
            replicas,
            wait,
        } => {
            validate::vm_name(&name)?;
            let mut client = client::vm(addr).await?;
            let response = client
                .scale(pb::ScaleVmRequest {
                    name: name.clone(),
                    replicas,
                    stopped: false,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            let mut members = match response.next_page_token.is_empty() {
                // The scale's answer holds the whole group as it made it.
                true => pb::ListVmsResponse {
                    vms: response.vms,
                    revision: response.revision,
                    next_page_token: String::new(),
                },
                false => client::list_vms(&client, &name).await?,
            };
            if wait.wait {
                // Members stopped on purpose are waited on to be stopped.
                let goals = members
                    .vms
                    .iter()
                    .filter_map(|vm| {
                        let goal = match vm.desired_state() {
                            pb::DesiredState::Stopped => Goal::Stopped,
                            _ => Goal::Running,
                        };
                        vm.spec.as_ref().map(|spec| (spec.name.clone(), goal))
                    })
                    .collect();
                wait::vms(addr, goals, wait.timeout).await?;
                members = client::list_vms(&client, &name).await?;
            }
            print_list(format, &members)
        }
        VmCommand::List { group } => {
            let group = group.unwrap_or_default();
            if !group.is_empty() {
                validate::vm_name(&group)?;
            }
            print_list(
                format,
                &client::list_vms(&client::vm(addr).await?, &group).await?,
            )
        }
        VmCommand::Status { name } => {
            validate::vm_name(&name)?;
            let mut client = client::vm(addr).await?;
            let response = client
                .get(pb::VmNameRequest { name: name.clone() })
                .await
                .map_err(status_error)?
                .into_inner();
            let mut vm = response
                .vm
                .as_ref()
                .map(view)
                .ok_or_else(|| anyhow::anyhow!("the server returned no VM"))?;
            if vm.phase == "running" {
                // Live figures are best effort: the VM may stop meanwhile.
                if let Ok(stats) = client.stats(pb::VmNameRequest { name }).await {
                    let stats = stats.into_inner();
                    vm.stats = Some(StatsView {
                        cpu_ms: stats.cpu_ms,
                        rss_bytes: stats.rss_bytes,
                        uptime_ms: stats.uptime_ms,
                    });
                }
            }
            output::print(format, &vm, vm_detail_table)
        }
        VmCommand::Logs { name, follow, tail } => logs(addr, name, follow, tail).await,
        VmCommand::Start { name, wait } | VmCommand::Stop { name, wait } => {
            validate::vm_name(&name)?;
            let mut client = client::vm(addr).await?;
            let request = pb::VmNameRequest { name: name.clone() };
            let (response, goal) = if is_start {
                (client.start(request).await, Goal::Running)
            } else {
                (client.stop(request).await, Goal::Stopped)
            };
            let mut response = response.map_err(status_error)?.into_inner();
            if wait.wait {
                wait::vms(addr, vec![(name.clone(), goal)], wait.timeout).await?;
                response = client
                    .get(pb::VmNameRequest { name })
                    .await
                    .map_err(status_error)?
                    .into_inner();
            }
            print_one(format, response)
        }
        VmCommand::Watch { max_events } => watch(addr, format, max_events).await,
        VmCommand::Delete { name, wait } => {
            validate::vm_name(&name)?;
            let response = client::vm(addr)
                .await?
                .delete(pb::VmNameRequest { name: name.clone() })
                .await
                .map_err(status_error)?
                .into_inner();
            if wait.wait {
                wait::vms(addr, vec![(name.clone(), Goal::Gone)], wait.timeout).await?;
            }
            let deleted = DeletedView {
                name,
                deleted: true,
                revision: response.revision,
            };
            output::print(format, &deleted, |d| {
                let mut table = output::table(&["NAME", "DELETED AT REVISION"]);
                table.add_row(vec![d.name.clone(), d.revision.to_string()]);
                table
            })
        }
    }
}

#[derive(Serialize, schemars::JsonSchema)]
pub struct VmEventView {
    /// added, modified, deleted, or synced: every change through
    /// `revision` has been printed (the initial list is complete).
    event: &'static str,
    revision: u64,
    /// Absent for `synced`.
    #[serde(skip_serializing_if = "Option::is_none")]
    vm: Option<VmView>,
}

/// Streams events; JSON prints one object per line, YAML one document each.
/// A stream the node ends for falling behind (`DATA_LOSS`) is resumed
/// from the last change printed, so nothing is printed twice or missed.
async fn watch(addr: &str, format: OutputFormat, max_events: Option<u64>) -> anyhow::Result<()> {
    use std::io::Write;
    let mut client = client::vm(addr).await?;
    let mut stream = client
        .watch(pb::WatchVmsRequest::default())
        .await
        .map_err(status_error)?
        .into_inner();
    let mut position = Position::default();
    let mut seen = 0u64;
    while max_events.is_none_or(|max| seen < max) {
        let event = match stream.message().await {
            Ok(Some(event)) => event,
            Ok(None) => anyhow::bail!("the server ended the watch"),
            Err(status) if status.code() == tonic::Code::DataLoss => {
                let Some(resume) = position.resume() else {
                    return Err(status_error(status));
                };
                eprintln!(
                    "{}; resuming after revision {}",
                    status.message(),
                    resume.after_revision.unwrap_or_default()
                );
                stream = client
                    .watch(resume)
                    .await
                    .map_err(status_error)?
                    .into_inner();
                continue;
            }
            Err(status) => return Err(status_error(status)),
        };
        if !position.take(&event) {
            continue;
        }
        // SYNCED is printed but is not one of the events counted.
        if event.kind() != pb::VmEventKind::Synced {
            seen += 1;
        }
        let view = VmEventView {
            event: match event.kind() {
                pb::VmEventKind::Added => "added",
                pb::VmEventKind::Modified => "modified",
                pb::VmEventKind::Deleted => "deleted",
                pb::VmEventKind::Synced => "synced",
                pb::VmEventKind::Unspecified => "unknown",
            },
            revision: event.revision,
            vm: event.vm.as_ref().map(view),
        };
        let mut stdout = std::io::stdout().lock();
        match (format, &view.vm) {
            (OutputFormat::Table, Some(vm)) => writeln!(
                stdout,
                "{:<9} {:<24} desired={:<8} revision={}",
                view.event, vm.name, vm.desired_state, view.revision
            )?,
            (OutputFormat::Table, None) => writeln!(
                stdout,
                "{:<9} {:<24} revision={}",
                view.event, "", view.revision
            )?,
            (OutputFormat::Json, _) => writeln!(stdout, "{}", serde_json::to_string(&view)?)?,
            (OutputFormat::Yaml, _) => write!(stdout, "---\n{}", serde_yaml_ng::to_string(&view)?)?,
        }
        // Watchers are often piped into other programs: deliver each event now.
        stdout.flush()?;
    }
    Ok(())
}

/// Copies the console stream to stdout as it arrives.
async fn logs(addr: &str, name: String, follow: bool, tail: Option<u32>) -> anyhow::Result<()> {
    use std::io::Write;
    validate::vm_name(&name)?;
    let mut stream = client::vm(addr)
        .await?
        .logs(pb::VmLogsRequest {
            name,
            follow,
            tail_lines: tail.unwrap_or(0),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    while let Some(chunk) = stream.message().await.map_err(status_error)? {
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(&chunk.data)?;
        stdout.flush()?;
    }
    Ok(())
}
