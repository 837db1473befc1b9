//! The command grammar, shared by one-shot commands and the REPL: each
//! REPL line is parsed by the same `Cli` as the shell's arguments, and the
//! REPL's completion and highlighting read this grammar, so the two cannot
//! drift.

use std::path::PathBuf;

use blixard_api::validate;
use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "blixard",
    version,
    about = "MicroVM orchestration for NixOS clusters"
)]
pub struct Cli {
    /// gRPC address of any cluster node (followers forward to the leader)
    /// [default: `addr` in the client config, else 127.0.0.1:7000].
    #[arg(long, global = true, env = "BLIXARD_ADDR")]
    pub addr: Option<String>,
    /// Bearer token sent with every request [default: `token` in the
    /// client config].
    #[arg(long, global = true, env = "BLIXARD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The cluster CA certificate: connect over TLS and verify the node
    /// against it [default: `ca_file` in the client config; without one,
    /// plain text, for clusters with security off].
    #[arg(long, global = true, env = "BLIXARD_CA_FILE", value_name = "PATH")]
    pub ca_file: Option<PathBuf>,
    /// Client config file (TOML: addr, token, ca_file, edit_mode)
    /// [default: $XDG_CONFIG_HOME/blixard/client.toml].
    #[arg(
        long,
        global = true,
        env = "BLIXARD_CLIENT_CONFIG",
        value_name = "PATH"
    )]
    pub client_config: Option<PathBuf>,
    /// How results are printed.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// Log format (logs go to stderr).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// Without one, `blixard` on a terminal opens the REPL.
    #[command(subcommand)]
    pub command: Option<Command>,
}

impl Cli {
    /// Parses words that come from inside blixard (a REPL line, `watch`'s
    /// command): flags only, because the environment was read once, at
    /// start, and `connect` or a failover may since have moved on from it.
    pub fn parse_words(words: impl IntoIterator<Item = String>) -> Result<Cli, clap::Error> {
        use clap::{CommandFactory, FromArgMatches};
        let without_env = |arg: clap::Arg| arg.env(None::<&'static str>);
        let command = Cli::command()
            .mut_arg("addr", without_env)
            .mut_arg("token", without_env)
            .mut_arg("ca_file", without_env)
            .mut_arg("client_config", without_env);
        let words = std::iter::once("blixard".to_string()).chain(words);
        Cli::from_arg_matches(&command.try_get_matches_from(words)?)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
    Yaml,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a cluster node (the daemon).
    Agent(AgentArgs),
    /// Start a local three-node cluster on 127.0.0.1 (Ctrl-C stops it).
    Dev(DevArgs),
    /// Inspect and change cluster membership.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Define and control VMs.
    #[command(subcommand)]
    Vm(VmCommand),
    /// Nodes: liveness, resources, eligibility, drains.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Placement, loss, drain and membership events.
    Events {
        /// Keep printing new events until interrupted.
        #[arg(long, short = 'f')]
        follow: bool,
        /// How many recent events to print first.
        #[arg(long, default_value_t = 100)]
        recent: u32,
    },
    /// Guest images for development and tests.
    #[command(subcommand)]
    Image(ImageCommand),
    /// The cluster CA and node certificates (mTLS between nodes).
    #[command(subcommand)]
    Tls(TlsCommand),
    /// Client tokens.
    #[command(subcommand)]
    Acl(AclCommand),
    /// Who changed what: the cluster's audit trail, oldest first (admin).
    Audit {
        /// Only changes in this last stretch of time, e.g. `1h`.
        #[arg(long, value_parser = parse_duration_ms, value_name = "DURATION")]
        since: Option<u64>,
        /// Only changes by this token (name or accessor), `node-ID` or
        /// `anonymous`.
        #[arg(long)]
        who: Option<String>,
        /// At most this many of the newest changes.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// The dashboard: nodes, VMs, events, live (k9s keys; `?` lists them).
    Tui(TuiArgs),
    /// The interactive shell: these same commands, with completion from
    /// the live cluster, hints and history.
    Repl(ReplArgs),
    /// Run a reading command again each time the cluster changes, until
    /// Ctrl-C, e.g. `blixard watch vm list`.
    Watch(WatchArgs),
    /// Make the cluster match a platform document (shows the plan first).
    Apply(ApplyArgs),
    /// Show what `apply` would change, and change nothing.
    Diff(DiffArgs),
    /// Print the cluster's VMs as a platform document.
    Export(ExportArgs),
    /// Print a shell completion script, e.g. `blixard completions bash > /etc/bash_completion.d/blixard`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// The JSON Schema of a command's `--output json` (all commands without one).
    Schema {
        /// The command's words, e.g. `vm list`.
        command: Vec<String>,
    },
    /// Write man pages for blixard and every subcommand into a directory.
    Man {
        /// Output directory (created if missing).
        #[arg(long, default_value = "man")]
        out: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct ReplArgs {
    /// Key bindings [default: `edit_mode` in the client config, else emacs].
    #[arg(long, value_enum)]
    pub edit_mode: Option<crate::settings::EditMode>,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Run again at least this often, changes or not (liveness and
    /// resources change without an event).
    #[arg(long, default_value = "5s", value_parser = parse_duration_ms, value_name = "DURATION")]
    pub interval: u64,
    /// The command and its arguments, e.g. `vm list -o json`.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The platform document (YAML); `-` reads standard input.
    #[arg(long, short = 'f', value_name = "FILE")]
    pub file: PathBuf,
    /// Apply without asking (asking needs a terminal; piped runs apply).
    #[arg(long, short = 'y')]
    pub yes: bool,
    #[command(flatten)]
    pub wait: WaitArgs,
    /// The document's text, when the REPL was given it inline (a here-document).
    #[arg(skip)]
    pub document: Option<String>,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The platform document (YAML); `-` reads standard input.
    #[arg(long, short = 'f', value_name = "FILE")]
    pub file: PathBuf,
    /// The document's text, when the REPL was given it inline.
    #[arg(skip)]
    pub document: Option<String>,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Export only the VMs this platform document manages (its
    /// metadata.name); without it, every VM, as a document named `cluster`.
    #[arg(long)]
    pub name: Option<String>,
}

/// `--wait`: block until the change has happened (or failed).
#[derive(Debug, Clone, Copy, Args)]
pub struct WaitArgs {
    /// Block until the desired state is reached (a spinner shows progress
    /// on a terminal); fails if a VM fails or the timeout passes.
    #[arg(long)]
    pub wait: bool,
    /// How long `--wait` waits.
    #[arg(long, default_value = "2m", value_parser = parse_duration_ms, requires = "wait", value_name = "DURATION")]
    pub timeout: u64,
}

#[derive(Debug, Subcommand)]
pub enum AclCommand {
    /// Make, list and revoke client tokens.
    #[command(subcommand)]
    Token(AclTokenCommand),
    /// Make, list and delete roles (what a token may do).
    #[command(subcommand)]
    Role(AclRoleCommand),
}

#[derive(Debug, Subcommand)]
pub enum AclRoleCommand {
    /// Make a role allowing the given permissions.
    Create {
        /// Its name (a DNS label other than admin, operator, viewer).
        name: String,
        /// A permission it allows (repeat, or separate with commas):
        /// cluster:read, cluster:admin, vm:read, vm:read-secrets, vm:write,
        /// node:read, node:write, acl:admin, audit:read.
        #[arg(
            long = "allow",
            required = true,
            value_delimiter = ',',
            value_name = "PERMISSION"
        )]
        permissions: Vec<String>,
    },
    /// Every role and what it allows, the built-in ones first.
    List,
    /// Delete a role no token holds.
    Delete { name: String },
}

#[derive(Debug, Subcommand)]
pub enum AclTokenCommand {
    /// Make a token; its secret is printed once, here.
    Create {
        /// What to call it (a DNS label, e.g. `ci`).
        #[arg(long)]
        name: String,
        /// What it may do: admin (everything), operator (VMs and nodes,
        /// reading all but the audit trail), viewer (reading only), or a
        /// role made with `acl role create`.
        #[arg(long)]
        role: String,
        /// Refuse the token after this long, e.g. `1h`, `30d` [default: never].
        #[arg(long, value_parser = parse_duration_ms, value_name = "DURATION")]
        ttl: Option<u64>,
    },
    /// Every token: accessor, name, age (never a secret).
    List,
    /// Revoke a token by its accessor; it stops working at once.
    Revoke {
        /// The accessor `acl token list` shows.
        accessor: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TlsCommand {
    /// Create the cluster CA (once per cluster): DIR/ca.pem and DIR/ca-key.pem
    /// (keep the key off the nodes).
    #[command(subcommand)]
    Ca(TlsCaCommand),
    /// Issue node certificates.
    #[command(subcommand)]
    Cert(TlsCertCommand),
    /// Pin the CA of the cluster at --addr on first use (as ssh pins a
    /// host key): shows its SHA-256 fingerprint to confirm, then keeps it
    /// where later commands find it.
    Trust {
        /// The CA fingerprint to expect (from `tls ca fingerprint`); needed
        /// when not on a terminal.
        #[arg(long, value_name = "SHA256")]
        fingerprint: Option<String>,
        /// Where to keep it [default: $XDG_CONFIG_HOME/blixard/ca.pem, read
        /// by every command given no --ca-file].
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum TlsCaCommand {
    /// Write a new CA into a directory (refuses to overwrite one).
    Create {
        /// Directory to write ca.pem and ca-key.pem into.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// The cluster's name, written into the CA's subject.
        #[arg(long, default_value = "blixard")]
        name: String,
    },
    /// Show the CA's SHA-256 fingerprint (what `tls trust` asks to confirm).
    Fingerprint {
        /// Directory holding ca.pem.
        #[arg(long, value_name = "DIR")]
        ca_dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum TlsCertCommand {
    /// Issue node N's certificate: OUT/ca.pem, OUT/node.pem, OUT/node-key.pem
    /// (use DATA_DIR/tls, where the agent looks by default).
    Create {
        /// Directory holding the CA (from `tls ca create`).
        #[arg(long, value_name = "DIR")]
        ca_dir: PathBuf,
        /// The node the certificate names; it must match the node's node_id.
        #[arg(long)]
        node_id: u64,
        /// Directory to write into (refuses to overwrite).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build the test guest (Debian cloud kernel + busybox initramfs that
    /// prints BLIXARD-GUEST-READY; `http=1` on its command line serves HTTP).
    Build {
        /// Output directory (default: ~/.cache/blixard/guest).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// TOML configuration file (e.g. /etc/blixard/config.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long)]
    pub node_id: Option<u64>,
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// gRPC address to serve on (IP:PORT).
    #[arg(long)]
    pub bind: Option<String>,
    /// Address of an existing member to join through (repeatable; first start only).
    #[arg(long = "join", value_name = "HOST:PORT")]
    pub join: Vec<String>,
    /// Found a new cluster if the data directory is empty (one node, once;
    /// with --join too, a cluster answering there is joined instead).
    #[arg(long)]
    pub bootstrap: bool,
    /// A label for placement rules, e.g. `--label zone=a` (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// UDP address to gossip on (default: the --bind address, over UDP).
    #[arg(long, value_name = "IP:PORT")]
    pub gossip_bind: Option<String>,
    /// A join token (`cluster join-token create`): on first start, a node
    /// without a certificate gets one through its --join address (it needs
    /// the cluster's ca.pem in DATA_DIR/tls/ or [tls] ca_file).
    #[arg(long, env = "BLIXARD_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
}

/// A flag's value that does not parse (at most a short prefix of it is
/// echoed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadValue {
    #[error("{0:?} is not KEY=VALUE")]
    Label(String),
    #[error("{text:?} is not a duration like 30s, 5m or 1500ms: {detail}")]
    Duration { text: String, detail: String },
    #[error("{0:?} is not HOST:GUEST")]
    PortForward(String),
    #[error("{0:?} is not a port between 1 and 65535")]
    Port(String),
}

fn parse_label(text: &str) -> Result<(String, String), BadValue> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| BadValue::Label(validate::echo(text)))?;
    Ok((key.to_string(), value.to_string()))
}

/// Parses durations like `30s`, `5m`, `1500ms`, `1h`.
pub fn parse_duration_ms(text: &str) -> Result<u64, BadValue> {
    humantime::parse_duration(text)
        .map(|d| d.as_millis().min(u128::from(u64::MAX)) as u64)
        .map_err(|e| BadValue::Duration {
            text: validate::echo(text),
            detail: e.to_string(),
        })
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Every node with role, liveness, resources and labels.
    List,
    /// One node in detail.
    Status { node_id: u64 },
    /// Allow or forbid placing VMs on a node.
    Eligibility {
        node_id: u64,
        #[arg(long, conflicts_with = "disable", required_unless_present = "disable")]
        enable: bool,
        #[arg(long)]
        disable: bool,
    },
    /// Move a node's VMs elsewhere and mark it ineligible; shows progress
    /// until the node is empty.
    Drain {
        node_id: u64,
        /// After this, VMs still on the node are taken off it regardless.
        #[arg(long, default_value = "5m", value_parser = parse_duration_ms)]
        deadline: u64,
        /// Return once the drain has started.
        #[arg(long)]
        no_wait: bool,
    },
}

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Directory for the nodes' data and logs (default: a temporary directory, removed on exit).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Number of nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=7))]
    pub nodes: u64,
    /// gRPC port of node 1; node N listens on BASE_PORT + N - 1.
    #[arg(long, default_value_t = 7000)]
    pub base_port: u16,
    /// Do not build the guest image and boot the sample VM.
    #[arg(long)]
    pub no_vm: bool,
    /// Do not open the dashboard (it opens when stdin and stdout are a
    /// terminal); wait for Ctrl-C instead.
    #[arg(long)]
    pub no_tui: bool,
}

#[derive(Debug, Args)]
pub struct TuiArgs {
    /// Disable every action that changes the cluster.
    #[arg(long)]
    pub readonly: bool,
    /// Colours: `dark` (the terminal's own base) or `light` (black on white).
    #[arg(long, default_value = "dark", value_parser = parse_skin)]
    pub skin: blixard_tui::skin::Skin,
}

fn parse_skin(name: &str) -> Result<blixard_tui::skin::Skin, blixard_tui::skin::UnknownSkin> {
    blixard_tui::skin::Skin::named(name)
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Leader, term, log indexes and members as this node sees them.
    Status,
    /// Add a node (it enters as a learner and is promoted once caught up);
    /// with TLS only the node itself may ask, through a voter (agents do
    /// this themselves with --join).
    Join {
        node_id: u64,
        /// The new node's gRPC address (HOST:PORT).
        address: String,
    },
    /// Remove a node from the cluster.
    RemoveNode { node_id: u64 },
    /// Give every node (or the ones named) a new key and certificate from
    /// the cluster CA, one node at a time, without restarting any; each
    /// node's old certificate is refused from then on.
    RotateCerts {
        /// Only this node (repeatable).
        #[arg(long = "node", value_name = "ID")]
        nodes: Vec<u64>,
    },
    /// Show or set how many voters autopilot keeps and when it replaces a
    /// dead one.
    Autopilot {
        /// 1, 3, 5 or 7.
        #[arg(long)]
        voters: Option<u32>,
        #[arg(long, value_parser = parse_duration_ms)]
        dead_voter_after: Option<u64>,
    },
    /// Show or set the cluster's failover defaults for VMs.
    Failover {
        /// How long a node must be dead before its VMs count as lost.
        #[arg(long, value_parser = parse_duration_ms)]
        lost_after: Option<u64>,
        /// Whether lost VMs start on other nodes.
        #[arg(long)]
        replace_lost: Option<bool>,
    },
    /// One-time tokens a new node gets its certificate with.
    #[command(subcommand)]
    JoinToken(JoinTokenCommand),
}

#[derive(Debug, Subcommand)]
pub enum JoinTokenCommand {
    /// Make a join token; it is printed once, here.
    Create {
        /// How long it is good for, e.g. `30m` [default: 1h; at most 7 days].
        #[arg(long, value_parser = parse_duration_ms, value_name = "DURATION")]
        ttl: Option<u64>,
    },
    /// The join tokens not yet expired, and the node each was spent on.
    List,
    /// Withdraw a join token (by accessor), spent or not.
    Revoke { accessor: String },
}

#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Define a VM; it stays stopped until `vm start`.
    Create(Box<VmCreateArgs>),
    /// List all VMs (read page by page).
    List {
        /// Only the members of this replica group.
        #[arg(long)]
        group: Option<String>,
    },
    /// Show one VM.
    Status { name: String },
    /// Ask for a VM to run.
    Start {
        name: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Ask for a VM to stop.
    Stop {
        name: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Delete a VM's definition (its node stops it and removes its state).
    Delete {
        name: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Grow or shrink a replica group (made by `vm create --replicas`).
    Scale {
        name: String,
        #[arg(long)]
        replicas: u32,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Print the VM's serial console, from whichever node runs it.
    Logs {
        name: String,
        /// Keep printing new output until interrupted.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Start with this many of the last lines (default: all kept).
        #[arg(long)]
        tail: Option<u32>,
    },
    /// Print every VM as it is now, then every change as it commits.
    Watch {
        /// Stop after this many VM events (default: until interrupted);
        /// the `synced` line that ends the initial list is not counted.
        #[arg(long)]
        max_events: Option<u64>,
    },
}

#[derive(Debug, Args)]
pub struct VmCreateArgs {
    pub name: String,
    #[arg(long)]
    pub vcpus: u32,
    /// Memory in MiB.
    #[arg(long = "memory", value_name = "MiB")]
    pub memory_mib: u64,
    /// Kernel image for the built-in qemu runner (with --initrd).
    #[arg(long, requires = "initrd", conflicts_with = "flake")]
    pub kernel: Option<String>,
    /// Initramfs for the built-in qemu runner (with --kernel).
    #[arg(long, requires = "kernel")]
    pub initrd: Option<String>,
    /// Extra kernel command line (with --kernel).
    #[arg(long, requires = "kernel")]
    pub cmdline: Option<String>,
    /// Forward TCP port HOST on the VM's node (127.0.0.1) to GUEST in the
    /// VM (with --kernel; repeatable).
    #[arg(long = "port", value_name = "HOST:GUEST", requires = "kernel", value_parser = parse_port_forward)]
    pub ports: Vec<(u16, u16)>,
    /// microvm.nix flake reference, e.g. /etc/vms#webapp.
    #[arg(long, required_unless_present = "kernel")]
    pub flake: Option<String>,
    /// Run only on this node (default: the scheduler chooses).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub node: Option<u64>,
    /// Create NAME-1..N, started, as one replica group.
    #[arg(long)]
    pub replicas: Option<u32>,
    /// Hard placement rules, e.g. "storage=nvme,memory>=4096" (repeatable).
    #[arg(long = "constraint", value_name = "RULES")]
    pub constraints: Vec<String>,
    /// Soft placement rules, e.g. "gpu=available" (repeatable).
    #[arg(long = "prefer", value_name = "RULES")]
    pub preferences: Vec<String>,
    /// Never place two VMs of this group on one node.
    #[arg(long)]
    pub anti_affinity_group: Option<String>,
    /// Prefer nodes already running VMs of this group.
    #[arg(long)]
    pub affinity_group: Option<String>,
    /// spread (default) or binpack.
    #[arg(long)]
    pub strategy: Option<String>,
    /// Grace before the VM counts as lost when its node dies (default: the cluster's).
    #[arg(long, value_parser = parse_duration_ms)]
    pub lost_after: Option<u64>,
    /// Whether a lost VM starts on another node (default: the cluster's).
    #[arg(long)]
    pub replace_lost: Option<bool>,
    #[command(flatten)]
    pub wait: WaitArgs,
}

fn parse_port_forward(text: &str) -> Result<(u16, u16), BadValue> {
    let (host, guest) = text
        .split_once(':')
        .ok_or_else(|| BadValue::PortForward(validate::echo(text)))?;
    let port = |value: &str| {
        value
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| BadValue::Port(validate::echo(value)))
    };
    Ok((port(host)?, port(guest)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_grammar_is_well_formed() {
        Cli::command().debug_assert();
    }

    /// Every `blixard ...` command in the README's shell blocks, with
    /// continuation lines joined and comments dropped.
    fn documented_commands() -> Vec<Vec<String>> {
        let readme = include_str!("../../README.md");
        let mut commands = Vec::new();
        let mut in_shell = false;
        let mut pending = String::new();
        for line in readme.lines() {
            if line.starts_with("```") {
                in_shell = line == "```sh";
                continue;
            }
            if !in_shell {
                continue;
            }
            if pending.is_empty() && !line.starts_with("blixard ") {
                continue;
            }
            let code = match line.find(" #") {
                Some(at) => &line[..at],
                None => line,
            };
            match code.trim_end().strip_suffix('\\') {
                Some(start) => pending.push_str(start),
                None => {
                    pending.push_str(code);
                    let command = std::mem::take(&mut pending);
                    // A redirection ends the command.
                    let command = command.split(" > ").next().unwrap_or_default();
                    commands.push(shlex::split(command).expect("README quotes balance"));
                }
            }
        }
        commands
    }

    #[test]
    fn every_command_the_readme_documents_parses() {
        let commands = documented_commands();
        assert!(commands.len() > 30, "found only {}", commands.len());
        for words in commands {
            if let Err(e) = Cli::try_parse_from(&words) {
                panic!("README: {}: {e}", words.join(" "));
            }
        }
    }

    #[test]
    fn bad_arguments_are_usage_errors() {
        for words in [
            &["blixard", "vm", "lsit"][..],
            &[
                "blixard", "vm", "create", "x", "--vcpus", "one", "--memory", "1", "--flake", "a#b",
            ],
            &["blixard", "vm", "start"],
            &["blixard", "vm", "start", "x", "--timeout", "5s"],
            &["blixard", "apply"],
            &["blixard", "-o", "xml", "vm", "list"],
            &["blixard", "completions", "tcsh"],
        ] {
            let error = Cli::try_parse_from(words).expect_err(&words.join(" "));
            assert_eq!(error.exit_code(), 2, "{}", words.join(" "));
        }
    }
}
