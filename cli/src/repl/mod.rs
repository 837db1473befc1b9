//! `blixard repl`: the same commands as the shell's, typed into reedline
//! with completion from the live cluster (`completer`), colours
//! (`highlighter`), fish-style hints from history (reedline's
//! `DefaultHinter`), multi-line input (`validator`), a prompt that shows
//! the node and its health (`prompt`), and history in a file (Ctrl-R
//! searches it).
//!
//! Invariants: a line is parsed by the same clap grammar as the shell's
//! arguments; an error prints and the session goes on; Ctrl-C while a
//! command runs stops that command and returns to the prompt, never
//! leaving the REPL; only `exit`, `quit` or Ctrl-D end it.

mod completer;
mod grammar;
mod highlighter;
mod live;
mod prompt;
mod validator;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use clap::CommandFactory;
use reedline::{
    default_emacs_keybindings, default_vi_insert_keybindings, default_vi_normal_keybindings,
    default_vi_visual_keybindings, DefaultHinter, DescriptionMode, EditMode, Emacs,
    FileBackedHistory, IdeMenu, KeyCode, KeyModifiers, Keybindings, MenuBuilder, Reedline,
    ReedlineEvent, ReedlineMenu, Signal, Vi,
};
use tokio::sync::watch;

use crate::cli::{Cli, Command, ReplArgs};
use crate::settings::{EditMode as Mode, Settings};

/// Lines of history kept in the file.
const HISTORY_LINES_MAX: usize = 10_000;
const MENU: &str = "completion_menu";

/// `$XDG_DATA_HOME/blixard/history`, else `~/.local/share/blixard/history`.
fn history_path() -> Option<PathBuf> {
    crate::settings::xdg_dir("XDG_DATA_HOME", ".local/share").map(|d| d.join("blixard/history"))
}

fn with_menu_key(mut keys: Keybindings) -> Keybindings {
    keys.add_binding(
        KeyModifiers::NONE,
        KeyCode::Tab,
        ReedlineEvent::UntilFound(vec![
            ReedlineEvent::Menu(MENU.to_string()),
            ReedlineEvent::MenuNext,
        ]),
    );
    keys
}

fn edit_mode(mode: Mode) -> Box<dyn EditMode> {
    match mode {
        Mode::Emacs => Box::new(Emacs::new(with_menu_key(default_emacs_keybindings()))),
        Mode::Vi => Box::new(Vi::new(
            with_menu_key(default_vi_insert_keybindings()),
            default_vi_normal_keybindings(),
            default_vi_visual_keybindings(),
        )),
    }
}

fn editor(root: &clap::Command, live: &live::Shared, mode: Mode) -> anyhow::Result<Reedline> {
    let menu = IdeMenu::default()
        .with_name(MENU)
        .with_default_border()
        .with_description_mode(DescriptionMode::PreferRight);
    let mut editor = Reedline::create()
        .with_completer(Box::new(completer::Completer::new(
            root.clone(),
            live.clone(),
        )))
        .with_menu(ReedlineMenu::EngineCompleter(Box::new(menu)))
        .with_quick_completions(true)
        .with_partial_completions(true)
        .with_highlighter(Box::new(highlighter::Highlighter::new(
            root.clone(),
            live.clone(),
        )))
        .with_hinter(Box::new(
            DefaultHinter::default().with_style(nu_ansi_term::Style::new().dimmed()),
        ))
        .with_validator(Box::new(validator::Validator))
        .with_edit_mode(edit_mode(mode));
    match history_path() {
        Some(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| anyhow::anyhow!("history directory {}: {e}", dir.display()))?;
            }
            let history = FileBackedHistory::with_file(HISTORY_LINES_MAX, path.clone())
                .map_err(|e| anyhow::anyhow!("history file {}: {e}", path.display()))?;
            editor = editor.with_history(Box::new(history));
        }
        None => eprintln!("no HOME or XDG_DATA_HOME: history is kept for this session only"),
    }
    Ok(editor)
}

/// What one input asks for.
enum Line {
    Nothing,
    Exit,
    Connect(String),
    Run(Box<Cli>),
    /// Help text, or a usage error (with clap's own wording).
    Message {
        text: String,
        error: bool,
    },
}

/// Reads one input (possibly several lines) against the grammar.
fn parse_line(input: &str) -> Line {
    let (command_line, document) = validator::split_heredoc(input);
    let Some(words) = shlex::split(&command_line) else {
        return Line::Message {
            text: "unbalanced quotes".into(),
            error: true,
        };
    };
    match words.first().map(String::as_str) {
        None => return Line::Nothing,
        Some("exit" | "quit") => return Line::Exit,
        Some("connect") => {
            return match words.as_slice() {
                [_, addr] => match blixard_api::validate::address(addr) {
                    Ok(()) => Line::Connect(addr.clone()),
                    Err(e) => Line::Message {
                        text: e.to_string(),
                        error: true,
                    },
                },
                _ => Line::Message {
                    text: "usage: connect HOST:PORT".into(),
                    error: true,
                },
            }
        }
        _ => {}
    }
    let parsed = Cli::parse_words(words);
    match parsed {
        Ok(mut cli) => {
            match (&mut cli.command, document) {
                (Some(Command::Apply(args)), Some(text)) => args.document = Some(text),
                (Some(Command::Diff(args)), Some(text)) => args.document = Some(text),
                (_, Some(_)) => {
                    return Line::Message {
                        text: "only apply and diff take a here-document".into(),
                        error: true,
                    }
                }
                _ => {}
            }
            match cli.command {
                None => Line::Nothing,
                Some(_) => Line::Run(Box::new(cli)),
            }
        }
        Err(e) => {
            let error = !matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp
                    | clap::error::ErrorKind::DisplayVersion
                    | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            );
            Line::Message {
                text: e.render().ansi().to_string(),
                error,
            }
        }
    }
}

/// Runs one parsed command, until it ends or Ctrl-C.
async fn run_line(cli: Cli, live: &live::Shared) {
    let addr = cli
        .addr
        .clone()
        .unwrap_or_else(|| live::read(live).addr.clone());
    let command = cli
        .command
        .expect("parse_line runs only lines with a command");
    let run = crate::commands::on_cluster(command, &addr, cli.output);
    tokio::select! {
        result = run => {
            if let Err(error) = result {
                crate::exit::report(&error);
            }
        }
        // The terminal has echoed ^C; end its line.
        _ = tokio::signal::ctrl_c() => eprintln!(),
    }
}

pub async fn run(settings: Settings, args: ReplArgs) -> anyhow::Result<()> {
    let mut root = Cli::command();
    root.build();
    let live: live::Shared = Arc::new(RwLock::new(live::Snapshot {
        addr: settings.addr.clone(),
        ..Default::default()
    }));
    let mode = args.edit_mode.unwrap_or(settings.edit_mode);
    let mut editor = editor(&root, &live, mode)?;
    let (target, target_rx) = watch::channel(settings.addr.clone());
    let signal = editor.repaint_signal();
    let repaint: live::Repaint = Arc::new(move || signal.request_repaint());
    let follower = tokio::spawn(live::follow(live.clone(), target_rx, repaint));
    let prompt = prompt::Prompt::new(live.clone());
    println!(
        "blixard {}: Tab completes, Ctrl-R searches history, `help` lists commands, Ctrl-D leaves.",
        env!("CARGO_PKG_VERSION")
    );
    loop {
        // read_line blocks on the terminal: keep it off the runtime's
        // workers so the live view goes on updating.
        let signal = tokio::task::block_in_place(|| editor.read_line(&prompt))?;
        match signal {
            Signal::Success(input) => match parse_line(&input) {
                Line::Nothing => {}
                Line::Exit => break,
                Line::Connect(addr) => {
                    println!("connecting to {addr}");
                    let _ = target.send(addr);
                }
                Line::Message { text, error: true } => eprint!("{}", with_newline(text)),
                Line::Message { text, error: false } => print!("{}", with_newline(text)),
                Line::Run(cli) => run_line(*cli, &live).await,
            },
            Signal::CtrlC => {}
            Signal::CtrlD => break,
            // Future signals of reedline: nothing to do.
            _ => {}
        }
    }
    drop(target);
    follower.abort();
    Ok(())
}

fn with_newline(mut text: String) -> String {
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_with_the_shells_grammar() {
        assert!(matches!(parse_line("   "), Line::Nothing));
        assert!(matches!(parse_line("exit"), Line::Exit));
        assert!(
            matches!(parse_line("connect 127.0.0.1:7002"), Line::Connect(a) if a == "127.0.0.1:7002")
        );
        assert!(matches!(
            parse_line("connect nowhere"),
            Line::Message { error: true, .. }
        ));
        let Line::Run(cli) = parse_line("vm list -o json") else {
            panic!("vm list parses")
        };
        assert_eq!(cli.output, crate::cli::OutputFormat::Json);
        let Line::Message { text, error } = parse_line("vm lsit") else {
            panic!("a typo is a usage error")
        };
        assert!(
            error && text.contains("unrecognized subcommand") && text.contains("lsit"),
            "{text}"
        );
        let Line::Message { text, error } = parse_line("help vm") else {
            panic!("help prints")
        };
        assert!(!error && text.contains("Define and control VMs"), "{text}");
        let doc = "apply -f - <<EOF\napiVersion: blixard.dev/v1\nEOF";
        let Line::Run(cli) = parse_line(doc) else {
            panic!("a here-document feeds apply")
        };
        let Some(Command::Apply(args)) = cli.command else {
            panic!("apply")
        };
        assert_eq!(
            args.document.as_deref(),
            Some("apiVersion: blixard.dev/v1\n")
        );
        assert!(matches!(
            parse_line("vm list <<EOF\nx\nEOF"),
            Line::Message { error: true, .. }
        ));
    }
}
