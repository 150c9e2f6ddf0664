//! Rendering: one CSV row in, one wire-ready message (with its envelope) out. This file holds
//! the renderer (templates, headers, MIME assembly); beside it are the engine-free template
//! path (`simple.rs`), how values are escaped and the template environment (`escape.rs`), the
//! body transfer encoding (`body.rs`) and the variable checks (`variables.rs`).
//!
//! Templates are compiled once, at load time, and every variable they use is checked against
//! the CSV columns there, so a typo fails `blast check` instead of sending a thousand messages
//! with a blank name. Every render is bounded: its output by `[limits] max_part_size` (1 MB by
//! default), its work by minijinja's fuel, so a template that would loop for ever or write
//! gigabytes fails `blast check`, and a row whose values make a part too large is a render
//! error of that row only. Values in the unsubscribe targets are percent-encoded and the
//! target must be one URI (`escape.rs`), so a list value cannot add a URI to
//! `List-Unsubscribe`. The message itself is built with mail-builder: it encodes non-ASCII
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
use minijinja::{Environment, Template};

use crate::campaign::{Campaign, Mailbox, TemplateSource};
use body::BODIES;
use escape::{Capped, Escape, URI_TEMPLATES, check_uri, environment};
use simple::{Field, Simple};
use variables::{check_variables, template_error, template_key};

mod body;
mod escape;
mod simple;
mod variables;
use crate::dkim::Dkim;
use crate::send::source::{Columns, Recipient, elide};
use crate::verp::VerpKey;

/// minijinja fuel of one render besides what its output may cost: about a million
/// instructions, or 64 MB of strings and lists created (see `Environment::set_fuel`). A real
/// template uses a few thousand; one that runs out loops or builds values far past any mail.
const BASE_FUEL: u64 = 1_000_000;

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
    /// Largest output of one template render, in bytes (`[limits] max_part_size`).
    max_part: usize,
    /// What `blast check` should say about the templates (they render, but …).
    warnings: Vec<String>,
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
    escape: Escape,
}

impl Compiled {
    fn new(env: Environment<'static>) -> Compiled {
        let env: &'static Environment<'static> = Box::leak(Box::new(env));
        let get = |name: &str| {
            let engine = env.get_template(name).ok()?;
            Some(Tmpl {
                simple: Simple::parse(engine.source()),
                escape: Escape::of(name),
                engine,
            })
        };
        Compiled {
            subject: get("subject.txt").expect("the subject template is always added"),
            to_name: get("to_name.txt"),
            text: get("body.txt"),
            html: get("body.html"),
            mailto: get(URI_TEMPLATES[1]),
            url: get(URI_TEMPLATES[0]),
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
        let max_part = campaign.limits.max_part_size;
        // Writing the output costs fuel too (a byte is 1/64): leave room for four times it.
        let mut env = environment(BASE_FUEL + max_part as u64 / 16);

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
        let mut warnings = Vec::new();
        if errors.is_empty() {
            for src in &sources {
                check_variables(&env, src, &columns, &mut errors, &mut warnings);
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
            max_part,
            warnings,
        })
    }

    /// What `blast check` warns about: unsubscribe targets built from list columns.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
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
            let url = self.render_uri(tmpl, &ctx, &value, row, "")?;
            let _ = ctx.unsubscribe_url.set(url);
        }
        if let Some(tmpl) = &t.mailto {
            let mailto = self.render_uri(tmpl, &ctx, &value, row, "mailto:")?;
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
            let body::Bodies { text, html } = bodies;
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
    /// The transfer encoding is chosen by blast (`body::encode`) rather than by mail-builder,
    /// which would scan the body, count its quoted-printable length and only then encode it:
    /// ASCII text with short lines goes as 7bit (CRLF line ends), anything else as
    /// quoted-printable in one pass.
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
        let raw = self.render_template(tmpl, ctx, value, row)?.into_bytes();
        let cte = body::encode(raw, encoded);
        Ok(MimePart::new(
            ContentType::new(content_type).attribute("charset", "utf-8"),
            BodyPart::Binary(Cow::Borrowed(&encoded[..])),
        )
        .transfer_encoding(cte))
    }

    /// An unsubscribe target, checked to be one URI that List-Unsubscribe can carry (with
    /// `scheme` before it: the mailto template is the address only).
    fn render_uri(
        &self,
        tmpl: &Tmpl,
        ctx: &Arc<RowContext>,
        value: &Value,
        row: u64,
        scheme: &str,
    ) -> Result<String, RenderError> {
        let uri = one_line(self.render_template(tmpl, ctx, value, row)?);
        match check_uri(&format!("{scheme}{uri}")) {
            Ok(()) => Ok(uri),
            Err(message) => Err(self.row_error(tmpl, ctx, row, message)),
        }
    }

    /// Renders a template into at most `max_part` bytes.
    fn render_template(
        &self,
        tmpl: &Tmpl,
        ctx: &Arc<RowContext>,
        value: &Value,
        row: u64,
    ) -> Result<String, RenderError> {
        let capacity = tmpl.engine.source().len() + 64;
        let too_large = || {
            format!(
                "the output is over {} bytes, the limit of one rendered part ([limits] max_part_size)",
                self.max_part
            )
        };
        if let Some(simple) = &tmpl.simple {
            let mut out = String::with_capacity(capacity.min(self.max_part));
            return match simple.render(tmpl.escape, |key| ctx.lookup(key), &mut out, self.max_part)
            {
                Ok(()) => Ok(out),
                Err(simple::TooLarge) => Err(self.row_error(tmpl, ctx, row, too_large())),
            };
        }
        let mut out = Capped::new(capacity, self.max_part);
        match tmpl.engine.render_captured_to(value, &mut out) {
            Ok(_) => Ok(String::from_utf8(out.bytes)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())),
            Err(_) if out.over => Err(self.row_error(tmpl, ctx, row, too_large())),
            Err(e) if e.kind() == minijinja::ErrorKind::OutOfFuel => {
                let message = format!(
                    "{e}: the template does too much work for one message (a loop too long, or values too large?)"
                );
                Err(self.row_error(tmpl, ctx, row, message))
            }
            Err(e) => Err(self.row_error(tmpl, ctx, row, e.to_string())),
        }
    }

    /// A row's render error in `tmpl`: its file and key, and the message (at most 500
    /// characters of it: minijinja's may echo values).
    fn row_error(&self, tmpl: &Tmpl, ctx: &RowContext, row: u64, message: String) -> RenderError {
        let name = tmpl.engine.name();
        let src = self.sources.iter().find(|s| s.name == name);
        let file = src.map_or(name.to_string(), |s| s.file.display().to_string());
        RenderError::Row {
            row,
            rcpt: ctx.recipient.address.clone(),
            template: format!("{file} ({})", template_key(name)),
            message: elide(&message, 500).into_owned(),
        }
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
        let mut env = environment(BASE_FUEL);
        for (i, src) in sources.iter().enumerate() {
            env.add_template_owned(format!("{i}.txt"), src.to_string())
                .unwrap();
            env.add_template_owned(format!("{i}.html"), src.to_string())
                .unwrap();
            env.add_template_owned(format!("{i}.{}", URI_TEMPLATES[0]), src.to_string())
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
                for (name, escape) in [
                    (format!("{i}.txt"), Escape::None),
                    (format!("{i}.html"), Escape::Html),
                    (format!("{i}.{}", URI_TEMPLATES[0]), Escape::Uri),
                ] {
                    let expected = env.get_template(&name).unwrap().render(&value).unwrap();
                    let mut got = String::new();
                    simple
                        .render(escape, |k| ctx.lookup(k), &mut got, usize::MAX)
                        .unwrap();
                    assert_eq!(got, expected, "template {src:?} ({name}), row {fields:?}");
                }
            }
        }
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
}
