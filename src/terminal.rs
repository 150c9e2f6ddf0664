//! Untrusted text on a terminal. Relay replies, DSN diagnostics, CSV values, DNS answers and
//! bounce reports come from other people's machines; printed raw, an escape sequence in them is
//! obeyed by the operator's terminal (`ESC ] 0 ; title BEL` sets the window title, `ESC [ 2 J`
//! clears the screen, some terminals answer queries into the input). [`printable`] (or the
//! [`Printable`] wrapper, for `format!`) makes such a string inert: every control character —
//! C0 (U+0000–U+001F: ESC, BEL, CR, LF, TAB…), DEL, C1 (U+0080–U+009F, e.g. the one-character
//! CSI U+009B), the line and paragraph separators and the bidirectional formatting characters
//! (which reorder what is shown) — becomes a visible escape (`\x1b`, `\u{9b}`); all other
//! Unicode is kept. [`printable_lines`] keeps line feeds, for multi-line texts blast lays out
//! itself.
//!
//! Use it on every string from outside the operator's own files that is printed to stdout or
//! stderr as text. JSON escapes C0 controls by itself but writes C1 controls, the separators
//! and the bidirectional characters raw; [`json`] writes them as `\uXXXX` too (the same JSON
//! value, and nothing a terminal acts on).

use std::borrow::Cow;
use std::fmt;

/// Whether `c` must not reach a terminal as it is.
fn is_unsafe(c: char) -> bool {
    c.is_control() // C0, DEL and C1
        || matches!(c,
            '\u{2028}' | '\u{2029}'                   // line, paragraph separator
            | '\u{200e}' | '\u{200f}' | '\u{061c}'    // LRM, RLM, ALM
            | '\u{202a}'..='\u{202e}'                 // embeddings, overrides
            | '\u{2066}'..='\u{2069}') // isolates
}

fn escape(c: char, out: &mut String) {
    use std::fmt::Write;
    if (c as u32) < 0x80 {
        let _ = write!(out, "\\x{:02x}", c as u32);
    } else {
        let _ = write!(out, "\\u{{{:x}}}", c as u32);
    }
}

fn clean(s: &str, keep_newlines: bool) -> Cow<'_, str> {
    let bad = |c: char| is_unsafe(c) && !(keep_newlines && c == '\n');
    if !s.chars().any(bad) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if bad(c) {
            escape(c, &mut out);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `s` with every control character (line feeds too) replaced by a visible escape; borrowed
/// when there is none.
pub fn printable(s: &str) -> Cow<'_, str> {
    clean(s, false)
}

/// [`printable`], but line feeds are kept: for a multi-line text blast prints as lines.
pub fn printable_lines(s: &str) -> Cow<'_, str> {
    clean(s, true)
}

/// Displays a string through [`printable`], without allocating when it is clean.
pub struct Printable<'a>(pub &'a str);

impl fmt::Display for Printable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, so width and alignment (`{:<16}`) work as for `str`.
        f.pad(&printable(self.0))
    }
}

/// `v` as compact JSON in which every character [`printable`] would escape is written as a
/// `\uXXXX` escape (serde_json already does so for C0).
pub fn json(v: &serde_json::Value) -> String {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, EscapeAll);
    serde::Serialize::serialize(v, &mut ser).expect("a Value serialises to memory");
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

/// serde_json's compact formatter, escaping what [`is_unsafe`] finds in strings.
struct EscapeAll;

impl serde_json::ser::Formatter for EscapeAll {
    fn write_string_fragment<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices().filter(|&(_, c)| is_unsafe(c)) {
            w.write_all(&fragment.as_bytes()[start..i])?;
            // Every unsafe character is in the Basic Multilingual Plane: one \u escape.
            write!(w, "\\u{:04x}", c as u32)?;
            start = i + c.len_utf8();
        }
        w.write_all(&fragment.as_bytes()[start..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_terminal_controls() {
        assert_eq!(
            printable("a\x1b]0;title\x07b\x1b[2Jc"),
            r"a\x1b]0;title\x07b\x1b[2Jc"
        );
        assert_eq!(
            printable("\u{9b}31m\x7f\0\r\n\t"),
            r"\u{9b}31m\x7f\x00\x0d\x0a\x09"
        );
        assert_eq!(
            printable("x\u{202e}gnp.exe\u{2028}y\u{2066}"),
            r"x\u{202e}gnp.exe\u{2028}y\u{2066}"
        );
    }

    #[test]
    fn keeps_printable_unicode_and_borrows_clean_text() {
        for s in [
            "",
            "550 5.1.1 user unknown",
            "Zoë 日本語 ✓ émoji 🎉",
            r"back\slash",
        ] {
            assert!(matches!(printable(s), Cow::Borrowed(b) if b == s), "{s:?}");
        }
    }

    #[test]
    fn lines_keep_line_feeds_only() {
        assert_eq!(printable_lines("a\nb\x1b[2J\r\n"), "a\nb\\x1b[2J\\x0d\n");
    }

    #[test]
    fn the_wrapper_pads_like_str() {
        assert_eq!(format!("[{:<6}]", Printable("a\x07")), r"[a\x07 ]");
        assert_eq!(format!("[{:>4}]", Printable("ab")), "[  ab]");
    }

    #[test]
    fn json_escapes_c1_and_stays_the_same_value() {
        let v = serde_json::json!({"t": "a\x1b[2J\u{9b}31m\u{202e}z é", "n": 1});
        let text = json(&v);
        assert!(
            text.contains(r#""t":"a\u001b[2J\u009b31m\u202ez é""#),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<serde_json::Value>(&text).unwrap(), v);
    }

    /// Nothing a terminal acts on survives, whatever the input.
    #[test]
    fn no_control_survives_any_char() {
        let all: String = (0u32..0x3000).filter_map(char::from_u32).collect();
        for c in printable(&all).chars() {
            assert!(!is_unsafe(c), "{c:?} survived");
        }
    }
}
