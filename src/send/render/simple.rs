//! Templates that are only text, variables and simple conditionals, rendered without the
//! template engine.
//!
//! Subjects, display names and unsubscribe URLs are nearly always of this kind
//! (`{{ first_name | default("Hello") }}, our sale starts today`), and so are most bodies
//! (text, variables, `{% if city %}…{% endif %}`, `{% if plan == "pro" %}…{% else %}…`). For
//! them minijinja's per-render set-up (a VM state, a value per lookup, a filter call by name)
//! costs more than the output: measured with `perf` on `scripts/bench-render`, the three small
//! templates of the demo campaign took about a seventh of all rendering CPU, and the two bodies
//! about as much again. A template qualifies only if it consists of text, `{{ name }}` or
//! `{{ name | default("text") }}` tags, and `{% if %}` / `{% elif %}` / `{% else %}` /
//! `{% endif %}` blocks whose conditions are `name`, `not name`, `name == "text"` or
//! `name != "text"`, with `-` white-space control on block tags; anything else (other
//! statements, comments, other filters or expressions) goes through minijinja. The output is
//! byte for byte what minijinja gives; `tests` compare the two on hostile values. Every template
//! is still compiled by minijinja too, which is what `blast check` validates.

use std::fmt::Write as _;

use super::escape::{Escape, write_value};

/// The output grew past the limit of a rendered part.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct TooLarge;

/// A variable's value for one row, as [`super::RowContext::lookup`] resolves it.
pub(super) enum Field<'a> {
    Str(&'a str),
    Num(u64),
}

/// A template made of text, variables and conditionals only.
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
    /// `{% if %}` … `{% elif %}` … `{% else %}` … `{% endif %}`: the first branch whose
    /// condition holds, else `otherwise`.
    If {
        branches: Vec<(Cond, Vec<Segment>)>,
        otherwise: Vec<Segment>,
    },
}

#[derive(Debug)]
struct Cond {
    name: Box<str>,
    test: Test,
}

#[derive(Debug)]
enum Test {
    Truthy,
    Falsy,
    Eq(Box<str>),
    Ne(Box<str>),
}

/// A piece of the source: text, a `{{ }}` tag, or a `{% %}` statement.
enum Token<'s> {
    Text(&'s str),
    Var(&'s str),
    Stmt(&'s str),
}

/// Names minijinja reads as literals or special variables rather than as a lookup.
const RESERVED: &[&str] = &[
    "true", "false", "none", "True", "False", "None", "loop", "self", "super", "caller", "varargs",
    "kwargs", "not", "and", "or", "in", "is", "if", "else",
];

impl Simple {
    /// `None` if `source` uses anything but text, simple variables and simple conditionals.
    pub(super) fn parse(source: &str) -> Option<Simple> {
        // minijinja drops one final line break (keep_trailing_newline is off).
        let mut source = source.strip_suffix('\n').unwrap_or(source);
        source = source.strip_suffix('\r').unwrap_or(source);
        let mut tokens = tokenize(source)?.into_iter();
        let (segments, end) = parse_block(&mut tokens)?;
        end.is_none().then_some(Simple { segments })
    }

    /// Appends the output to `out`, values escaped as the template's formatter does; fails
    /// once `out` holds more than `limit` bytes (checked after each piece, and a piece is at
    /// most a text of the template or an escaped value).
    pub(super) fn render<'a>(
        &self,
        escape: Escape,
        lookup: impl Fn(&str) -> Option<Field<'a>>,
        out: &mut String,
        limit: usize,
    ) -> Result<(), TooLarge> {
        render_segments(&self.segments, escape, &lookup, out, limit)
    }
}

fn render_segments<'a, F: Fn(&str) -> Option<Field<'a>>>(
    segments: &[Segment],
    escape: Escape,
    lookup: &F,
    out: &mut String,
    limit: usize,
) -> Result<(), TooLarge> {
    for segment in segments {
        match segment {
            Segment::Text(text) => out.push_str(text),
            Segment::Var { name, default } => match (lookup(name), default) {
                (Some(Field::Num(n)), _) => {
                    let _ = write!(out, "{n}");
                }
                (Some(Field::Str(s)), _) => write_value(s, escape, out),
                (None, Some(d)) => write_value(d, escape, out),
                (None, None) => {}
            },
            Segment::If {
                branches,
                otherwise,
            } => {
                let chosen = branches
                    .iter()
                    .find(|(cond, _)| cond.holds(lookup))
                    .map_or(otherwise, |(_, body)| body);
                render_segments(chosen, escape, lookup, out, limit)?;
            }
        }
        if out.len() > limit {
            return Err(TooLarge);
        }
    }
    Ok(())
}

impl Cond {
    /// minijinja's truth and equality for the values a row has: undefined and "" are false,
    /// numbers are true unless 0; a string equals a string literal only if it is the same.
    fn holds<'a>(&self, lookup: &impl Fn(&str) -> Option<Field<'a>>) -> bool {
        let value = lookup(&self.name);
        let equals = |lit: &str| matches!(value, Some(Field::Str(s)) if s == lit);
        match &self.test {
            Test::Truthy | Test::Falsy => {
                let truthy = match value {
                    None => false,
                    Some(Field::Str(s)) => !s.is_empty(),
                    Some(Field::Num(n)) => n != 0,
                };
                truthy == matches!(self.test, Test::Truthy)
            }
            Test::Eq(lit) => equals(lit),
            Test::Ne(lit) => !equals(lit),
        }
    }
}

/// Splits `source` into text, variable tags and statements, applying the statements'
/// white-space control (`{%-` trims the white space before, `-%}` the white space after).
/// `None` for comments, `{{-`-style control on variables and unclosed tags.
fn tokenize(source: &str) -> Option<Vec<Token<'_>>> {
    let mut tokens = Vec::new();
    let mut rest = source;
    let mut trim_next = false;
    loop {
        let open = ["{{", "{%", "{#"].iter().filter_map(|t| rest.find(t)).min();
        let (text, tag) = match open {
            Some(i) => (&rest[..i], Some(&rest[i..])),
            None => (rest, None),
        };
        let text = if trim_next { text.trim_start() } else { text };
        trim_next = false;
        if !text.is_empty() {
            tokens.push(Token::Text(text));
        }
        let Some(tag) = tag else {
            break;
        };
        let (close, variable) = match &tag[..2] {
            "{{" => ("}}", true),
            "{%" => ("%}", false),
            _ => return None, // a comment
        };
        let end = tag[2..].find(close)?;
        let inner = &tag[2..2 + end];
        rest = &tag[2 + end + 2..];
        if variable {
            tokens.push(Token::Var(inner));
            continue;
        }
        if inner.starts_with('+') || inner.ends_with('+') {
            return None;
        }
        if inner.starts_with('-')
            && let Some(Token::Text(t)) = tokens.last_mut()
        {
            *t = t.trim_end();
            if t.is_empty() {
                tokens.pop();
            }
        }
        trim_next = inner.ends_with('-');
        let inner = inner.strip_prefix('-').unwrap_or(inner);
        let inner = inner.strip_suffix('-').unwrap_or(inner);
        tokens.push(Token::Stmt(inner.trim()));
    }
    Some(tokens)
}

/// The statement that ended a block: `elif COND`, `else` or `endif` (None: end of source).
enum End<'s> {
    Elif(&'s str),
    Else,
    Endif,
}

/// Segments up to the next `elif` / `else` / `endif` (or the end of the source).
fn parse_block<'s>(
    tokens: &mut std::vec::IntoIter<Token<'s>>,
) -> Option<(Vec<Segment>, Option<End<'s>>)> {
    let mut segments = Vec::new();
    while let Some(token) = tokens.next() {
        match token {
            Token::Text(t) => segments.push(Segment::Text(t.into())),
            Token::Var(tag) => segments.push(parse_tag(tag)?),
            Token::Stmt(stmt) => {
                let (word, rest) = stmt.split_once(char::is_whitespace).unwrap_or((stmt, ""));
                match (word, rest.trim()) {
                    ("if", cond) => segments.push(parse_if(cond, tokens)?),
                    ("elif", cond) => return Some((segments, Some(End::Elif(cond)))),
                    ("else", "") => return Some((segments, Some(End::Else))),
                    ("endif", "") => return Some((segments, Some(End::Endif))),
                    _ => return None,
                }
            }
        }
    }
    Some((segments, None))
}

/// The rest of an `{% if COND %}` block, through its `{% endif %}`.
fn parse_if<'s>(cond: &str, tokens: &mut std::vec::IntoIter<Token<'s>>) -> Option<Segment> {
    let mut branches = Vec::new();
    let mut cond = parse_cond(cond)?;
    loop {
        let (body, end) = parse_block(tokens)?;
        branches.push((cond, body));
        match end? {
            End::Elif(next) => cond = parse_cond(next)?,
            End::Else => {
                let (otherwise, end) = parse_block(tokens)?;
                return matches!(end, Some(End::Endif)).then_some(Segment::If {
                    branches,
                    otherwise,
                });
            }
            End::Endif => {
                return Some(Segment::If {
                    branches,
                    otherwise: Vec::new(),
                });
            }
        }
    }
}

/// `name`, `not name`, `name == "text"` or `name != "text"`.
fn parse_cond(cond: &str) -> Option<Cond> {
    let name_of = |s: &str| {
        let s = s.trim();
        (is_identifier(s) && !RESERVED.contains(&s)).then(|| Box::<str>::from(s))
    };
    let (name, test) = if let Some((n, lit)) = cond.split_once("==") {
        (n, Test::Eq(string_literal(lit.trim())?.into()))
    } else if let Some((n, lit)) = cond.split_once("!=") {
        (n, Test::Ne(string_literal(lit.trim())?.into()))
    } else if let Some(n) = cond.strip_prefix("not ") {
        (n, Test::Falsy)
    } else {
        (cond, Test::Truthy)
    };
    Some(Cond {
        name: name_of(name)?,
        test,
    })
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
            "{% if a %}x{% endif %}",
            "{% if a == \"pro\" -%}\n P \n{%- elif not b %}B{% else %}E{% endif %}",
            "{% if a != 'x' %}{% if b %}{{ b }}{% endif %}{% endif %}",
        ] {
            assert!(Simple::parse(simple).is_some(), "{simple:?}");
        }
        for other in [
            "{% if a %}x",
            "{% endif %}",
            "{% if a %}x{% else %}y{% elif b %}z{% endif %}",
            "{% for x in a %}{% endfor %}",
            "{% if a.b %}x{% endif %}",
            "{% if a == b %}x{% endif %}",
            "{% if a and b %}x{% endif %}",
            "{%+ if a %}x{% endif %}",
            "{% if not %}x{% endif %}",
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
