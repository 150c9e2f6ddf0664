//! `blast send`: lock the campaign, choose the run ([`crate::send::plan`]), prepare the campaign, run
//! the pipeline ([`crate::send`]), record the end of the run, print the summary, exit.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use super::prepare::{Purpose, prepare, report_problems};
use super::{BadInput, exit};
use crate::campaign::Campaign;
use crate::journal::RowSet;
use crate::send::dispatch::End;
use crate::send::plan::{Planned, RunFlags, RunPlan, lock_campaign, shard_outputs};
use crate::send::{Journaling, Report, SendOptions, Signal};

/// The exit code of a finished `blast send` (see the module doc of [`crate::cli`]).
pub fn exit_code(report: &Report) -> u8 {
    match (report.signal, report.end) {
        (Some(Signal::Interrupt), _) => exit::SIGINT,
        (Some(Signal::Terminate), _) => exit::SIGTERM,
        (None, End::AllNodesDown) => exit::TEMPFAIL,
        _ if report.failed + report.expired + report.render_errors > 0 => exit::SOME_FAILED,
        _ => exit::OK,
    }
}

/// The summary printed at the end of a run, ending with the exit code.
pub fn summary(report: &Report, rejects: Option<&Path>) -> String {
    crate::report::RunSummary::new(report, exit_code(report))
        .rejects_file(rejects)
        .to_string()
}

/// Writes the summary as JSON to `path` (through a temporary file: never half a file).
fn write_summary_json(
    path: &Path,
    report: &Report,
    run: Option<(i64, crate::journal::RunState)>,
) -> anyhow::Result<()> {
    let mut v = crate::report::summary_json(report, exit_code(report));
    if let Some((id, state)) = run {
        v["run"] = serde_json::json!({"id": id, "state": state.as_str()});
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, format!("{v:#}\n"))
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| format!("cannot write {}", path.display()))
}

pub fn send(a: super::SendArgs) -> anyhow::Result<ExitCode> {
    let opts = &SendOptions {
        dry_run: a.dry_run,
        limit: a.limit,
        mode: crate::send::progress::Mode::detect(a.quiet),
        grace: a.grace,
        shard: a.shard,
    };
    let flags = &RunFlags {
        new_run: a.new_run,
        force: a.force,
        not_after: a.not_after,
        no_journal: a.no_journal,
    };
    let (path, to, summary_json) = (
        a.campaign.as_path(),
        a.to.as_deref(),
        a.summary_json.as_deref(),
    );
    let journaled = to.is_none() && !opts.dry_run && !flags.no_journal;
    let mut loaded = Campaign::load(path).map_err(|e| BadInput(e.to_string()))?;
    // The journal path without `--shard`: every sharding's journal is named after it.
    let base_journal = loaded.output.journal.clone();
    shard_outputs(&mut loaded, opts.shard);
    let _lock = if to.is_none() && !opts.dry_run {
        Some(lock_campaign(&loaded)?)
    } else {
        None
    };
    if journaled && flags.new_run && loaded.all_embedded() {
        start_demo_over(&loaded)?;
    }
    let plan = if journaled {
        match RunPlan::choose(&loaded, &base_journal, opts.shard, flags)? {
            Planned::Finished(r) => {
                println!(
                    "run {} already finished at {}, nothing to do",
                    r.id,
                    r.ended_at.as_deref().unwrap_or("?")
                );
                return Ok(ExitCode::SUCCESS);
            }
            Planned::Run(plan) => Some(plan),
        }
    } else {
        None
    };
    let rejects = (to.is_none() && !opts.dry_run).then(|| loaded.output.rejects.clone());
    let (mut campaign, source, renderer) = match prepare(path, rejects.clone(), Purpose::Send) {
        Ok(t) => t,
        Err(problems) => return Ok(report_problems(&problems)),
    };
    shard_outputs(&mut campaign, opts.shard);
    if let Some(to) = to {
        crate::send::source::check_address(to)
            .map_err(|e| BadInput(format!("--to {to:?}: {e}")))?;
        let line = crate::send::send_one(&campaign, source, renderer, to)?;
        // The relay's reply.
        println!("{}", crate::terminal::Printable(&line));
        return Ok(ExitCode::SUCCESS);
    }
    let Some(plan) = plan else {
        let report = crate::send::run(&campaign, source, renderer, opts)
            .with_context(|| format!("sending {}", path.display()))?;
        println!("{}", summary(&report, rejects.as_deref()));
        if let Some(p) = summary_json {
            write_summary_json(p, &report, None)?;
        }
        return Ok(ExitCode::from(exit_code(&report)));
    };
    let mut run = plan.start(&campaign)?;
    if let Some(r) = &run.resumed {
        eprintln!(
            "blast: resuming run {} (started {}): {} rows already final, {} attempted without an outcome (re-sent, possibly duplicated); journal read in {} ms{}",
            r.run.id,
            r.run.started_at,
            r.finals,
            r.unconfirmed,
            r.read_in.as_millis(),
            match r.log_lines_repaired {
                0 => String::new(),
                n => format!(
                    "; {n} delivery log lines the last session did not write added from the journal"
                ),
            }
        );
    }
    let mut writer = run.journal.writer(run.id, 65_536)?;
    writer.set_unconfirmed(std::mem::replace(&mut run.unconfirmed, RowSet::new()));
    let result = crate::send::run_with(
        &campaign,
        source,
        renderer,
        opts,
        Some(Journaling {
            writer,
            skip: std::mem::replace(&mut run.skip, RowSet::new()),
        }),
    );
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            run.abandon();
            return Err(e).with_context(|| format!("sending {}", path.display()));
        }
    };
    let state = run.finish(&report)?;
    println!("{}", summary(&report, rejects.as_deref()));
    if let Some(p) = summary_json {
        write_summary_json(p, &report, Some((run.id, state)))?;
    }
    println!(
        "run        {} {}{}",
        run.id,
        state.as_str(),
        if state == crate::journal::RunState::Finished {
            String::new()
        } else {
            format!("; `blast send {}` resumes it", campaign.path.display())
        }
    );
    Ok(ExitCode::from(exit_code(&report)))
}

/// `--new-run` of a campaign whose nodes are all the embedded receiver (the demo): nothing
/// left the machine, so the previous runs' journal and delivery log are worth nothing and are
/// replaced, not appended to (six demo runs used to leave 640 MB behind).
fn start_demo_over(c: &Campaign) -> anyhow::Result<()> {
    let mut freed = crate::journal::remove_files(&c.output.journal)?;
    for p in [&c.output.delivery_log, &c.output.rejects] {
        match std::fs::metadata(p) {
            Ok(m) => {
                std::fs::remove_file(p)
                    .with_context(|| format!("cannot remove {}", p.display()))?;
                freed += m.len();
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", p.display())),
        }
    }
    eprintln!(
        "blast: embedded receiver only: --new-run starts over ({} MB of the previous run's journal and delivery log removed)",
        freed.div_ceil(1 << 20)
    );
    Ok(())
}
