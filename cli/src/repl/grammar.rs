//! Reading a REPL line against the clap grammar: which words are
//! commands, flags and values, and what the next word may be. The
//! completer and the highlighter both stand on this, so they agree with
//! each other and with the parser that runs the line.
//!
//! Invariant: nothing here knows a command by hand except the REPL's own
//! built-ins (`connect`, `help`, `exit`); every other name comes from
//! the `clap::Command` tree.

use clap::{Arg, Command};

/// REPL-only words, with what they do.
pub const BUILTINS: &[(&str, &str)] = &[
    ("connect", "connect ADDR: send commands to another node"),
    ("help", "help [COMMAND...]: the grammar's help"),
    ("exit", "leave the REPL (also Ctrl-D)"),
    ("quit", "leave the REPL"),
];

/// A word of the line and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word {
    pub start: usize,
    pub end: usize,
    /// Without quotes.
    pub text: String,
    pub quoted: bool,
}

/// Splits `line` into words at unquoted whitespace (quotes group, and
/// are dropped from `text`); an open quote runs to the end.
pub fn words(line: &str) -> Vec<Word> {
    let mut words = Vec::new();
    let mut current: Option<Word> = None;
    let mut quote: Option<char> = None;
    for (i, c) in line.char_indices() {
        if quote.is_none() && c.is_whitespace() {
            words.extend(current.take());
            continue;
        }
        let word = current.get_or_insert(Word {
            start: i,
            end: i,
            text: String::new(),
            quoted: false,
        });
        word.end = i + c.len_utf8();
        match (quote, c) {
            (None, '"' | '\'') => {
                quote = Some(c);
                word.quoted = true;
            }
            (Some(open), c) if c == open => quote = None,
            _ => word.text.push(c),
        }
    }
    words.extend(current);
    words
}

/// What kind of value a positional or flag takes, for completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Values {
    VmName,
    GroupName,
    NodeId,
    Label,
    Address,
    /// A fixed set (clap's possible values), with help.
    Choices(Vec<(String, Option<String>)>),
    /// Anything (a new name, a number, a path).
    Free,
}

/// What a word is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Builtin,
    Command,
    Flag,
    /// A flag or subcommand the grammar does not have.
    Unknown,
    Value(Values),
}

/// What the next word may be.
#[derive(Debug, Clone)]
pub enum Expect<'a> {
    /// A subcommand of, or a flag of, `command`.
    Word(&'a Command),
    /// A value for a flag or positional.
    Value(Values),
    /// After `help`: command names, under `command`.
    Help(&'a Command),
    /// After `watch`: its flags, or a command to watch.
    Watch {
        watch: &'a Command,
        root: &'a Command,
    },
    /// Nothing the grammar knows of (after an unknown word).
    Nothing,
}

fn choices(arg: &Arg) -> Option<Values> {
    let values = arg.get_possible_values();
    (!values.is_empty()).then(|| {
        Values::Choices(
            values
                .iter()
                .filter(|v| !v.is_hide_set())
                .map(|v| {
                    (
                        v.get_name().to_string(),
                        v.get_help().map(|h| h.to_string()),
                    )
                })
                .collect(),
        )
    })
}

/// The values `arg` takes under the subcommand `path` (e.g. `vm status`).
fn values_for(path: &[String], arg: &Arg) -> Values {
    if let Some(choices) = choices(arg) {
        return choices;
    }
    let id = arg.get_id().as_str();
    let first = path.first().map(String::as_str);
    let last = path.last().map(String::as_str);
    match (first, last, id) {
        (Some("vm"), Some("scale"), "name") => Values::GroupName,
        (Some("vm"), Some("create"), "name") => Values::Free,
        (Some("vm"), _, "name") => Values::VmName,
        (_, _, "node_id" | "node") => Values::NodeId,
        (_, _, "constraints" | "preferences") => Values::Label,
        (_, _, "addr") => Values::Address,
        _ => Values::Free,
    }
}

fn takes_value(arg: &Arg) -> bool {
    arg.get_action().takes_values()
}

/// Reads `words` (the finished words of a line) and says what each is and
/// what may come next. `root` must have been built (`Command::build`) so
/// global flags reach every subcommand.
pub fn read<'a>(root: &'a Command, words: &[&str]) -> (Vec<Role>, Expect<'a>) {
    let mut roles = Vec::with_capacity(words.len());
    let mut command = root;
    let mut path: Vec<String> = Vec::new();
    let mut pending: Option<&Arg> = None;
    let mut positionals = 0;
    let mut help = false;
    let mut lost = false;
    for (i, word) in words.iter().enumerate() {
        if lost {
            roles.push(Role::Unknown);
            continue;
        }
        if let Some(arg) = pending.take() {
            roles.push(Role::Value(values_for(&path, arg)));
            continue;
        }
        if i == 0 && BUILTINS.iter().any(|(name, _)| name == word) {
            roles.push(Role::Builtin);
            help = *word == "help";
            if *word == "connect" {
                pending = root.get_arguments().find(|a| a.get_id() == "addr");
            }
            continue;
        }
        if let Some(flag) = word.strip_prefix("--") {
            let (name, inline) = match flag.split_once('=') {
                Some((name, _)) => (name, true),
                None => (flag, false),
            };
            match command.get_arguments().find(|a| a.get_long() == Some(name)) {
                Some(arg) => {
                    roles.push(Role::Flag);
                    if takes_value(arg) && !inline {
                        pending = Some(arg);
                    }
                }
                None => roles.push(Role::Unknown),
            }
            continue;
        }
        if let Some(short) = word.strip_prefix('-').filter(|s| s.chars().count() == 1) {
            let short = short.chars().next().expect("one character");
            match command
                .get_arguments()
                .find(|a| a.get_short() == Some(short))
            {
                Some(arg) => {
                    roles.push(Role::Flag);
                    if takes_value(arg) {
                        pending = Some(arg);
                    }
                }
                None => roles.push(Role::Unknown),
            }
            continue;
        }
        if path == ["watch"] {
            // `watch [--interval D] COMMAND...`: the command is read as a
            // line of its own.
            path.clear();
            command = root;
        }
        if command.has_subcommands() {
            match command.find_subcommand(word) {
                Some(sub) => {
                    roles.push(Role::Command);
                    path.push(sub.get_name().to_string());
                    command = sub;
                    positionals = 0;
                }
                None => {
                    roles.push(Role::Unknown);
                    lost = !help;
                }
            }
            continue;
        }
        let arg = command
            .get_arguments()
            .filter(|a| a.is_positional())
            .nth(positionals);
        positionals += 1;
        match arg {
            Some(arg) => roles.push(Role::Value(values_for(&path, arg))),
            None => roles.push(Role::Unknown),
        }
    }
    let expect = if lost {
        Expect::Nothing
    } else if let Some(arg) = pending {
        Expect::Value(values_for(&path, arg))
    } else if path == ["watch"] {
        Expect::Watch {
            watch: command,
            root,
        }
    } else if help {
        Expect::Help(command)
    } else if !command.has_subcommands() {
        match command
            .get_arguments()
            .filter(|a| a.is_positional())
            .nth(positionals)
        {
            Some(arg) => Expect::Value(values_for(&path, arg)),
            None => Expect::Word(command),
        }
    } else {
        Expect::Word(command)
    };
    (roles, expect)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn root() -> Command {
        let mut root = crate::cli::Cli::command();
        root.build();
        root
    }

    #[test]
    fn words_keep_their_places_and_quotes_group() {
        let found = words("vm  create 'my vm' --cmdline \"a b\"");
        let texts: Vec<_> = found.iter().map(|w| w.text.as_str()).collect();
        assert_eq!(texts, ["vm", "create", "my vm", "--cmdline", "a b"]);
        assert_eq!((found[2].start, found[2].end), (11, 18));
        assert!(found[2].quoted && !found[0].quoted);
    }

    #[test]
    fn the_grammar_says_what_each_word_is_and_what_comes_next() {
        let root = root();
        let (roles, expect) = read(&root, &["vm", "status"]);
        assert_eq!(roles, [Role::Command, Role::Command]);
        assert!(matches!(expect, Expect::Value(Values::VmName)));

        let (roles, expect) = read(&root, &["vm", "scale"]);
        assert_eq!(roles.len(), 2);
        assert!(matches!(expect, Expect::Value(Values::GroupName)));

        let (roles, expect) = read(&root, &["vm", "list", "--output"]);
        assert_eq!(roles[2], Role::Flag);
        let Expect::Value(Values::Choices(choices)) = expect else {
            panic!("--output takes one of a set")
        };
        let names: Vec<_> = choices.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["table", "json", "yaml"]);

        let (roles, _) = read(&root, &["vm", "frobnicate", "x"]);
        assert_eq!(roles, [Role::Command, Role::Unknown, Role::Unknown]);
        let (roles, _) = read(&root, &["vm", "list", "--bogus"]);
        assert_eq!(roles[2], Role::Unknown);

        let (roles, expect) = read(&root, &["node", "drain"]);
        assert_eq!(roles.len(), 2);
        assert!(matches!(expect, Expect::Value(Values::NodeId)));

        let (roles, expect) = read(&root, &["help", "vm"]);
        assert_eq!(roles, [Role::Builtin, Role::Command]);
        assert!(matches!(expect, Expect::Help(c) if c.get_name() == "vm"));

        let (_, expect) = read(&root, &["connect"]);
        assert!(matches!(expect, Expect::Value(Values::Address)));

        let (roles, expect) = read(&root, &["watch", "--interval", "2s", "vm", "status"]);
        assert_eq!(roles.len(), 5);
        assert_eq!(roles[1], Role::Flag);
        assert_eq!(roles[3..], [Role::Command, Role::Command]);
        assert!(matches!(expect, Expect::Value(Values::VmName)));
        let (_, expect) = read(&root, &["watch"]);
        assert!(matches!(expect, Expect::Watch { .. }));
    }
}
