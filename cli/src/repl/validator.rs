//! When Enter ends the input and when it only starts a new line: inside
//! quotes, after a trailing `\`, and inside a here-document
//! (`apply -f - <<EOF` ... `EOF`), which is how a platform document is
//! typed in.

use reedline::ValidationResult;

pub struct Validator;

/// The here-document's terminator, if the first line opens one.
pub fn heredoc_tag(first_line: &str) -> Option<&str> {
    let (_, tag) = first_line.split_once("<<")?;
    let tag = tag.trim().trim_matches(['\'', '"']);
    (!tag.is_empty() && !tag.contains(char::is_whitespace)).then_some(tag)
}

/// Splits input into its command line and here-document body; `None`
/// for the body without a here-document.
pub fn split_heredoc(input: &str) -> (String, Option<String>) {
    let (first, rest) = input.split_once('\n').unwrap_or((input, ""));
    let Some(tag) = heredoc_tag(first) else {
        return (input.replace("\\\n", " "), None);
    };
    let command = first[..first.find("<<").expect("heredoc_tag found <<")].to_string();
    let body: Vec<&str> = rest.lines().take_while(|line| line.trim() != tag).collect();
    (command, Some(body.join("\n") + "\n"))
}

fn open_quote(text: &str) -> bool {
    let mut quote = None;
    for c in text.chars() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(open), c) if c == open => quote = None,
            _ => {}
        }
    }
    quote.is_some()
}

impl reedline::Validator for Validator {
    fn validate(&self, line: &str) -> ValidationResult {
        let first = line.lines().next().unwrap_or("");
        if let Some(tag) = heredoc_tag(first) {
            let closed = line.lines().skip(1).any(|l| l.trim() == tag);
            return if closed {
                ValidationResult::Complete
            } else {
                ValidationResult::Incomplete
            };
        }
        if line.ends_with('\\') || open_quote(line) {
            ValidationResult::Incomplete
        } else {
            ValidationResult::Complete
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reedline::Validator as _;

    #[test]
    fn heredocs_quotes_and_backslashes_continue_the_input() {
        let open = "apply -f - <<EOF\napiVersion: blixard.dev/v1";
        assert!(matches!(
            Validator.validate(open),
            ValidationResult::Incomplete
        ));
        let closed = format!("{open}\nkind: Platform\nEOF");
        assert!(matches!(
            Validator.validate(&closed),
            ValidationResult::Complete
        ));
        let (command, body) = split_heredoc(&closed);
        assert_eq!(command.trim(), "apply -f -");
        assert_eq!(
            body.as_deref(),
            Some("apiVersion: blixard.dev/v1\nkind: Platform\n")
        );
        assert!(matches!(
            Validator.validate("vm create 'a"),
            ValidationResult::Incomplete
        ));
        assert!(matches!(
            Validator.validate("vm list \\"),
            ValidationResult::Incomplete
        ));
        assert_eq!(split_heredoc("vm list \\\n-o json").0, "vm list  -o json");
        assert!(matches!(
            Validator.validate("vm list"),
            ValidationResult::Complete
        ));
    }
}
