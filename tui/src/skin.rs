//! The built-in skins: colours by meaning (fine, busy, failing, quiet,
//! accent), only from the 16 basic colours so they read the same in any
//! terminal.

use ratatui::style::{Color, Style};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Skin {
    pub name: &'static str,
    /// The whole screen's text and background.
    pub base: Style,
    pub ok: Color,
    pub busy: Color,
    pub bad: Color,
    pub muted: Color,
    pub accent: Color,
    /// Search matches.
    pub mark: Style,
}

/// For dark terminals: the terminal's own colours as the base.
pub const DARK: Skin = Skin {
    name: "dark",
    base: Style::new(),
    ok: Color::Green,
    busy: Color::Yellow,
    bad: Color::Red,
    muted: Color::DarkGray,
    accent: Color::Cyan,
    mark: Style::new().fg(Color::Black).bg(Color::Yellow),
};

/// For light terminals: black on white; yellow and cyan (unreadable on
/// white) give way to blue and magenta.
pub const LIGHT: Skin = Skin {
    name: "light",
    base: Style::new().fg(Color::Black).bg(Color::White),
    ok: Color::Green,
    busy: Color::Blue,
    bad: Color::Red,
    muted: Color::DarkGray,
    accent: Color::Magenta,
    mark: Style::new().fg(Color::White).bg(Color::Magenta),
};

pub const SKINS: [Skin; 2] = [DARK, LIGHT];

impl Skin {
    pub fn named(name: &str) -> Result<Skin, UnknownSkin> {
        SKINS
            .into_iter()
            .find(|s| s.name == name)
            .ok_or_else(|| UnknownSkin {
                name: blixard_api::validate::echo(name),
            })
    }
}

/// A skin name that is not built in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no skin {name:?}; built in: {}", SKINS.map(|s| s.name).join(", "))]
pub struct UnknownSkin {
    /// At most a short prefix of the name asked for.
    pub name: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skins_are_found_by_name_and_unknown_names_listed() {
        assert_eq!(Skin::named("light"), Ok(LIGHT));
        assert!(Skin::named("neon")
            .unwrap_err()
            .to_string()
            .contains("dark, light"));
    }
}
