//! A rendered frame as SVG: what `screenshots/` is made from (ratatui's
//! `TestBackend` buffer in, one `<rect>` per run of background and one
//! `<text>` per run of styled text out).
//!
//! Invariants: every cell lands on its own grid position (each character
//! is placed by its own x, so a font's spacing cannot drift a column);
//! text is XML-escaped; the output depends only on the buffer and the
//! palette, so the same frame always gives the same image.

use std::fmt::Write;

use ratatui::buffer::Buffer;
use ratatui::style::{Color, Modifier};

/// How the 16 basic colours and the terminal's own colours look.
#[derive(Debug, Clone, Copy)]
pub struct Palette {
    pub foreground: &'static str,
    pub background: &'static str,
    /// Black, red, green, yellow, blue, magenta, cyan, gray, then the
    /// bright eight, in ANSI order.
    pub ansi: [&'static str; 16],
}

/// The Tango palette on a dark background.
pub const TANGO_DARK: Palette = Palette {
    foreground: "#d3d7cf",
    background: "#1e1e1e",
    ansi: [
        "#2e3436", "#cc0000", "#4e9a06", "#c4a000", "#3465a4", "#75507b", "#06989a", "#d3d7cf",
        "#555753", "#ef2929", "#8ae234", "#fce94f", "#729fcf", "#ad7fa8", "#34e2e2", "#eeeeec",
    ],
};

/// The grid and the font it is drawn with.
#[derive(Debug, Clone, Copy)]
pub struct Font {
    pub family: &'static str,
    pub size_px: f32,
    /// A cell's width, as a share of the font size (the font's advance).
    pub advance: f32,
    /// A line's height and the baseline in it, as shares of the size
    /// (box-drawing glyphs meet when the line is ascent plus descent).
    pub line: f32,
    pub ascent: f32,
}

/// DejaVu Sans Mono's metrics (advance 1233, ascent 1901, descent 483 of
/// 2048 units).
pub const DEJAVU_SANS_MONO: Font = Font {
    family: "DejaVu Sans Mono",
    size_px: 16.0,
    advance: 1233.0 / 2048.0,
    line: (1901.0 + 483.0) / 2048.0,
    ascent: 1901.0 / 2048.0,
};

impl Font {
    pub fn cell_width(&self) -> f32 {
        self.size_px * self.advance
    }

    pub fn cell_height(&self) -> f32 {
        self.size_px * self.line
    }
}

fn colour(palette: &Palette, color: Color, default: &'static str) -> String {
    let ansi = |i: usize| palette.ansi[i].to_string();
    match color {
        Color::Reset => default.to_string(),
        Color::Black => ansi(0),
        Color::Red => ansi(1),
        Color::Green => ansi(2),
        Color::Yellow => ansi(3),
        Color::Blue => ansi(4),
        Color::Magenta => ansi(5),
        Color::Cyan => ansi(6),
        Color::Gray => ansi(7),
        Color::DarkGray => ansi(8),
        Color::LightRed => ansi(9),
        Color::LightGreen => ansi(10),
        Color::LightYellow => ansi(11),
        Color::LightBlue => ansi(12),
        Color::LightMagenta => ansi(13),
        Color::LightCyan => ansi(14),
        Color::White => ansi(15),
        Color::Indexed(i) if i < 16 => ansi(usize::from(i)),
        Color::Indexed(_) => default.to_string(),
        Color::Rgb(r, g, b) => format!("#{r:02x}{g:02x}{b:02x}"),
    }
}

/// One cell's look, with reversal already applied.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Look {
    fg: String,
    bg: String,
    bold: bool,
    dim: bool,
    italic: bool,
    underlined: bool,
}

fn escape(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
}

/// The whole buffer as an SVG document.
pub fn render(buffer: &Buffer, palette: &Palette, font: &Font) -> String {
    let (cell_w, cell_h) = (font.cell_width(), font.cell_height());
    let area = buffer.area;
    let (width, height) = (
        f32::from(area.width) * cell_w,
        f32::from(area.height) * cell_h,
    );
    let mut out = String::new();
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" \
         viewBox=\"0 0 {width:.2} {height:.2}\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"{}\"/>\n\
         <g font-family=\"{}\" font-size=\"{}\" xml:space=\"preserve\">\n",
        palette.background, font.family, font.size_px
    );
    for y in 0..area.height {
        let mut x = 0;
        while x < area.width {
            let look = look(buffer, area.x + x, area.y + y, palette);
            let start = x;
            let mut symbols = Vec::new();
            while x < area.width && look == self::look(buffer, area.x + x, area.y + y, palette) {
                let cell = &buffer[(area.x + x, area.y + y)];
                symbols.push((x, cell.symbol()));
                x += 1;
            }
            let top = f32::from(y) * cell_h;
            if look.bg != palette.background {
                let _ = writeln!(
                    out,
                    "<rect x=\"{:.2}\" y=\"{top:.2}\" width=\"{:.2}\" height=\"{cell_h:.2}\" fill=\"{}\"/>",
                    f32::from(start) * cell_w,
                    f32::from(x - start) * cell_w,
                    look.bg
                );
            }
            let shown: Vec<&(u16, &str)> = symbols
                .iter()
                .filter(|(_, s)| !s.trim().is_empty())
                .collect();
            if shown.is_empty() {
                continue;
            }
            let xs: Vec<String> = shown
                .iter()
                .map(|(column, _)| format!("{:.2}", f32::from(*column) * cell_w))
                .collect();
            let _ = write!(
                out,
                "<text x=\"{}\" y=\"{:.2}\" fill=\"{}\"",
                xs.join(" "),
                top + font.size_px * font.ascent,
                look.fg
            );
            if look.bold {
                out.push_str(" font-weight=\"bold\"");
            }
            if look.italic {
                out.push_str(" font-style=\"italic\"");
            }
            if look.dim {
                out.push_str(" opacity=\"0.6\"");
            }
            if look.underlined {
                out.push_str(" text-decoration=\"underline\"");
            }
            out.push('>');
            for (_, symbol) in shown {
                // One character per x: a symbol of several characters
                // (a combining mark) keeps only its first position.
                escape(symbol, &mut out);
            }
            out.push_str("</text>\n");
        }
    }
    out.push_str("</g>\n</svg>\n");
    out
}

fn look(buffer: &Buffer, x: u16, y: u16, palette: &Palette) -> Look {
    let cell = &buffer[(x, y)];
    let mut fg = colour(palette, cell.fg, palette.foreground);
    let mut bg = colour(palette, cell.bg, palette.background);
    if cell.modifier.contains(Modifier::REVERSED) {
        std::mem::swap(&mut fg, &mut bg);
    }
    Look {
        fg,
        bg,
        bold: cell.modifier.contains(Modifier::BOLD),
        dim: cell.modifier.contains(Modifier::DIM),
        italic: cell.modifier.contains(Modifier::ITALIC),
        underlined: cell.modifier.contains(Modifier::UNDERLINED),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::layout::Rect;
    use ratatui::style::Style;

    #[test]
    fn cells_become_positioned_escaped_text_and_backgrounds() {
        let mut buffer = Buffer::empty(Rect::new(0, 0, 10, 2));
        buffer.set_string(0, 0, "a<b", Style::default().fg(Color::Red));
        buffer.set_string(
            5,
            1,
            "ok",
            Style::default()
                .fg(Color::Green)
                .add_modifier(Modifier::REVERSED | Modifier::BOLD),
        );
        let svg = render(&buffer, &TANGO_DARK, &DEJAVU_SANS_MONO);
        let cell_w = DEJAVU_SANS_MONO.cell_width();
        let red = TANGO_DARK.ansi[1];
        let green = TANGO_DARK.ansi[2];
        let first = format!("x=\"0.00 {:.2} {:.2}\"", cell_w, 2.0 * cell_w);
        assert!(svg.contains(&first), "{svg}");
        assert!(
            svg.contains(&format!("fill=\"{red}\">a&lt;b</text>")),
            "{svg}"
        );
        // Reversed: the green becomes the background, the text takes the
        // default background colour.
        let rect = format!("width=\"{:.2}\"", 2.0 * cell_w);
        assert!(
            svg.contains(&rect) && svg.contains(&format!("fill=\"{green}\"/>")),
            "{svg}"
        );
        let bold = format!(
            "fill=\"{}\" font-weight=\"bold\">ok<",
            TANGO_DARK.background
        );
        assert!(svg.contains(&bold), "{svg}");
        // Blank cells draw nothing.
        assert_eq!(svg.matches("<text").count(), 2, "{svg}");
    }
}
