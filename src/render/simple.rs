//! Templates that are only text and variables, rendered without the template engine.
//!
//! Subjects, display names and unsubscribe URLs are nearly always of this kind
//! (`{{ first_name | default("Hello") }}, our sale starts today`), and for them minijinja's
//! per-render set-up (a VM state, a value per lookup, a filter call by name) costs more than the
//! output: measured with `perf` on `scripts/bench-render`, the three small templates of the demo
//! campaign took about a seventh of all rendering CPU. A template qualifies only if it consists
//! of text and `{{ name }}` or `{{ name | default("text") }}` tags; anything else (statements,
//! comments, other filters or expressions, white-space control) goes through minijinja. The
//! output is byte for byte what minijinja gives; `tests` compare the two on hostile values.
//! Every template is still compiled by minijinja too, which is what `blast check` validates.

use std::fmt::Write as _;

/// A variable's value for one row, as [`super::RowContext::lookup`] resolves it.
pub(super) enum Field<'a> {
    Str(&'a str),
    Num(u64),
}

/// A template made of text and variables only.
#[derive(Debug)]
pub(super) struct Simple {
    segments: Vec<Segment>,
}

#[derive(Debug)]
enum Segment {
    Text(Box<str>),
    Var {
        name: Box<str>,
        /// `| default("...")`: written when the variable is undefined.
        default: Option<Box<str>>,
    },
}

/// Names minijinja reads as literals or special variables rather than as a lookup.
const RESERVED: &[&str] = &[
    "true", "false", "none", "True", "False", "None", "loop", "self", "super", "caller", "varargs",
    "kwargs",
];

impl Simple {
    /// `None` if `source` uses anything but text and simple variables.
    pub(super) fn parse(source: &str) -> Option<Simple> {
        // minijinja drops one final line break (keep_trailing_newline is off).
        let mut source = source.strip_suffix('\n').unwrap_or(source);
        source = source.strip_suffix('\r').unwrap_or(source);
        if source.contains("{%") || source.contains("{#") {
            return None;
        }
        let mut segments = Vec::new();
        let mut rest = source;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                segments.push(Segment::Text(rest[..open].into()));
            }
            let after = &rest[open + 2..];
            let close = after.find("}}")?;
            segments.push(parse_tag(&after[..close])?);
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            segments.push(Segment::Text(rest.into()));
        }
        Some(Simple { segments })
    }

    /// Appends the output to `out`; `html` escapes values as the html formatter does.
    pub(super) fn render<'a>(
        &self,
        html: bool,
        lookup: impl Fn(&str) -> Option<Field<'a>>,
        out: &mut String,
    ) {
        for segment in &self.segments {
            match segment {
                Segment::Text(text) => out.push_str(text),
                Segment::Var { name, default } => match (lookup(name), default) {
                    (Some(Field::Num(n)), _) => {
                        let _ = write!(out, "{n}");
                    }
                    (Some(Field::Str(s)), _) => write_value(s, html, out),
                    (None, Some(d)) => write_value(d, html, out),
                    (None, None) => {}
                },
            }
        }
    }
}

fn write_value(s: &str, html: bool, out: &mut String) {
    if html {
        let _ = super::escape_html(s, |part| {
            out.push_str(part);
            Ok(())
        });
    } else {
        out.push_str(s);
    }
}

/// The inside of `{{ ... }}`: `name` or `name | default("text")`.
fn parse_tag(tag: &str) -> Option<Segment> {
    // White-space control (`{{-`, `-}}`, `+`) changes the text around: not handled here.
    if tag.starts_with(['-', '+']) || tag.ends_with(['-', '+']) {
        return None;
    }
    let tag = tag.trim();
    let (name, filter) = match tag.split_once('|') {
        Some((n, f)) => (n.trim(), Some(f.trim())),
        None => (tag, None),
    };
    if !is_identifier(name) || RESERVED.contains(&name) {
        return None;
    }
    let default = match filter {
        None => None,
        Some(f) => {
            let args = f.strip_prefix("default")?.trim_start();
            let inner = args.strip_prefix('(')?.strip_suffix(')')?.trim();
            Some(string_literal(inner)?.into())
        }
    };
    Some(Segment::Var {
        name: name.into(),
        default,
    })
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `"text"` or `'text'` without escapes or braces.
fn string_literal(s: &str) -> Option<&str> {
    let quote = s.chars().next().filter(|c| matches!(c, '"' | '\''))?;
    let inner = s.strip_prefix(quote)?.strip_suffix(quote)?;
    (!inner.contains([quote, '\\', '{', '}', '\r', '\n'])).then_some(inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_qualifies() {
        for simple in [
            "plain text",
            "",
            "Hello {{ first_name }}",
            "{{first_name}}{{ last_name }}",
            "{{ first_name | default(\"there\") }}, hi",
            "{{ first_name|default('there') }}",
            "a }} b {",
            "https://x.test/u/{{ unsubscribe_token }}\n",
        ] {
            assert!(Simple::parse(simple).is_some(), "{simple:?}");
        }
        for other in [
            "{% if a %}x{% endif %}",
            "{# comment #}",
            "{{- a }}",
            "{{ a -}}",
            "{{ a.b }}",
            "{{ a | upper }}",
            "{{ a | default(b) }}",
            "{{ a | default(\"x\\\"y\") }}",
            "{{ \"lit\" }}",
            "{{ true }}",
            "{{ loop }}",
            "{{ a + 1 }}",
            "{{ unclosed",
        ] {
            assert!(Simple::parse(other).is_none(), "{other:?}");
        }
    }
}
