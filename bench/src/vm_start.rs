//! The VM start path on a real node agent: from `vm start` to the cluster
//! accepting it, to the hypervisor running (as the watch stream reports),
//! to the guest printing its readiness marker on the serial console.
//!
//! Invariant: each start is measured from a stopped VM, and the next
//! starts only once the cluster reports this one stopped again.

use std::time::{Duration, Instant};

use blixard_api::pb;
use indicatif::ProgressBar;
use tokio_stream::StreamExt;

use super::load::percentile_ms;
use super::report::{Row, Unit};
use blixard_cli::client;
use blixard_cli::commands::image::GuestImage;

const READY_MARKER: &str = "BLIXARD-GUEST-READY";
const NAME: &str = "bench-boot";
const STEP_DEADLINE_MS: u64 = 60_000;

fn timeout(what: &str) -> impl FnOnce(tokio::time::error::Elapsed) -> anyhow::Error + '_ {
    move |_| anyhow::anyhow!("{what}: nothing after {STEP_DEADLINE_MS} ms")
}

/// Reads the watch stream until `holds` is true of the bench VM.
async fn await_vm(
    watch: &mut tonic::Streaming<pb::VmEvent>,
    what: &str,
    holds: impl Fn(&pb::VmInfo) -> bool,
) -> anyhow::Result<pb::VmInfo> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(STEP_DEADLINE_MS);
    loop {
        let event = tokio::time::timeout_at(deadline, watch.next())
            .await
            .map_err(timeout(what))?
            .ok_or_else(|| anyhow::anyhow!("the watch stream ended"))?
            .map_err(client::status_error)?;
        if let Some(vm) = event.vm {
            if vm.spec.as_ref().is_some_and(|s| s.name == NAME) && holds(&vm) {
                return Ok(vm);
            }
        }
    }
}

/// The number of readiness markers in the console log so far.
async fn markers(address: &str) -> anyhow::Result<usize> {
    let mut logs = client::vm(address)
        .await?
        .logs(pb::VmLogsRequest {
            name: NAME.into(),
            follow: false,
            tail_lines: 0,
        })
        .await
        .map_err(client::status_error)?
        .into_inner();
    let mut text = Vec::new();
    while let Some(chunk) = logs.next().await {
        text.extend(chunk.map_err(client::status_error)?.data);
    }
    Ok(String::from_utf8_lossy(&text).matches(READY_MARKER).count())
}

/// Follows the console until it holds more than `seen` markers.
async fn await_marker(address: &str, seen: usize) -> anyhow::Result<()> {
    let mut logs = client::vm(address)
        .await?
        .logs(pb::VmLogsRequest {
            name: NAME.into(),
            follow: true,
            tail_lines: 0,
        })
        .await
        .map_err(client::status_error)?
        .into_inner();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(STEP_DEADLINE_MS);
    let mut text = Vec::new();
    loop {
        let chunk = tokio::time::timeout_at(deadline, logs.next())
            .await
            .map_err(timeout("the guest's readiness marker"))?
            .ok_or_else(|| anyhow::anyhow!("the console stream ended"))?
            .map_err(client::status_error)?;
        text.extend(chunk.data);
        if String::from_utf8_lossy(&text).matches(READY_MARKER).count() > seen {
            return Ok(());
        }
    }
}

fn running(vm: &pb::VmInfo) -> bool {
    vm.observed.as_ref().is_some_and(|o| o.pid != 0)
}

fn stopped(vm: &pb::VmInfo) -> bool {
    vm.observed
        .as_ref()
        .is_some_and(|o| o.phase() == pb::VmPhase::Stopped)
}

/// Starts and stops the guest `starts` times through `address`.
pub async fn rows(
    address: &str,
    image: &GuestImage,
    starts: usize,
    spinner: &ProgressBar,
) -> anyhow::Result<Vec<Row>> {
    let mut vm = client::vm(address).await?;
    vm.create(pb::CreateVmRequest {
        spec: Some(image.vm_spec(NAME, 128)),
        replicas: 0,
        stopped: false,
    })
    .await
    .map_err(client::status_error)?;
    let (mut accepted_us, mut spawned_us, mut ready_us, mut rss_kib) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut node = 0;
    for i in 0..starts {
        spinner.set_message(format!("VM start path: boot {} of {starts}", i + 1));
        let seen = if i == 0 { 0 } else { markers(address).await? };
        let mut watch = vm
            .watch(pb::WatchVmsRequest::default())
            .await
            .map_err(client::status_error)?
            .into_inner();
        let began = Instant::now();
        vm.start(pb::VmNameRequest { name: NAME.into() })
            .await
            .map_err(client::status_error)?;
        accepted_us.push(began.elapsed().as_micros() as u64);
        let info = await_vm(&mut watch, "the hypervisor process", running).await?;
        spawned_us.push(began.elapsed().as_micros() as u64);
        // The console keeps what the guest printed before we asked, so
        // following it only now misses nothing.
        await_marker(address, seen).await?;
        ready_us.push(began.elapsed().as_micros() as u64);
        node = info.assigned_node;
        let stats = vm
            .stats(pb::VmNameRequest { name: NAME.into() })
            .await
            .map_err(client::status_error)?
            .into_inner();
        rss_kib.push(stats.rss_bytes / 1024);
        vm.stop(pb::VmNameRequest { name: NAME.into() })
            .await
            .map_err(client::status_error)?;
        await_vm(&mut watch, "the VM stopping", stopped).await?;
    }
    vm.delete(pb::VmNameRequest { name: NAME.into() })
        .await
        .map_err(client::status_error)?;

    let accel = client::node(address)
        .await?
        .get(pb::NodeRequest { node_id: node })
        .await
        .map_err(client::status_error)?
        .into_inner()
        .accel;
    let note = format!("{starts} starts, 128 MiB guest, {accel} (qemu -M microvm)");
    let timing = |benchmark: &str, samples: &mut Vec<u64>| {
        samples.sort_unstable();
        Row {
            p50_ms: percentile_ms(samples, 50),
            p99_ms: percentile_ms(samples, 99),
            ..Row::figure(
                benchmark,
                percentile_ms(samples, 50).unwrap_or_default(),
                Unit::Ms,
                note.clone(),
            )
        }
    };
    rss_kib.sort_unstable();
    let rss_median_kib = rss_kib.get(rss_kib.len() / 2).copied().unwrap_or_default();
    Ok(vec![
        timing("VM start: accepted (committed)", &mut accepted_us),
        timing(
            "VM start: hypervisor running (seen in watch)",
            &mut spawned_us,
        ),
        timing("VM start: guest ready marker on console", &mut ready_us),
        Row::figure(
            "VM footprint: hypervisor RSS per VM",
            rss_median_kib as f64 / 1024.0,
            Unit::Mib,
            format!("median over {starts} boots; {note}"),
        ),
    ])
}
