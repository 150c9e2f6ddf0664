//! Validation of what makes up each message: sender (From, Reply-To), extra headers, the VERP
//! envelope, the templates, List-Unsubscribe, and the recipient list's format.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use toml::Spanned;

use crate::address::{lowercase_domain, valid_domain, valid_operator_address};
use crate::verp::max_token_len;

use super::file::{EnvelopeSection, MessageSection, RecipientsSection, UnsubscribeSection};
use super::model::{Envelope, Mailbox, RecipientsOptions, TemplateSource, Templates, Unsubscribe};
use super::validate::{Ctx, sized, valid_env_name};
use super::{DEFAULT_MAX_FIELD_SIZE, DEFAULT_MAX_RECORD_SIZE, MAX_TEMPLATE_FILE};

/// Headers blast writes itself; `[headers]` may not set them.
const RESERVED_HEADERS: &[&str] = &[
    "from",
    "to",
    "cc",
    "bcc",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "reply-to",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "return-path",
    "sender",
    "dkim-signature",
    "feedback-id",
];

/// `[headers]`: extra fixed headers, in name order. Names blast writes itself are refused.
pub(super) fn headers(
    ctx: &mut Ctx<'_>,
    fields: &BTreeMap<String, Spanned<String>>,
) -> Vec<(String, String)> {
    let mut headers = Vec::new();
    for (hname, value) in fields {
        if !valid_header_name(hname) {
            ctx.error(
                value.span(),
                format!(
                    "invalid header name {hname:?}: use printable ASCII letters, digits and '-' (e.g. \"X-Campaign\")"
                ),
            );
        } else if RESERVED_HEADERS.contains(&hname.to_ascii_lowercase().as_str()) {
            ctx.error(
                value.span(),
                format!(
                    "header {hname:?} is written by blast itself and cannot be set in [headers]; remove it"
                ),
            );
        }
        if value.get_ref().chars().any(|c| c.is_control()) {
            ctx.error(
                value.span(),
                format!("header {hname:?} contains a control character (CR, LF, ...); remove it"),
            );
        }
        headers.push((hname.clone(), value.get_ref().clone()));
    }
    headers
}

fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A display name and an address written by the operator; `what` names the key in messages.
pub(super) fn mailbox(
    ctx: &mut Ctx<'_>,
    name: Option<&Spanned<String>>,
    address: &Spanned<String>,
    what: &str,
) -> Option<Mailbox> {
    let mut ok = true;
    let a = address.get_ref().trim();
    if !valid_operator_address(a) {
        ctx.error(
            address.span(),
            format!("{what}: {a:?} is not a valid address; write it as local@domain.tld"),
        );
        ok = false;
    }
    if let Some(n) = name
        && n.get_ref().chars().any(|c| c.is_control())
    {
        ctx.error(
            n.span(),
            "the display name contains a control character; remove it",
        );
        ok = false;
    }
    ok.then(|| Mailbox {
        name: name.map(|n| n.get_ref().clone()).filter(|n| !n.is_empty()),
        address: lowercase_domain(a),
    })
}

/// `[envelope]`: the VERP pattern split around `{token}`. The longest local part it can make
/// with this campaign id must fit in 64 octets.
pub(super) fn envelope(ctx: &mut Ctx<'_>, e: &EnvelopeSection, id: &str) -> Option<Envelope> {
    let verp = e.verp.get_ref();
    let span = e.verp.span();
    let Some((local, domain)) = verp.rsplit_once('@') else {
        ctx.error(
            span,
            format!("envelope.verp {verp:?} has no '@domain'; write e.g. \"b-{{token}}@bounce.example.com\""),
        );
        return None;
    };
    if local.matches("{token}").count() != 1 {
        ctx.error(
            span,
            format!("envelope.verp {verp:?} must contain {{token}} exactly once in the local part, e.g. \"b-{{token}}@bounce.example.com\""),
        );
        return None;
    }
    let (prefix, suffix) = local.split_once("{token}").expect("counted above");
    let affix_ok = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_+=.".contains(&b))
    };
    if !affix_ok(prefix) || !affix_ok(suffix) {
        ctx.error(
            span,
            "envelope.verp: around {token} use only letters, digits and -_+=.",
        );
        return None;
    }
    if !valid_domain(domain) || !domain.contains('.') {
        ctx.error(
            span,
            format!("envelope.verp: {domain:?} is not a valid bounce domain"),
        );
        return None;
    }
    let longest = prefix.len() + suffix.len() + max_token_len(id);
    if longest > 64 {
        ctx.error(
            span,
            format!(
                "envelope.verp: the local part can reach {longest} octets with campaign id {id:?}, over the 64-octet limit; shorten the text around {{token}} or the id"
            ),
        );
        return None;
    }
    let secret_env = e.secret_env.get_ref();
    if !valid_env_name(secret_env) {
        ctx.error(
            e.secret_env.span(),
            format!("envelope.secret_env {secret_env:?} is not an environment variable name; use e.g. \"BLAST_SECRET\""),
        );
    }
    Some(Envelope {
        verp_prefix: prefix.to_string(),
        verp_suffix: suffix.to_string(),
        verp_domain: domain.to_ascii_lowercase(),
        secret_env: secret_env.clone(),
    })
}

/// An inline template string: its text starts on the line of the TOML value (for `"""`
/// strings the text starts on the next line; the engine's line numbers are added to this).
fn inline(ctx: &Ctx<'_>, name: &str, s: &Spanned<String>) -> TemplateSource {
    let raw = &ctx.text[s.span()];
    let multiline = raw.starts_with("\"\"\"\n")
        || raw.starts_with("'''\n")
        || raw.starts_with("\"\"\"\r\n")
        || raw.starts_with("'''\r\n");
    TemplateSource {
        name: name.to_string(),
        text: s.get_ref().clone(),
        file: ctx.file.clone(),
        first_line: ctx.line_of(&s.span()) + usize::from(multiline),
    }
}

fn template_file(ctx: &mut Ctx<'_>, name: &str, s: &Spanned<String>) -> Option<TemplateSource> {
    let path = ctx.path(s.get_ref());
    match read_template(&path) {
        Ok(text) => Some(TemplateSource {
            name: name.to_string(),
            text,
            file: path,
            first_line: 1,
        }),
        Err(message) => {
            ctx.error(s.span(), message);
            None
        }
    }
}

/// A template file's text: a regular file of at most [`MAX_TEMPLATE_FILE`] bytes, read through
/// a bounded reader (a device such as `/dev/zero`, a FIFO or a directory is refused before
/// anything is read from it). The error is the whole problem message.
fn read_template(path: &Path) -> Result<String, String> {
    use crate::private::{ReadProblem, read_regular};
    let bytes = read_regular(path, MAX_TEMPLATE_FILE).map_err(|p| match p {
        ReadProblem::Io(e) => format!("cannot read template {}: {e}", path.display()),
        ReadProblem::TooLarge(_) => {
            format!(
                "template {} {p}, the limit for a template file",
                path.display()
            )
        }
        ReadProblem::NotRegular(_) => format!("template {} {p}", path.display()),
    })?;
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "template {} is not valid UTF-8 (at byte {}); save it as UTF-8",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })
}

fn body(
    ctx: &mut Ctx<'_>,
    inline_v: &Option<Spanned<String>>,
    file_v: &Option<Spanned<String>>,
    name: &str,
    key: &str,
) -> Result<Option<TemplateSource>, ()> {
    match (inline_v, file_v) {
        (Some(i), Some(_)) => {
            ctx.error(
                i.span(),
                format!("message.{key} and message.{key}_file are both set; keep one"),
            );
            Err(())
        }
        (Some(i), None) => Ok(Some(inline(ctx, name, i))),
        (None, Some(f)) => template_file(ctx, name, f).map(Some).ok_or(()),
        (None, None) => Ok(None),
    }
}

pub(super) fn templates(ctx: &mut Ctx<'_>, m: &MessageSection) -> Option<Templates> {
    let subject = inline(ctx, "subject.txt", &m.subject);
    let text = body(ctx, &m.text, &m.text_file, "body.txt", "text");
    let html = body(ctx, &m.html, &m.html_file, "body.html", "html");
    let (text, html) = (text.ok()?, html.ok()?);
    if text.is_none() && html.is_none() {
        ctx.error(
            m.subject.span(),
            "the message has no body: set message.text / message.text_file and/or message.html / message.html_file",
        );
        return None;
    }
    Some(Templates {
        subject,
        to_name: m.to_name.as_ref().map(|t| inline(ctx, "to_name.txt", t)),
        text,
        html,
    })
}

pub(super) fn recipients(ctx: &mut Ctx<'_>, r: &RecipientsSection) -> Option<RecipientsOptions> {
    let path = ctx.path(r.path.get_ref());
    let mut ok = true;
    let problem = match std::fs::metadata(&path) {
        Ok(meta) => crate::private::not_regular(&meta),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (r.generate.is_none())
            .then(|| "does not exist (paths are relative to the campaign file)".to_string()),
        Err(e) => Some(format!("cannot be read: {e}")),
    };
    if let Some(problem) = problem {
        ctx.error(
            r.path.span(),
            format!("recipient list {} {problem}", path.display()),
        );
        ok = false;
    }
    let delimiter = match &r.delimiter {
        None => b',',
        Some(d) => {
            let v = d.get_ref();
            let v = if v == "\\t" { "\t" } else { v.as_str() };
            if v.len() == 1 && v.is_ascii() && v != "\"" && v != "\n" && v != "\r" {
                v.as_bytes()[0]
            } else {
                ctx.error(
                    d.span(),
                    format!(
                        "recipients.delimiter {v:?} must be one ASCII character other than a quote or line break, e.g. \",\" or \";\" or \"\\t\""
                    ),
                );
                ok = false;
                b','
            }
        }
    };
    if !r.header && r.columns.is_none() {
        ctx.error(
            r.address_column.span().start.max(r.path.span().start)..0,
            "recipients.header = false needs recipients.columns = [\"email\", ...] to name the columns",
        );
        ok = false;
    }
    let columns = r.columns.as_ref().map(|c| c.get_ref().clone());
    if let (Some(cols), Some(spanned)) = (&columns, &r.columns)
        && !cols.iter().any(|c| c == r.address_column.get_ref())
    {
        ctx.error(
            spanned.span(),
            format!(
                "recipients.columns does not contain the address column {:?}",
                r.address_column.get_ref()
            ),
        );
        ok = false;
    }
    let max_field_size = sized(
        ctx,
        r.max_field_size.as_ref(),
        DEFAULT_MAX_FIELD_SIZE,
        1 << 10,
        16 << 20,
        "recipients.max_field_size",
    );
    let max_record_size = sized(
        ctx,
        r.max_record_size.as_ref(),
        DEFAULT_MAX_RECORD_SIZE,
        1 << 10,
        64 << 20,
        "recipients.max_record_size",
    );
    ok.then(|| RecipientsOptions {
        path,
        delimiter,
        header: r.header,
        columns,
        address_column: r.address_column.get_ref().clone(),
        dedupe: r.dedupe,
        generate: r.generate,
        max_field_size,
        max_record_size,
    })
}

/// `section` is where the `[unsubscribe]` table is, for problems of the section as a whole.
pub(super) fn unsubscribe(
    ctx: &mut Ctx<'_>,
    u: &UnsubscribeSection,
    section: Range<usize>,
) -> Option<Unsubscribe> {
    let mut ok = true;
    if u.mailto.is_none() && u.url.is_none() {
        ctx.error(
            section,
            "[unsubscribe] needs a mailto and/or a url template (or remove the section)",
        );
        return None;
    }
    if let Some(url) = &u.url
        && !url.get_ref().starts_with("https://")
    {
        ctx.error(
            url.span(),
            "unsubscribe.url must start with https:// (mailbox providers ignore plain http for one-click)",
        );
        ok = false;
    }
    let one_click = match &u.one_click {
        Some(v) if *v.get_ref() && u.url.is_none() => {
            ctx.error(
                v.span(),
                "unsubscribe.one_click = true needs an https unsubscribe.url (RFC 8058)",
            );
            ok = false;
            false
        }
        Some(v) => *v.get_ref(),
        None => u.url.is_some(),
    };
    ok.then(|| Unsubscribe {
        mailto: u
            .mailto
            .as_ref()
            .map(|m| inline(ctx, "unsubscribe_mailto.txt", m)),
        url: u
            .url
            .as_ref()
            .map(|m| inline(ctx, "unsubscribe_url.txt", m)),
        one_click,
    })
}
