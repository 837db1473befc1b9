//! `blixard image build`: the development/test guest (Debian cloud kernel
//! plus a busybox initramfs), built by the script in `nix/guest/`, which is
//! compiled into the binary so an installed `blixard` can run it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::cli::OutputFormat;
use crate::output;

const BUILD_SCRIPT: &str = include_str!("../../../nix/guest/build-image.sh");
const GUEST_INIT: &str = include_str!("../../../nix/guest/init");

#[derive(Serialize, schemars::JsonSchema)]
pub struct GuestImage {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

/// `~/.cache/blixard/guest` (or `$XDG_CACHE_HOME/blixard/guest`).
pub fn default_dir() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    cache.join("blixard").join("guest")
}

/// Builds (or finds up to date) the guest image in `out`.
pub fn build(out: &Path) -> anyhow::Result<GuestImage> {
    let scripts = tempfile::tempdir()?;
    let script = scripts.path().join("build-image.sh");
    std::fs::write(&script, BUILD_SCRIPT)?;
    std::fs::write(scripts.path().join("init"), GUEST_INIT)?;
    let output = Command::new("bash")
        .arg(&script)
        .arg(out)
        .output()
        .context("cannot run bash")?;
    if !output.status.success() {
        anyhow::bail!(
            "building the guest image failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(GuestImage {
        kernel: out.join("vmlinuz"),
        initrd: out.join("initrd.gz"),
    })
}

impl GuestImage {
    /// A stopped VM of `memory_mib` that boots this image.
    pub fn vm_spec(&self, name: &str, memory_mib: u64) -> blixard_api::pb::VmSpec {
        use blixard_api::pb;
        pb::VmSpec {
            name: name.into(),
            vcpus: 1,
            memory_mib,
            runner: Some(pb::RunnerSource {
                source: Some(pb::runner_source::Source::Kernel(pb::KernelRunner {
                    kernel_path: self.kernel.display().to_string(),
                    initrd_path: self.initrd.display().to_string(),
                    cmdline: String::new(),
                    ports: Vec::new(),
                })),
            }),
            ..pb::VmSpec::default()
        }
    }
}

pub fn build_with_spinner(out: &Path) -> anyhow::Result<GuestImage> {
    let spinner = ProgressBar::new_spinner()
        .with_style(ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")?);
    spinner.set_message(format!("building the guest image in {}", out.display()));
    spinner.enable_steady_tick(Duration::from_millis(100));
    let image = build(out);
    spinner.finish_and_clear();
    image
}

pub fn run(out: Option<PathBuf>, format: OutputFormat) -> anyhow::Result<()> {
    let out = out.unwrap_or_else(default_dir);
    let image = build_with_spinner(&out)?;
    output::print(format, &image, |image| {
        let mut table = output::table(&["FILE", "PATH"]);
        table.add_row(vec![
            "kernel".to_string(),
            image.kernel.display().to_string(),
        ]);
        table.add_row(vec![
            "initrd".to_string(),
            image.initrd.display().to_string(),
        ]);
        table
    })
}
