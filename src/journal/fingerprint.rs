//! The fingerprints that identify a run: the recipient list's bytes ([`list_fingerprint`]) and
//! everything that shapes a message besides the row ([`template_fingerprint`]).

use std::path::Path;

use crate::campaign::Campaign;

/// SHA-256 (hex) of the recipient list's bytes: with the campaign id, the identity of a run.
pub fn list_fingerprint(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(hex(ctx.finish().as_ref()))
}

/// SHA-256 (hex) over everything that shapes a message besides the row: the subject, To name,
/// text, HTML and unsubscribe templates, From, Reply-To and the fixed headers.
pub fn template_fingerprint(c: &Campaign) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut field = |name: &str, value: Option<&str>| {
        // Length-prefixed, so that moving text between fields changes the fingerprint.
        for part in [Some(name), value] {
            match part {
                Some(s) => {
                    ctx.update(&(s.len() as u64).to_le_bytes());
                    ctx.update(s.as_bytes());
                }
                None => ctx.update(&u64::MAX.to_le_bytes()),
            }
        }
    };
    let t = &c.templates;
    field("subject", Some(&t.subject.text));
    field("to_name", t.to_name.as_ref().map(|s| s.text.as_str()));
    field("text", t.text.as_ref().map(|s| s.text.as_str()));
    field("html", t.html.as_ref().map(|s| s.text.as_str()));
    let unsub = c.unsubscribe.as_ref();
    field(
        "unsubscribe.mailto",
        unsub
            .and_then(|u| u.mailto.as_ref())
            .map(|s| s.text.as_str()),
    );
    field(
        "unsubscribe.url",
        unsub.and_then(|u| u.url.as_ref()).map(|s| s.text.as_str()),
    );
    field(
        "unsubscribe.one_click",
        Some(if unsub.is_some_and(|u| u.one_click) {
            "1"
        } else {
            "0"
        }),
    );
    field("from.name", c.from.name.as_deref());
    field("from.address", Some(&c.from.address));
    field(
        "reply_to.name",
        c.reply_to.as_ref().and_then(|m| m.name.as_deref()),
    );
    field(
        "reply_to.address",
        c.reply_to.as_ref().map(|m| m.address.as_str()),
    );
    for (k, v) in &c.headers {
        field(&format!("header.{k}"), Some(v));
    }
    hex(ctx.finish().as_ref())
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
