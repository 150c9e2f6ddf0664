//! Rendering: one CSV row in, one wire-ready message (with its envelope) out. One concept in
//! one file (templates, headers, MIME assembly and the per-thread buffers they share; the
//! engine-free template path is `simple.rs`).
//!
//! Templates are compiled once, at load time, and every variable they use is checked against
//! the CSV columns there, so a typo fails `blast check` instead of sending a thousand messages
//! with a blank name. The message itself is built with mail-builder: it encodes non-ASCII
//! headers (RFC 2047), picks a transfer encoding that keeps lines under 998 octets and folds any
//! CR/LF inside header values. blast does not rely on that alone: CSV fields with control
//! characters never get here (`source` rejects the row), and rendered header values have
//! control characters replaced by spaces, so no input can add a header.

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use mail_builder::MessageBuilder;
use mail_builder::headers::address::Address;
use mail_builder::headers::content_type::ContentType;
use mail_builder::headers::date::Date;
use mail_builder::headers::message_id::MessageId;
use mail_builder::headers::raw::Raw;
use mail_builder::headers::url::URL;
use mail_builder::mime::{BodyPart, MimePart};
use minijinja::value::{Object, Value};
use minijinja::{AutoEscape, Environment, Template};

use crate::campaign::{Campaign, Mailbox, TemplateSource};
use simple::{Field, Simple};

mod simple;
use crate::dkim::Dkim;
use crate::send::source::{Columns, Recipient};
use crate::verp::VerpKey;

/// Variables every template gets besides the CSV columns.
pub const BUILTIN_VARIABLES: &[&str] = &[
    "email",
    "row",
    "campaign",
    "unsubscribe_token",
    "unsubscribe_url",
    "unsubscribe_mailto",
];

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("{file}:{line}: template error: {message}")]
    Template {
        file: PathBuf,
        line: usize,
        message: String,
    },
    #[error(
        "{file}:{line}: template uses {name:?}, which is not a column of the recipient list (columns: {columns}; built-in: {builtins})"
    )]
    UnknownVariable {
        file: PathBuf,
        line: usize,
        name: String,
        columns: String,
        builtins: String,
    },
    #[error("row {row}: cannot render {template}: {message}")]
    Row {
        row: u64,
        /// The recipient's address, for the failure's journal and log records.
        rcpt: String,
        template: String,
        message: String,
    },
}

impl RenderError {
    /// What a row's failure records (journal, delivery log): the error without its row number,
    /// so that equal errors group together in `blast status`.
    pub fn reason(&self) -> String {
        match self {
            RenderError::Row {
                template, message, ..
            } => format!("cannot render {template}: {message}"),
            e => e.to_string(),
        }
    }
}

/// A message ready for SMTP: envelope plus RFC 5322 bytes (CRLF line endings, not dot-stuffed).
#[derive(Debug, Clone)]
pub struct Message {
    pub row: u64,
    /// RCPT TO.
    pub rcpt: String,
    /// MAIL FROM: the VERP address.
    pub mail_from: String,
    /// Without angle brackets.
    pub message_id: String,
    pub bytes: Vec<u8>,
}

/// Compiled templates plus everything constant across rows.
pub struct Renderer {
    /// The compiled templates, looked up once here rather than by name for every message.
    templates: Compiled,
    sources: Vec<TemplateSource>,
    /// The campaign id, shared with every row's [`RowContext`].
    campaign: Arc<str>,
    from: Mailbox,
    reply_to: Option<Mailbox>,
    headers: Vec<(String, String)>,
    verp_prefix: String,
    verp_suffix: String,
    verp_domain: String,
    message_id_domain: String,
    key: VerpKey,
    columns: Arc<Columns>,
    has_mailto: bool,
    has_url: bool,
    one_click: bool,
    /// DKIM signer(s) and Feedback-ID: messages are signed here, on the render threads.
    dkim: Option<Arc<Dkim>>,
}

/// The campaign's compiled templates. They borrow the [`Environment`], which is therefore leaked
/// (`Box::leak`): one per loaded campaign, a few KB, and a process loads a campaign once.
struct Compiled {
    subject: Tmpl,
    to_name: Option<Tmpl>,
    text: Option<Tmpl>,
    html: Option<Tmpl>,
    mailto: Option<Tmpl>,
    url: Option<Tmpl>,
}

/// One template: compiled by minijinja, plus the engine-free form when it has one.
struct Tmpl {
    engine: Template<'static, 'static>,
    simple: Option<Simple>,
    html: bool,
}

impl Compiled {
    fn new(env: Environment<'static>) -> Compiled {
        let env: &'static Environment<'static> = Box::leak(Box::new(env));
        let get = |name: &str| {
            let engine = env.get_template(name).ok()?;
            Some(Tmpl {
                simple: Simple::parse(engine.source()),
                html: name.ends_with(".html"),
                engine,
            })
        };
        Compiled {
            subject: get("subject.txt").expect("the subject template is always added"),
            to_name: get("to_name.txt"),
            text: get("body.txt"),
            html: get("body.html"),
            mailto: get("unsubscribe_mailto.txt"),
            url: get("unsubscribe_url.txt"),
        }
    }
}

impl std::fmt::Debug for Renderer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renderer")
            .field("campaign", &self.campaign)
            .finish_non_exhaustive()
    }
}

impl Renderer {
    /// Compiles the campaign's templates and checks their variables against `columns`.
    /// Returns every problem found, not only the first.
    pub fn new(
        campaign: &Campaign,
        columns: Arc<Columns>,
        key: VerpKey,
    ) -> Result<Renderer, Vec<RenderError>> {
        let mut env = environment();

        let t = &campaign.templates;
        let unsub = campaign.unsubscribe.as_ref();
        let sources: Vec<TemplateSource> = [
            Some(&t.subject),
            t.to_name.as_ref(),
            t.text.as_ref(),
            t.html.as_ref(),
        ]
        .into_iter()
        .chain([
            unsub.and_then(|u| u.mailto.as_ref()),
            unsub.and_then(|u| u.url.as_ref()),
        ])
        .flatten()
        .cloned()
        .collect();

        let mut errors = Vec::new();
        for src in &sources {
            if let Err(e) = env.add_template_owned(src.name.clone(), src.text.clone()) {
                errors.push(template_error(src, &e));
            }
        }
        if errors.is_empty() {
            for src in &sources {
                let tmpl = env.get_template(&src.name).expect("added above");
                let mut names: Vec<String> = tmpl.undeclared_variables(false).into_iter().collect();
                names.sort();
                for name in names {
                    if columns.index(&name).is_none() && !BUILTIN_VARIABLES.contains(&name.as_str())
                    {
                        errors.push(RenderError::UnknownVariable {
                            file: src.file.clone(),
                            line: src.first_line
                                + line_of_variable(&src.text, &name).saturating_sub(1),
                            name,
                            columns: columns.names().join(", "),
                            builtins: BUILTIN_VARIABLES.join(", "),
                        });
                    }
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }

        let from_domain = campaign
            .from
            .address
            .rsplit_once('@')
            .map_or("localhost", |(_, d)| d)
            .to_string();
        Ok(Renderer {
            templates: Compiled::new(env),
            sources,
            campaign: campaign.id.as_str().into(),
            from: campaign.from.clone(),
            reply_to: campaign.reply_to.clone(),
            headers: campaign.headers.clone(),
            verp_prefix: campaign.envelope.verp_prefix.clone(),
            verp_suffix: campaign.envelope.verp_suffix.clone(),
            verp_domain: campaign.envelope.verp_domain.clone(),
            message_id_domain: from_domain,
            key,
            columns,
            has_mailto: unsub.is_some_and(|u| u.mailto.is_some()),
            has_url: unsub.is_some_and(|u| u.url.is_some()),
            one_click: unsub.is_some_and(|u| u.one_click),
            dkim: campaign.dkim.clone(),
        })
    }

    /// The list's columns, as the templates see them.
    pub fn columns(&self) -> &Arc<Columns> {
        &self.columns
    }

    /// The VERP envelope sender of `row`, sent to `address` (the token binds it: the bounce
    /// sink acts on a report only for that address).
    pub fn mail_from(&self, row: u64, address: &str) -> String {
        let mut s = String::with_capacity(96);
        s.push_str(&self.verp_prefix);
        self.key.encode_into(&self.campaign, row, address, &mut s);
        s.push_str(&self.verp_suffix);
        s.push('@');
        s.push_str(&self.verp_domain);
        s
    }

    /// The deterministic Message-ID of a row: the same campaign, row and address always give the
    /// same id, so a message re-sent after a crash can be de-duplicated downstream.
    pub fn message_id(&self, row: u64, address: &str) -> String {
        // `{campaign}.{row:x}.{fnv:016x}@{domain}`, written without `format!` (per message).
        let mut s = String::with_capacity(
            self.campaign.len() + 1 + 16 + 1 + 16 + 1 + self.message_id_domain.len(),
        );
        s.push_str(&self.campaign);
        s.push('.');
        push_hex(row, 1, &mut s);
        s.push('.');
        push_hex(fnv1a(address.as_bytes()), 16, &mut s);
        s.push('@');
        s.push_str(&self.message_id_domain);
        s
    }

    /// Renders one recipient, DKIM-signed if the campaign signs. `date` is the Date header as
    /// Unix seconds.
    pub fn render(&self, recipient: Recipient, date: i64) -> Result<Message, RenderError> {
        let mut m = self.render_unsigned(recipient, date)?;
        if let Some(dkim) = &self.dkim {
            dkim.sign(&mut m.bytes, date);
        }
        Ok(m)
    }

    fn render_unsigned(&self, recipient: Recipient, date: i64) -> Result<Message, RenderError> {
        let row = recipient.row;
        let message_id = self.message_id(row, &recipient.address);
        let mail_from = self.mail_from(row, &recipient.address);
        let token = self
            .key
            .unsubscribe_token(&self.campaign, row, &recipient.address);
        let ctx = Arc::new(RowContext {
            columns: self.columns.clone(),
            campaign: self.campaign.clone(),
            token,
            unsubscribe_url: OnceLock::new(),
            unsubscribe_mailto: OnceLock::new(),
            recipient,
        });
        let value = Value::from_dyn_object(ctx.clone());
        let t = &self.templates;
        // Unsubscribe targets first: bodies may use them.
        if let Some(tmpl) = &t.url {
            let url = one_line(self.render_template(tmpl, &ctx, &value, row)?);
            let _ = ctx.unsubscribe_url.set(url);
        }
        if let Some(tmpl) = &t.mailto {
            let mailto = one_line(self.render_template(tmpl, &ctx, &value, row)?);
            let _ = ctx.unsubscribe_mailto.set(mailto);
        }
        let subject = one_line(self.render_template(&t.subject, &ctx, &value, row)?);
        let to_name = match &t.to_name {
            Some(tmpl) => Some(one_line(self.render_template(tmpl, &ctx, &value, row)?))
                .filter(|n| !n.is_empty()),
            None => None,
        };

        let mut b = MessageBuilder::new()
            .from(Address::new_address(
                self.from.name.as_deref().map(Cow::Borrowed),
                Cow::Borrowed(self.from.address.as_str()),
            ))
            .to(Address::new_address(
                to_name.map(Cow::Owned),
                Cow::Borrowed(ctx.recipient.address.as_str()),
            ))
            .subject(subject)
            .date(Date::new(date))
            .message_id(MessageId::new(message_id.as_str()));
        if let Some(r) = &self.reply_to {
            b = b.reply_to(Address::new_address(
                r.name.as_deref().map(Cow::Borrowed),
                Cow::Borrowed(r.address.as_str()),
            ));
        }
        if self.has_mailto || self.has_url {
            let mut urls = Vec::with_capacity(2);
            if let Some(m) = ctx.unsubscribe_mailto.get() {
                urls.push(format!("mailto:{m}"));
            }
            if let Some(u) = ctx.unsubscribe_url.get() {
                urls.push(u.clone());
            }
            b = b.header("List-Unsubscribe", URL::new_list(urls.into_iter()));
            if self.one_click {
                b = b.header(
                    "List-Unsubscribe-Post",
                    Raw::new("List-Unsubscribe=One-Click"),
                );
            }
        }
        if let Some(id) = self.dkim.as_ref().and_then(|d| d.feedback_id.as_deref()) {
            b = b.header("Feedback-ID", Raw::new(id));
        }
        for (name, value) in &self.headers {
            b = b.header(name.as_str(), Raw::new(value.as_str()));
        }
        let mut bytes = Vec::with_capacity(4096);
        BODIES.with_borrow_mut(|bodies| -> Result<(), RenderError> {
            let Bodies { text, html } = bodies;
            let text = match &t.text {
                Some(tmpl) => {
                    Some(self.render_body(tmpl, &ctx, &value, row, text, "text/plain")?)
                }
                None => None,
            };
            let html = match &t.html {
                Some(tmpl) => Some(self.render_body(tmpl, &ctx, &value, row, html, "text/html")?),
                None => None,
            };
            let b = match (text, html) {
                (Some(text), Some(html)) => {
                    b.body(MimePart::new("multipart/alternative", vec![text, html]))
                }
                (Some(part), None) | (None, Some(part)) => b.body(part),
                (None, None) => b,
            };
            b.serialize(&mut bytes);
            Ok(())
        })?;
        drop(value);
        let ctx = Arc::try_unwrap(ctx).unwrap_or_else(|arc| (*arc).clone());
        // A single-part body can end without a line break (minijinja drops a template's final
        // newline); end the message with CRLF like every other line.
        if !bytes.ends_with(b"\r\n") {
            bytes.extend_from_slice(b"\r\n");
        }
        Ok(Message {
            row,
            rcpt: ctx.recipient.address,
            mail_from,
            message_id,
            bytes,
        })
    }

    /// Renders a body template and encodes it into `encoded` (reused from message to message);
    /// returns the MIME part that borrows it.
    ///
    /// The transfer encoding is chosen here rather than by mail-builder, which would scan the
    /// body, count its quoted-printable length and only then encode it: ASCII text with short
    /// lines goes as 7bit (CRLF line ends), anything else as quoted-printable in one pass.
    /// Quoted-printable rather than 8bit keeps the DKIM signature valid through relays that
    /// downgrade 8bit mail (RFC 6376 §5.3). Bare CRs become line breaks: RFC 5322 forbids them
    /// and some relays treat them as line ends.
    fn render_body<'b>(
        &self,
        tmpl: &Tmpl,
        ctx: &Arc<RowContext>,
        value: &Value,
        row: u64,
        encoded: &'b mut Vec<u8>,
        content_type: &'static str,
    ) -> Result<MimePart<'b>, RenderError> {
        let mut raw = self.render_template(tmpl, ctx, value, row)?.into_bytes();
        if memchr::memchr(b'\r', &raw).is_some() {
            raw = normalise_line_ends(&raw);
        }
        encoded.clear();
        let cte = if seven_bit_ok(&raw) {
            crlf_lines(&raw, encoded);
            "7bit"
        } else {
            encodify::qp::BODY.encode_append(&raw[..], encoded);
            "quoted-printable"
        };
        Ok(MimePart::new(
            ContentType::new(content_type).attribute("charset", "utf-8"),
            BodyPart::Binary(Cow::Borrowed(&encoded[..])),
        )
        .transfer_encoding(cte))
    }

    fn render_template(
        &self,
        tmpl: &Tmpl,
        ctx: &Arc<RowContext>,
        value: &Value,
        row: u64,
    ) -> Result<String, RenderError> {
        if let Some(simple) = &tmpl.simple {
            let mut out = String::with_capacity(tmpl.engine.source().len() + 64);
            simple.render(tmpl.html, |key| ctx.lookup(key), &mut out);
            return Ok(out);
        }
        tmpl.engine.render(value).map_err(|e| {
            let name = tmpl.engine.name();
            let src = self.sources.iter().find(|s| s.name == name);
            RenderError::Row {
                row,
                rcpt: ctx.recipient.address.clone(),
                template: src.map_or(name.to_string(), |s| s.file.display().to_string()),
                message: e.to_string(),
            }
        })
    }
}

/// Template variables of one row: CSV columns by name, plus the built-ins. Empty CSV fields are
/// undefined, so `{{ first_name | default("there") }}` does what people mean.
#[derive(Debug, Clone)]
struct RowContext {
    columns: Arc<Columns>,
    campaign: Arc<str>,
    token: String,
    unsubscribe_url: OnceLock<String>,
    unsubscribe_mailto: OnceLock<String>,
    recipient: Recipient,
}

impl RowContext {
    /// The value of template variable `key`, `None` when undefined. The one place that says
    /// what a name means, for minijinja and for [`Simple`] templates alike.
    fn lookup(&self, key: &str) -> Option<Field<'_>> {
        // The normalised address wins over a CSV column of the same name.
        if key == "email" {
            return Some(Field::Str(&self.recipient.address));
        }
        if let Some(i) = self.columns.index(key) {
            let v = self.recipient.field(i);
            return (!v.is_empty()).then_some(Field::Str(v));
        }
        match key {
            "row" => Some(Field::Num(self.recipient.row)),
            "campaign" => Some(Field::Str(&self.campaign)),
            "unsubscribe_token" => Some(Field::Str(&self.token)),
            "unsubscribe_url" => self.unsubscribe_url.get().map(|s| Field::Str(s)),
            "unsubscribe_mailto" => self.unsubscribe_mailto.get().map(|s| Field::Str(s)),
            _ => None,
        }
    }
}

impl Object for RowContext {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        Some(match self.lookup(key.as_str()?)? {
            Field::Str(s) => Value::from(s),
            Field::Num(n) => Value::from(n),
        })
    }
}

fn template_error(src: &TemplateSource, e: &minijinja::Error) -> RenderError {
    let line = e.line().unwrap_or(1);
    RenderError::Template {
        file: src.file.clone(),
        line: src.first_line + line - 1,
        message: match e.detail() {
            Some(d) => format!("{}: {d}", e.kind()),
            None => e.kind().to_string(),
        },
    }
}

/// The template environment: HTML auto-escaping for `.html` templates only, with
/// [`html_formatter`].
fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_auto_escape_callback(|name| {
        if name.ends_with(".html") {
            AutoEscape::Html
        } else {
            AutoEscape::None
        }
    });
    env.set_formatter(html_formatter);
    env
}

/// HTML auto-escaping that leaves `/` alone: minijinja's default writes `https:&#x2f;&#x2f;…`,
/// which is valid but makes every link in a mail look obfuscated to spam filters. `& < > " '`
/// are what matters in element content and quoted attributes.
fn html_formatter(
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
        _ => minijinja::escape_formatter(out, state, value),
    }
}

/// Writes `s` with `& < > " '` escaped, in pieces.
fn escape_html(s: &str, mut write: impl FnMut(&str) -> std::fmt::Result) -> std::fmt::Result {
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

/// 1-based line of the first use of `name` inside a `{{ }}` or `{% %}` tag (1 if not found).
fn line_of_variable(text: &str, name: &str) -> usize {
    let mut offset = 0;
    while let Some(open) = text[offset..].find(['{']) {
        let start = offset + open;
        let rest = &text[start..];
        let end = rest.find(['}']).map_or(text.len(), |e| start + e);
        let tag = &text[start..end];
        if tag
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .any(|w| w == name)
        {
            return text[..start].matches('\n').count() + 1;
        }
        offset = start + 1;
    }
    1
}

/// Header values are one line: any control character (a template's own newline included)
/// becomes a space, and surrounding white space goes.
fn one_line(s: String) -> String {
    if has_control(&s) {
        s.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect::<String>()
            .trim()
            .to_string()
    } else if s.trim().len() != s.len() {
        s.trim().to_string()
    } else {
        s
    }
}

/// `s.chars().any(char::is_control)` on the bytes: the control characters are C0 (below 0x20),
/// DEL and C1 (U+0080 to U+009F, in UTF-8 0xC2 then 0x80 to 0x9F).
fn has_control(s: &str) -> bool {
    let b = s.as_bytes();
    if b.iter().all(|c| (0x20..0x7f).contains(c)) {
        return false;
    }
    b.iter().enumerate().any(|(i, &c)| {
        c < 0x20
            || c == 0x7f
            || (c == 0xc2 && b.get(i + 1).is_some_and(|n| (0x80..0xa0).contains(n)))
    })
}

/// Encoded bodies of one message, per render thread: the buffers keep their capacity from
/// message to message.
#[derive(Default)]
struct Bodies {
    text: Vec<u8>,
    html: Vec<u8>,
}

thread_local! {
    static BODIES: std::cell::RefCell<Bodies> = std::cell::RefCell::new(Bodies::default());
}

/// Longest line sent as 7bit; longer ones go quoted-printable (RFC 5322's 78 with CRLF, the
/// limit mail-builder uses too).
const SEVEN_BIT_LINE: usize = 76;

/// Turns CRLF and bare CR into LF (the encoders write every LF as CRLF).
fn normalise_line_ends(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'\r' => {
                out.push(b'\n');
                if body.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// Whether `body` (LF line ends) can go as 7bit unchanged: printable ASCII and tabs only, no
/// line over [`SEVEN_BIT_LINE`], no white space at a line end (relays may strip it).
fn seven_bit_ok(body: &[u8]) -> bool {
    // Branch-free over blocks, so it vectorises; most bodies fail here on their first non-ASCII
    // byte's block.
    for block in body.chunks(64) {
        let mut bad = false;
        for &b in block {
            bad |= (b >= 0x7f) | ((b < 0x20) & (b != b'\t') & (b != b'\n'));
        }
        if bad {
            return false;
        }
    }
    let mut start = 0;
    for end in memchr::memchr_iter(b'\n', body).chain(std::iter::once(body.len())) {
        let line = &body[start..end];
        if line.len() > SEVEN_BIT_LINE || matches!(line.last(), Some(b' ' | b'\t')) {
            return false;
        }
        start = end + 1;
    }
    true
}

/// `body` with every LF written as CRLF.
fn crlf_lines(body: &[u8], out: &mut Vec<u8>) {
    out.reserve(body.len() + body.len() / 32);
    let mut start = 0;
    for end in memchr::memchr_iter(b'\n', body) {
        out.extend_from_slice(&body[start..end]);
        out.extend_from_slice(b"\r\n");
        start = end + 1;
    }
    out.extend_from_slice(&body[start..]);
}

/// Lowercase hex of `n`, zero-padded to at least `width` digits (`{:0width$x}`).
fn push_hex(n: u64, width: usize, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = (64 - n.leading_zeros() as usize).div_ceil(4).max(width);
    for i in (0..digits).rev() {
        out.push(HEX[((n >> (4 * i)) & 15) as usize] as char);
    }
}

/// 64-bit FNV-1a: stable across versions and platforms, unlike std's hasher.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_strips_controls() {
        assert_eq!(one_line("a\r\nBcc: x".into()), "a  Bcc: x");
        assert_eq!(one_line(" hi \n".into()), "hi");
        assert_eq!(one_line("plain".into()), "plain");
    }

    #[test]
    fn control_characters() {
        for s in [
            "plain",
            "",
            "Ó Súilleabháin",
            "Москва",
            "a\tb",
            "\u{7f}",
            "x\u{85}",
            "\u{9f}",
            "\u{a0}",
            "\u{100}",
            "€",
        ] {
            assert_eq!(has_control(s), s.chars().any(char::is_control), "{s:?}");
        }
    }

    /// The engine-free path must give minijinja's output byte for byte.
    #[test]
    fn simple_templates_render_like_minijinja() {
        let names = ["email", "first_name", "city", "row", "plan"];
        let columns = Arc::new(
            crate::send::source::build_columns(
                std::path::Path::new("t.csv"),
                names.iter().map(|s| s.to_string()).collect(),
                "email",
            )
            .unwrap(),
        );
        let sources = [
            "Hello {{ first_name }}",
            "{{first_name}}{{ city }}!",
            "{{ first_name | default(\"there & <you>\") }}, hi",
            "{{ first_name|default('x') }} {{ missing | default(\"d\") }} {{ missing }}.",
            "{{ email }} {{ row }} {{ campaign }} {{ unsubscribe_token }}",
            "{{ unsubscribe_url }}|{{ unsubscribe_mailto }}|{{ unsubscribe_mailto | default('none') }}",
            "a }} b { c\n",
            "ends with CRLF\r\n",
            "two lines\n\n",
            "",
            "{% if city %}in {{ city }}{% endif %}.",
            "{% if plan == \"pro\" -%}\n  Pro \n{%- elif plan != 'free' %}\n other {{ plan }}\n{% else -%}\n\tfree\n{%- endif %}\nend",
            "{% if not city %}none{% else %}{% if row %}#{{ row }}{% endif %}{{ city }}{% endif %}",
            "a  \n  {%- if first_name -%}  \n {{ first_name }}  {%- endif -%}\n\n  b\n",
            "{% if missing %}x{% elif email %}{{ email }}{% endif %}{% if unsubscribe_url %}u{% endif %}",
            include_str!("../../../templates/spring.txt"),
            include_str!("../../../templates/spring.html"),
        ];
        let rows: [[&str; 5]; 4] = [
            ["a@x.test", "Zoë", "Montréal", "7", "pro"],
            ["b@x.test", "O'Brien & <Sons> \"q\"", "", "", ""],
            ["c@x.test", "", "Köln", "12", "free"],
            ["d@x.test", "&amp;", "<script>", "x", "y"],
        ];
        let mut env = environment();
        for (i, src) in sources.iter().enumerate() {
            env.add_template_owned(format!("{i}.txt"), src.to_string())
                .unwrap();
            env.add_template_owned(format!("{i}.html"), src.to_string())
                .unwrap();
        }
        for (r, fields) in rows.iter().enumerate() {
            let url = OnceLock::new();
            if r % 2 == 0 {
                let _ = url.set("https://u.test/?a=1&b=2".to_string());
            }
            let ctx = Arc::new(RowContext {
                columns: columns.clone(),
                campaign: "camp".into(),
                token: "tok-1".into(),
                unsubscribe_url: url,
                unsubscribe_mailto: OnceLock::new(),
                recipient: Recipient {
                    row: 100 + r as u64,
                    line: 2,
                    address: fields[0].to_string(),
                    record: csv::StringRecord::from(fields.to_vec()),
                },
            });
            let value = Value::from_dyn_object(ctx.clone());
            for (i, src) in sources.iter().enumerate() {
                let simple = Simple::parse(src).unwrap_or_else(|| panic!("{src:?} is simple"));
                for (name, html) in [(format!("{i}.txt"), false), (format!("{i}.html"), true)] {
                    let expected = env.get_template(&name).unwrap().render(&value).unwrap();
                    let mut got = String::new();
                    simple.render(html, |k| ctx.lookup(k), &mut got);
                    assert_eq!(got, expected, "template {src:?} ({name}), row {fields:?}");
                }
            }
        }
    }

    #[test]
    fn transfer_encoding_choice() {
        let line = "x".repeat(SEVEN_BIT_LINE);
        assert!(seven_bit_ok(
            format!("Hello,\n\tthere\n{line}\n").as_bytes()
        ));
        assert!(seven_bit_ok(b""));
        // A line too long, white space at a line end or the very end, 8-bit, controls.
        assert!(!seven_bit_ok(format!("{line}x\nshort").as_bytes()));
        assert!(!seven_bit_ok(b"trailing \nspace"));
        assert!(!seven_bit_ok(b"ends with a tab\t"));
        assert!(!seven_bit_ok("Zo\u{eb}".as_bytes()));
        assert!(!seven_bit_ok(b"bell\x07"));
        assert!(!seven_bit_ok(b"del\x7f"));
        let mut out = Vec::new();
        crlf_lines(b"a\nb\n\nc", &mut out);
        assert_eq!(out, b"a\r\nb\r\n\r\nc");
        assert_eq!(normalise_line_ends(b"a\r\nb\rc\r"), b"a\nb\nc\n");
    }

    #[test]
    fn hex_like_format() {
        for n in [0, 1, 15, 16, 255, 0x1234_5678, u64::MAX] {
            let mut a = String::new();
            push_hex(n, 1, &mut a);
            assert_eq!(a, format!("{n:x}"));
            let mut b = String::new();
            push_hex(n, 16, &mut b);
            assert_eq!(b, format!("{n:016x}"));
        }
    }

    #[test]
    fn variable_lines() {
        let t = "Hello\n{% if plan %}\n{{ first_name | default('x') }}\n{% endif %}";
        assert_eq!(line_of_variable(t, "first_name"), 3);
        assert_eq!(line_of_variable(t, "plan"), 2);
        assert_eq!(line_of_variable(t, "nothere"), 1);
    }
}
