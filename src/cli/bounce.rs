//! The bounce side: `blast sink` (the bounce MX), `blast suppress …` (the suppression list by
//! hand) and `blast bounce classify` (what the sink would make of a message).

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;

use anyhow::Context;
use serde_json::json;

use super::{BadInput, SuppressCommand};
use crate::bounce::dsn::classify;
use crate::bounce::sink::{SinkOptions, start};
use crate::bounce::suppression::{Entry, Source, Suppressions};
use crate::terminal::Printable;
use crate::verp::VerpKey;

/// `blast bounce classify FILE...|-`.
pub fn cmd_classify(files: &[PathBuf]) -> anyhow::Result<std::process::ExitCode> {
    let mut out = std::io::stdout().lock();
    for f in files {
        let raw = if f.as_os_str() == "-" {
            let mut v = Vec::new();
            std::io::stdin().read_to_end(&mut v)?;
            v
        } else {
            std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?
        };
        let c = classify(&raw);
        let file = f.display().to_string();
        if c.recipients.is_empty() {
            let line = json!({"file": file, "kind": c.kind.as_str(), "recipient": null});
            writeln!(out, "{}", crate::terminal::json(&line))?;
        }
        for r in &c.recipients {
            // Diagnostics are the bounce's text: C1 controls too are escaped.
            let line = json!({
                "file": file, "kind": c.kind.as_str(), "recipient": r.address,
                "action": r.action, "status": r.status, "reply_code": r.reply_code,
                "reason": r.reason.as_str(), "hard": r.hard,
                "suppress": c.suppresses(r), "diagnostic": r.diagnostic,
            });
            writeln!(out, "{}", crate::terminal::json(&line))?;
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// `blast suppress …`.
pub fn cmd_suppress(
    db: Option<PathBuf>,
    campaign: Option<PathBuf>,
    command: SuppressCommand,
) -> anyhow::Result<std::process::ExitCode> {
    let path = match (db, campaign) {
        (Some(db), _) => db,
        (None, Some(c)) => {
            crate::campaign::Campaign::load(&c)
                .map_err(|e| BadInput(e.to_string()))?
                .suppression
                .path
        }
        (None, None) => {
            return Err(BadInput("give the list with --db PATH or --campaign FILE".into()).into());
        }
    };
    let mut list = Suppressions::open(&path)?;
    match command {
        SuppressCommand::Add { addresses, reason } => {
            for a in addresses {
                if !a.contains('@') {
                    return Err(BadInput(format!("{a:?} is not an address")).into());
                }
                let new = list.add(&Entry::new(&a, Source::Manual, &reason))?;
                println!(
                    "{} {}",
                    if new { "added" } else { "updated" },
                    Printable(&crate::bounce::suppression::normalize(&a))
                );
            }
        }
        SuppressCommand::Remove { addresses } => {
            for a in addresses {
                let gone = list.remove(&a)?;
                println!(
                    "{} {}",
                    if gone { "removed" } else { "not listed" },
                    Printable(&crate::bounce::suppression::normalize(&a))
                );
            }
        }
        SuppressCommand::List => {
            let terminal = std::io::stdout().is_terminal();
            list.export(std::io::stdout().lock(), terminal)?;
        }
        SuppressCommand::Import { file, reason } => {
            let (added, present) = if file.as_os_str() == "-" {
                list.import(std::io::stdin().lock(), &reason)
            } else {
                let f = std::fs::File::open(&file)
                    .with_context(|| format!("cannot open {}", file.display()))?;
                list.import(std::io::BufReader::new(f), &reason)
            }
            .map_err(|e| BadInput(e.to_string()))?;
            println!("imported {added} addresses ({present} already listed)");
        }
        SuppressCommand::Export { out } => {
            let n = match out {
                Some(p) => {
                    let f = crate::private::create(&p)
                        .with_context(|| format!("cannot create {}", p.display()))?;
                    list.export(std::io::BufWriter::new(f), false)?
                }
                None => {
                    let terminal = std::io::stdout().is_terminal();
                    list.export(std::io::stdout().lock(), terminal)?
                }
            };
            eprintln!("blast: exported {n} addresses");
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// `blast sink …`: runs until SIGTERM/SIGINT, then stops cleanly.
pub fn cmd_sink(a: super::SinkArgs) -> anyhow::Result<std::process::ExitCode> {
    let journal = match (a.journal, a.campaign) {
        (Some(j), _) => Some(j),
        (None, Some(c)) => Some(
            crate::campaign::Campaign::load(&c)
                .map_err(|e| BadInput(e.to_string()))?
                .output
                .journal,
        ),
        (None, None) => None,
    };
    let mut opts = SinkOptions::new(a.listen, a.domains, a.db);
    opts.discard = a.discard;
    opts.quarantine = a.quarantine;
    opts.max_connections = a.max_connections;
    opts.max_connections_per_ip = a.max_connections_per_ip as usize;
    opts.max_size = a.max_size;
    opts.soft_bounce_limit = a.soft_bounce_limit;
    opts.bounce_log = a.bounce_log;
    opts.journal = journal;
    opts.command_timeout = a.command_timeout;
    opts.line_timeout = a.line_timeout;
    opts.busy_timeout = a.busy_timeout;
    opts.session_timeout = a.session_timeout;
    opts.data_timeout = a.data_timeout;
    opts.max_errors = a.max_errors;
    let secret_env = &a.secret_env;
    match std::env::var(secret_env) {
        Ok(s) => {
            opts.key = Some(
                VerpKey::new(s.as_bytes()).map_err(|e| BadInput(format!("{secret_env}: {e}")))?,
            )
        }
        Err(_) if opts.discard => {}
        Err(_) => {
            return Err(BadInput(format!(
                "environment variable {secret_env} is not set: the sink needs the VERP secret to trust a bounce"
            ))
            .into());
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut signals = crate::shutdown::Signals::listen()?;
        let handle = start(opts).await?;
        eprintln!("blast: sink listening on {}", handle.addr());
        signals.next().await;
        eprintln!("blast: stopping");
        let stats = handle.shutdown().await;
        eprintln!(
            "blast: sink stopped: {} messages, {} suppressed, {} soft, {} delay warnings, {} forged tokens, {} quarantined",
            stats.messages, stats.suppressed, stats.soft, stats.delayed, stats.forged, stats.quarantined
        );
        Ok(std::process::ExitCode::SUCCESS)
    })
}
