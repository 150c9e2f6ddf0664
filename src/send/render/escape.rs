//! How values are written into templates: the template environment, HTML escaping for `.html`
//! templates and percent-encoding for the unsubscribe targets, the same for minijinja (the
//! [`formatter`]) and for engine-free templates ([`write_value`]); the check every rendered
//! unsubscribe target passes ([`check_uri`]); and the bounded writer a render writes into
//! ([`Capped`]).
//!
//! Unsubscribe targets (`[unsubscribe] url` and `mailto`) go into `List-Unsubscribe` as
//! `<URI>, <URI>`. A CSV value written raw there could close the bracket and add a URI of its
//! own (`Eve>, <mailto:x@evil.test`) or put 8-bit bytes in a header, so every value printed in
//! those templates is percent-encoded (RFC 3986 `pct-encoded`, which RFC 6068 uses for mailto
//! too): all but the unreserved characters `A-Z a-z 0-9 - . _ ~`, as UTF-8 octets. The text of
//! the template itself is the operator's and is left as written; the rendered URI as a whole
//! must still pass [`check_uri`].

use std::borrow::Cow;

use minijinja::value::Value;
use minijinja::{AutoEscape, Environment};

/// Template names (see `campaign`) whose values are percent-encoded.
pub(super) const URI_TEMPLATES: [&str; 2] = ["unsubscribe_url.txt", "unsubscribe_mailto.txt"];

/// The custom auto-escape mode of [`URI_TEMPLATES`].
const URI: &str = "uri";

/// How a template writes values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Escape {
    None,
    /// `& < > " '` as entities (`.html` templates).
    Html,
    /// Percent-encoded ([`URI_TEMPLATES`]).
    Uri,
}

impl Escape {
    /// The escaping of the template named `name`.
    pub(super) fn of(name: &str) -> Escape {
        if name.ends_with(".html") {
            Escape::Html
        } else if URI_TEMPLATES.iter().any(|t| name.ends_with(t)) {
            Escape::Uri
        } else {
            Escape::None
        }
    }
}

/// The template environment: HTML auto-escaping for `.html` templates, percent-encoding for
/// the unsubscribe targets, with [`formatter`]; every render limited to `fuel` (minijinja's
/// budget of instructions and bytes created, so a runaway loop or a huge string fails the
/// render instead of taking the machine).
pub(super) fn environment(fuel: u64) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_auto_escape_callback(|name| match Escape::of(name) {
        Escape::Html => AutoEscape::Html,
        Escape::Uri => AutoEscape::Custom(URI.into()),
        Escape::None => AutoEscape::None,
    });
    env.set_formatter(formatter);
    env.set_fuel(Some(fuel));
    env
}

/// The value formatter. HTML auto-escaping leaves `/` alone: minijinja's default writes
/// `https:&#x2f;&#x2f;…`, which is valid but makes every link in a mail look obfuscated to spam
/// filters; `& < > " '` are what matters in element content and quoted attributes. In the
/// unsubscribe targets every value is percent-encoded (`|safe` opts out, and the URI is still
/// checked).
fn formatter(
    out: &mut minijinja::Output,
    state: &mut minijinja::State,
    value: &Value,
) -> Result<(), minijinja::Error> {
    match (state.auto_escape(), value.as_str()) {
        // What `escape_formatter` writes for a string without escaping, minus `fmt::write`.
        (AutoEscape::None, Some(s)) => Ok(out.write_str(s)?),
        (AutoEscape::Html, Some(s)) if !value.is_safe() => {
            Ok(escape_html(s, |part| out.write_str(part))?)
        }
        (AutoEscape::Custom(name), _) if name == URI && !value.is_safe() => {
            if value.is_undefined() {
                return Ok(());
            }
            let text: Cow<'_, str> = match value.as_str() {
                Some(s) => s.into(),
                None => value.to_string().into(),
            };
            Ok(percent_encode(&text, |part| out.write_str(part))?)
        }
        (AutoEscape::Custom(name), _) if name == URI => Ok(out.write_str(&value.to_string())?),
        _ => minijinja::escape_formatter(out, state, value),
    }
}

/// Writes `s` as `escape` says: [`super::simple`] templates' equivalent of [`formatter`].
pub(super) fn write_value(s: &str, escape: Escape, out: &mut String) {
    let push = |part: &str| {
        out.push_str(part);
        Ok(())
    };
    let _ = match escape {
        Escape::None => {
            out.push_str(s);
            Ok(())
        }
        Escape::Html => escape_html(s, push),
        Escape::Uri => percent_encode(s, push),
    };
}

/// Writes `s` with `& < > " '` escaped, in pieces.
pub(super) fn escape_html(
    s: &str,
    mut write: impl FnMut(&str) -> std::fmt::Result,
) -> std::fmt::Result {
    let mut last = 0;
    for (i, b) in s.bytes().enumerate() {
        let rep = match b {
            b'&' => "&amp;",
            b'<' => "&lt;",
            b'>' => "&gt;",
            b'"' => "&quot;",
            b'\'' => "&#39;",
            _ => continue,
        };
        write(&s[last..i])?;
        write(rep)?;
        last = i + 1;
    }
    write(&s[last..])
}

/// Writes `s` with every byte but the unreserved characters (`A-Z a-z 0-9 - . _ ~`, RFC 3986
/// section 2.3) as `%XX`, in pieces.
fn percent_encode(s: &str, mut write: impl FnMut(&str) -> std::fmt::Result) -> std::fmt::Result {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    // The runs written as they are hold unreserved ASCII only, so they are `str`s.
    fn ascii(b: &[u8]) -> &str {
        std::str::from_utf8(b).expect("unreserved ASCII")
    }
    let bytes = s.as_bytes();
    let mut last = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            continue;
        }
        write(ascii(&bytes[last..i]))?;
        write(ascii(&[
            b'%',
            HEX[usize::from(b >> 4)],
            HEX[usize::from(b & 15)],
        ]))?;
        last = i + 1;
    }
    write(ascii(&bytes[last..]))
}

/// Whether a rendered unsubscribe target is one URI that `List-Unsubscribe` can carry between
/// angle brackets: not empty, and only characters RFC 3986 allows in a URI (unreserved,
/// reserved and `%`) except the comma, which RFC 2369 reserves to separate URIs. So no `<`,
/// `>`, white space, control or non-ASCII character. The error says what is wrong.
pub(super) fn check_uri(uri: &str) -> Result<(), String> {
    let allowed = |c: char| {
        c.is_ascii_alphanumeric() || "-._~:/?#[]@!$&'()*+;=%".contains(c) // not ','
    };
    let shown = super::elide(uri, 200);
    if uri.is_empty() {
        return Err("the unsubscribe target is empty".to_string());
    }
    match uri.chars().find(|&c| !allowed(c)) {
        None => Ok(()),
        Some(c) => Err(format!(
            "the unsubscribe target {shown:?} contains {}, which List-Unsubscribe cannot carry: use one URI of printable ASCII without <, >, commas or white space (values are percent-encoded; the template's own text is not)",
            match c {
                ' ' => "a space".to_string(),
                ',' => "a comma".to_string(),
                c if c.is_ascii_graphic() => format!("{c:?}"),
                c => format!("U+{:04X}", u32::from(c)),
            }
        )),
    }
}

/// A render's output, refused past `limit` bytes: the writer a minijinja render writes into.
pub(super) struct Capped {
    pub(super) bytes: Vec<u8>,
    limit: usize,
    /// A write was refused: the template wanted to write more than `limit` bytes.
    pub(super) over: bool,
}

impl Capped {
    pub(super) fn new(capacity: usize, limit: usize) -> Capped {
        Capped {
            bytes: Vec::with_capacity(capacity.min(limit)),
            limit,
            over: false,
        }
    }
}

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > self.limit {
            self.over = true;
            return Err(std::io::Error::other(
                "over the size limit of a rendered part",
            ));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encoding() {
        let mut out = String::new();
        write_value("Eve>, <mailto:x@evil.test", Escape::Uri, &mut out);
        assert_eq!(out, "Eve%3E%2C%20%3Cmailto%3Ax%40evil.test");
        out.clear();
        write_value("Zoë 100%~a-b_c.d", Escape::Uri, &mut out);
        assert_eq!(out, "Zo%C3%AB%20100%25~a-b_c.d");
    }

    #[test]
    fn uri_check() {
        for ok in [
            "https://x.test/u/1-abc?e=a%40b.test&x=(y)",
            "mailto:unsub+1-abc@x.test?subject=stop",
        ] {
            assert_eq!(check_uri(ok), Ok(()), "{ok}");
        }
        for (bad, what) in [
            ("https://x.test/a,b", "a comma"),
            ("https://x.test/a b", "a space"),
            ("https://x.test/a>", "'>'"),
            ("https://x.test/<", "'<'"),
            ("https://x.test/Zoë", "U+00EB"),
            ("https://x.test/\t", "U+0009"),
            ("", "empty"),
        ] {
            let e = check_uri(bad).unwrap_err();
            assert!(e.contains(what), "{bad:?}: {e}");
        }
    }
}
