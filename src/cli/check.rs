//! `blast check` and `blast preview`: validate a campaign and render sample rows; print the
//! exact message one recipient would get.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use super::BadInput;
use super::prepare::{Purpose, prepare, report_problems};
use crate::campaign::NodeAddress;
use crate::clock::unix_now;
use crate::send::render::Renderer;
use crate::terminal::{printable, printable_lines};

pub fn check(path: &Path, sample: u64, dns: bool) -> anyhow::Result<ExitCode> {
    let (campaign, mut source, renderer) = match prepare(path, None, Purpose::Inspect) {
        Ok(t) => t,
        Err(problems) => return Ok(report_problems(&problems)),
    };
    source.keep_first_rejects(5);
    let mut problems = Vec::new();
    let now = unix_now();
    let mut rendered = 0u64;
    let mut bytes = 0u64;
    while source.stats().rows < sample {
        let Some(r) = source
            .next_recipient()
            .context("reading the recipient list")?
        else {
            break;
        };
        match renderer.render(r, now) {
            Ok(m) => {
                rendered += 1;
                bytes += m.bytes.len() as u64;
            }
            Err(e) => {
                if problems.len() < 20 {
                    problems.push(e.to_string());
                }
            }
        }
    }
    let first_rejects = source.first_rejects().to_vec();
    let stats = source.finish().context("reading the recipient list")?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "campaign   {} ({})", campaign.id, campaign.name)?;
    writeln!(out, "file       {}", campaign.path.display())?;
    writeln!(
        out,
        "list       {} — columns: {}",
        campaign.recipients.path.display(),
        renderer_columns(&renderer)
    )?;
    writeln!(
        out,
        "sampled    {} rows: {} accepted, {} rejected, {} rendered (avg {} bytes)",
        stats.rows,
        stats.accepted,
        stats.rejected,
        rendered,
        bytes.checked_div(rendered).unwrap_or(0)
    )?;
    for (kind, n) in stats.rejected_by_kind().filter(|(_, n)| *n > 0) {
        writeln!(out, "  rejected {n:>8}  {kind}")?;
    }
    // Reasons quote the list's column names: anyone's text.
    for (row, line, reason) in &first_rejects {
        writeln!(
            out,
            "  row {row} (line {line}): {}",
            printable(&reason.to_string())
        )?;
    }
    if stats.rejected > 0 {
        writeln!(
            out,
            "rejects    `blast send` writes every rejected row with its reason to {}",
            campaign.output.rejects.display()
        )?;
    }
    for n in &campaign.nodes {
        let addr = match &n.address {
            NodeAddress::Remote { host, port } => format!("{host}:{port}"),
            NodeAddress::Embedded => "embedded receiver".to_string(),
        };
        writeln!(
            out,
            "node       {} {} tls={:?} weight={} connections={} per-connection={}{}{}",
            n.name,
            addr,
            n.tls,
            n.weight,
            n.max_connections,
            n.messages_per_connection,
            n.rate.map(|r| format!(" rate={r}")).unwrap_or_default(),
            if n.fallback { " fallback" } else { "" }
        )?;
    }
    if let Some(d) = &campaign.dkim {
        for s in &d.signers {
            writeln!(
                out,
                "dkim       d={} s={} a={} ({} bits, {}); DNS: {}._domainkey.{}",
                s.domain,
                s.selector,
                s.key.algorithm(),
                s.key.bits(),
                s.key_file.display(),
                s.selector,
                s.domain
            )?;
        }
        if let Some(f) = &d.feedback_id {
            writeln!(out, "feedback   Feedback-ID: {f}")?;
        }
    }
    for w in crate::campaign::alignment_warnings(&campaign) {
        eprintln!("blast: warning: {}", printable_lines(&w.to_string()));
    }
    for w in renderer.warnings() {
        eprintln!("blast: warning: {w}");
    }
    let configured = std::fs::read_to_string(path).is_ok_and(|t| {
        toml::from_str::<toml::Table>(&t).is_ok_and(|t| {
            t.get("dns")
                .and_then(|d| d.as_table())
                .is_some_and(|d| d.contains_key("servers") || d.contains_key("upstream"))
        })
    });
    if dns || configured {
        // DNS answers (TXT records) are anyone's text.
        for w in crate::dns::sender_checks(&campaign) {
            eprintln!("blast: warning: {}", printable_lines(&w.to_string()));
        }
    }
    if !problems.is_empty() {
        return Ok(report_problems(&problems));
    }
    writeln!(out, "ok")?;
    Ok(ExitCode::SUCCESS)
}

/// The list's column names (the list's header: anyone's text).
fn renderer_columns(r: &Renderer) -> String {
    printable(&r.columns().names().join(", ")).into_owned()
}

pub fn preview(path: &Path, row: u64, out: Option<&Path>) -> anyhow::Result<ExitCode> {
    let (_campaign, mut source, renderer) = match prepare(path, None, Purpose::Inspect) {
        Ok(t) => t,
        Err(problems) => return Ok(report_problems(&problems)),
    };
    if row == 0 {
        return Err(BadInput(
            "no row 0: rows are numbered from 1 (the first data row after the header is row 1)"
                .into(),
        )
        .into());
    }
    source.watch(row);
    let recipient = loop {
        match source
            .next_recipient()
            .context("reading the recipient list")?
        {
            Some(r) if r.row == row => break r,
            Some(r) if r.row < row => continue,
            _ => {}
        }
        let rows = source.stats().rows;
        let why = match source.watched_reject() {
            // The reason quotes the list (column names): anyone's text.
            Some(reason) => format!("row {row} was rejected: {}", printable(&reason.to_string())),
            None => format!("row {row} not found: the list has {rows} rows"),
        };
        return Err(BadInput(why).into());
    };
    let message = renderer
        .render(recipient, unix_now())
        .map_err(|e| BadInput(e.to_string()))?;
    match out {
        Some(p) => std::fs::write(p, &message.bytes)
            .with_context(|| format!("cannot write {}", p.display()))?,
        None => {
            let mut o = std::io::stdout().lock();
            o.write_all(&message.bytes)?;
            o.flush()?;
        }
    }
    eprintln!(
        "blast: row {} → {} (MAIL FROM:<{}>, Message-ID <{}>)",
        message.row, message.rcpt, message.mail_from, message.message_id
    );
    Ok(ExitCode::SUCCESS)
}
