//! Runner sources: whatever their origin, each leaves `STATE_DIR/current`
//! pointing at a directory laid out like a microvm.nix runner
//! (`bin/microvm-run`, optional `bin/microvm-shutdown`, `share/microvm/`).
//!
//! Invariant: `prepare` either leaves a complete runner at `current` or
//! returns an error that says what to fix; it never leaves a half-written
//! runner behind `current`.

use std::future::Future;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::accel::Accel;
use crate::console;
use crate::error::{Error, Result};
use crate::process::process_name;

/// Produces the runner of one VM in its state directory.
pub trait RunnerSource {
    fn prepare(&self, state_dir: &Path) -> impl Future<Output = Result<PathBuf>> + Send;
}

pub fn current(state_dir: &Path) -> PathBuf {
    state_dir.join("current")
}

/// The QMP control socket, named as microvm.nix names it.
pub fn qmp_socket(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join(format!("{name}.sock"))
}

/// Blixard's own qemu `-M microvm` runner from a kernel and initramfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuRunner {
    pub name: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
    /// (host, guest) TCP ports forwarded from 127.0.0.1 through qemu's
    /// user-mode network; empty means no network device.
    pub ports: Vec<(u16, u16)>,
    pub accel: Accel,
    pub qemu_binary: String,
    /// The QMP socket is inherited as descriptor
    /// [`crate::vm_user::QMP_FD`] (bound by the agent, for a hypervisor
    /// that may not write its state directory) rather than made by qemu.
    pub qmp_inherited: bool,
}

impl QemuRunner {
    /// The hypervisor command line (without the `exec -a` wrapper).
    pub fn command_line(&self) -> Vec<String> {
        let mut kernel_cmdline = vec!["console=ttyS0", "reboot=t", "panic=-1", "quiet"];
        let (machine, cpu) = match self.accel {
            // kvmclock gives the guest a clock, so the legacy timers go.
            Accel::Kvm => (
                "microvm,accel=kvm,acpi=on,pcie=off,pic=off,pit=off,rtc=on,usb=off",
                "host",
            ),
            // Under TCG the kernel calibrates its TSC against the PIT, which
            // fails now and then and hangs the boot; an early estimate
            // skips that calibration.
            Accel::Tcg => {
                kernel_cmdline.push("tsc_early_khz=2000000");
                ("microvm,accel=tcg,acpi=on,pcie=off,rtc=on,usb=off", "max")
            }
        };
        let mut append = kernel_cmdline.join(" ");
        if !self.cmdline.is_empty() {
            append.push(' ');
            append.push_str(&self.cmdline);
        }
        let mut args: Vec<String> = vec![
            self.qemu_binary.clone(),
            "-name".into(),
            self.name.clone(),
            "-M".into(),
            machine.into(),
            "-cpu".into(),
            cpu.into(),
            "-m".into(),
            self.memory_mib.to_string(),
            "-smp".into(),
            self.vcpus.to_string(),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-no-reboot".into(),
            "-display".into(),
            "none".into(),
            "-serial".into(),
            "stdio".into(),
            "-kernel".into(),
        ];
        args.push(self.kernel.display().to_string());
        args.push("-initrd".into());
        args.push(self.initrd.display().to_string());
        args.push("-append".into());
        args.push(append);
        if !self.ports.is_empty() {
            let forwards: Vec<String> = self
                .ports
                .iter()
                .map(|(host, guest)| format!("hostfwd=tcp:127.0.0.1:{host}-:{guest}"))
                .collect();
            args.push("-netdev".into());
            args.push(format!("user,id=n0,{}", forwards.join(",")));
            args.push("-device".into());
            args.push("virtio-net-device,netdev=n0".into());
        }
        match self.qmp_inherited {
            true => args.extend([
                "-chardev".into(),
                format!(
                    "socket,id=qmp,fd={},server=on,wait=off",
                    crate::vm_user::QMP_FD
                ),
                "-mon".into(),
                "chardev=qmp,mode=control".into(),
            ]),
            false => args.extend([
                "-qmp".into(),
                format!("unix:{}.sock,server=on,wait=off", self.name),
            ]),
        }
        args
    }

    fn script(&self) -> Result<String> {
        let quoted = shlex::try_join(self.command_line().iter().map(String::as_str))
            .map_err(|e| Error::Runner(format!("cannot quote the qemu command line: {e}")))?;
        // Every interpolation is quoted; the name appears nowhere else.
        let process_name = process_name(&self.name);
        let argv0 = shlex::try_quote(&process_name)
            .map_err(|e| Error::Runner(format!("cannot quote the process name: {e}")))?;
        Ok(format!(
            "#!/usr/bin/env bash\n# Written by blixard: the microvm.nix runner layout.\nset -eu\nexec -a {argv0} {quoted}\n"
        ))
    }
}

impl RunnerSource for QemuRunner {
    async fn prepare(&self, state_dir: &Path) -> Result<PathBuf> {
        for (what, path) in [("kernel", &self.kernel), ("initrd", &self.initrd)] {
            if !path.is_file() {
                return Err(Error::Runner(format!(
                    "{what} {} does not exist",
                    path.display()
                )));
            }
        }
        let runner = state_dir.join("runner");
        let staging = state_dir.join("runner.tmp");
        let _ = std::fs::remove_dir_all(&staging);
        let io = |what: &str| {
            let what = what.to_string();
            move |e| Error::io(what, e)
        };
        std::fs::create_dir_all(staging.join("bin")).map_err(io("create runner"))?;
        std::fs::create_dir_all(staging.join("share/microvm")).map_err(io("create runner"))?;
        // Written whole and synced, then closed, before the directory is
        // renamed into place: a crash leaves the old runner or the new
        // one, never a torn script.
        let run = staging.join("bin/microvm-run");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o755)
            .open(&run)
            .map_err(io("create microvm-run"))?;
        // The mode again past the umask: a vm_user must be able to read it.
        file.write_all(self.script()?.as_bytes())
            .and_then(|()| file.set_permissions(std::fs::Permissions::from_mode(0o755)))
            .and_then(|()| file.sync_all())
            .map_err(io("write microvm-run"))?;
        drop(file);
        std::fs::write(staging.join("share/microvm/hypervisor"), "qemu\n")
            .map_err(io("write share/microvm/hypervisor"))?;
        let _ = std::fs::remove_dir_all(&runner);
        std::fs::rename(&staging, &runner).map_err(io("install runner"))?;
        link(&runner, &current(state_dir))?;
        Ok(runner)
    }
}

/// A microvm.nix runner built by `nix build` from a flake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlakeRunner {
    pub name: String,
    pub flake_ref: String,
    pub nix_binary: String,
}

impl FlakeRunner {
    /// `FLAKE#nixosConfigurations.NAME.config.microvm.declaredRunner`; a
    /// reference that already names an attribute (`#name`) uses that name.
    pub fn installable(&self) -> String {
        let (flake, attribute) = match self.flake_ref.split_once('#') {
            Some((flake, attribute)) if !attribute.is_empty() => (flake, attribute),
            Some((flake, _)) => (flake, self.name.as_str()),
            None => (self.flake_ref.as_str(), self.name.as_str()),
        };
        format!("{flake}#nixosConfigurations.{attribute}.config.microvm.declaredRunner")
    }

    pub fn build_args(&self, state_dir: &Path) -> Vec<String> {
        vec![
            // Older nix (Debian's 2.8) ships flakes behind a flag; newer
            // nix accepts the flag when the features are already on.
            "--extra-experimental-features".into(),
            "nix-command flakes".into(),
            "build".into(),
            self.installable(),
            "-o".into(),
            current(state_dir).display().to_string(),
        ]
    }
}

/// A failed `nix build` is explained by this many of its last lines.
const NIX_ERROR_LINES_MAX: usize = 5;

impl RunnerSource for FlakeRunner {
    /// The build's output goes to the VM's console log as it happens, so
    /// `blixard vm logs NAME --follow` shows the build's progress.
    async fn prepare(&self, state_dir: &Path) -> Result<PathBuf> {
        let log = console::open_for_hypervisor(state_dir)?;
        let log_err = log.try_clone().map_err(|e| Error::io("console log", e))?;
        let (_, build_started_at) = console::tail(state_dir, 0)?;
        let status = tokio::process::Command::new(&self.nix_binary)
            .args(self.build_args(state_dir))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .status()
            .await
            .map_err(|e| Error::Runner(format!("cannot run {}: {e}", self.nix_binary)))?;
        std::fs::write(state_dir.join("flake"), &self.flake_ref)
            .map_err(|e| Error::io("write flake", e))?;
        if !status.success() {
            let (output, _) = console::read_from(state_dir, build_started_at, 64 * 1024)?;
            let output = String::from_utf8_lossy(&output);
            let lines: Vec<&str> = output.lines().filter(|l| !l.trim().is_empty()).collect();
            let last = lines[lines.len().saturating_sub(NIX_ERROR_LINES_MAX)..].join(" | ");
            return Err(Error::Runner(format!(
                "nix build {} failed ({status}): {last}",
                self.installable(),
            )));
        }
        Ok(current(state_dir))
    }
}

/// Points `link` at `target`, replacing what was there atomically.
pub fn link(target: &Path, link: &Path) -> Result<()> {
    let staging = link.with_extension("tmp-link");
    let _ = std::fs::remove_file(&staging);
    std::os::unix::fs::symlink(target, &staging).map_err(|e| Error::io("symlink runner", e))?;
    std::fs::rename(&staging, link).map_err(|e| Error::io("install runner link", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flake_installable_follows_microvm_nix() {
        let runner = |flake_ref: &str| FlakeRunner {
            name: "web".into(),
            flake_ref: flake_ref.into(),
            nix_binary: "nix".into(),
        };
        assert_eq!(
            runner("/etc/vms").installable(),
            "/etc/vms#nixosConfigurations.web.config.microvm.declaredRunner"
        );
        assert_eq!(
            runner("github:me/vms#api").installable(),
            "github:me/vms#nixosConfigurations.api.config.microvm.declaredRunner"
        );
    }

    /// A stand-in `nix` that records its arguments checks the command line
    /// only; the real `nix build` runs in the multi-process tests.
    #[tokio::test]
    async fn flake_runner_runs_nix_build_of_the_declared_runner() {
        let dir = tempfile::tempdir().unwrap();
        let recorded = dir.path().join("args");
        let fake_nix = dir.path().join("nix");
        std::fs::write(
            &fake_nix,
            format!(
                "#!/bin/sh\nprintf '%s\\n' \"$@\" > {}\n",
                recorded.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&fake_nix, std::fs::Permissions::from_mode(0o755)).unwrap();
        let runner = FlakeRunner {
            name: "web".into(),
            flake_ref: "/etc/vms".into(),
            nix_binary: fake_nix.display().to_string(),
        };
        let state = dir.path().join("web");
        std::fs::create_dir_all(&state).unwrap();
        runner.prepare(&state).await.unwrap();
        let args = std::fs::read_to_string(&recorded).unwrap();
        let expected = format!(
            "--extra-experimental-features\nnix-command flakes\nbuild\n/etc/vms#nixosConfigurations.web.config.microvm.declaredRunner\n-o\n{}\n",
            state.join("current").display()
        );
        assert_eq!(args, expected);
        assert_eq!(
            std::fs::read_to_string(state.join("flake")).unwrap(),
            "/etc/vms"
        );
    }

    #[tokio::test]
    async fn qemu_runner_is_laid_out_like_microvm_nix() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinuz");
        let initrd = dir.path().join("initrd");
        std::fs::write(&kernel, b"k").unwrap();
        std::fs::write(&initrd, b"i").unwrap();
        let runner = QemuRunner {
            name: "web".into(),
            vcpus: 2,
            memory_mib: 256,
            kernel,
            initrd,
            cmdline: "http=1 note='a b'".into(),
            ports: vec![(8080, 80)],
            accel: Accel::Tcg,
            qemu_binary: "qemu-system-x86_64".into(),
            qmp_inherited: false,
        };
        let state = dir.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        runner.prepare(&state).await.unwrap();
        let script = std::fs::read_to_string(state.join("current/bin/microvm-run")).unwrap();
        let exec_line = script.lines().find(|l| l.starts_with("exec -a ")).unwrap();
        // What bash will run is exactly the command line, quoting included.
        let words = shlex::split(exec_line).unwrap();
        assert_eq!(words[..3], ["exec", "-a", "microvm@web"]);
        assert_eq!(words[3..], runner.command_line()[..]);
        assert!(words.contains(&"unix:web.sock,server=on,wait=off".to_string()));
        assert!(words.contains(&"user,id=n0,hostfwd=tcp:127.0.0.1:8080-:80".to_string()));
        assert!(words
            .iter()
            .any(|w| w.ends_with("tsc_early_khz=2000000 http=1 note='a b'")));
        let hypervisor =
            std::fs::read_to_string(state.join("current/share/microvm/hypervisor")).unwrap();
        assert_eq!(hypervisor, "qemu\n");

        let inherited = QemuRunner {
            qmp_inherited: true,
            ..runner.clone()
        }
        .command_line();
        assert!(inherited.contains(&"socket,id=qmp,fd=3,server=on,wait=off".to_string()));
        assert!(!inherited.iter().any(|w| w.contains("web.sock")));

        let missing = QemuRunner {
            kernel: "/nonexistent/vmlinuz".into(),
            ..runner
        };
        let error = missing.prepare(&state).await.unwrap_err().to_string();
        assert_eq!(error, "kernel /nonexistent/vmlinuz does not exist");
    }
}
