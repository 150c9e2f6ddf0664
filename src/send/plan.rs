//! Which run a `blast send` works on: start a new one, resume an unfinished one, or find that
//! the list's latest run is finished — decided from the journal before the list is read — and
//! the end of the run (finished or stopped) once the pipeline returns.
//!
//! Also owns the guards around a run: one sender per campaign (the lock), the resharding guard
//! (a list sent under another `--shard` N is refused), changed templates under an unfinished
//! run, and `not_after`. Each refusal is a [`PlanError`] that says whether the operator must
//! fix something ([`PlanError::is_bad_input`]) or try again later ([`PlanError::is_temporary`]).
//!
//! Uses: campaign, journal, shard, send (its `Journaling` and `Report`). Nothing here prints.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::campaign::{Campaign, TimeOfDay};
use crate::journal::{CampaignLock, Journal, JournalError, LockError, RowSet, RunInfo, RunState};
use crate::send::shard::Shard;

/// Why a run cannot start or resume.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// Another `blast send` holds the campaign lock.
    #[error("campaign {campaign} is being sent by another blast ({holder})")]
    Locked { campaign: String, holder: String },
    #[error("cannot take the lock {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Templates changed under an unfinished run (without `--force`).
    #[error(
        "run {run} of campaign {campaign} is unfinished and its templates (subject, bodies, unsubscribe, From or headers) changed since it started: resuming would send different messages to the rest of the list. Restore them, or pass --force to resume with the new templates, or --new-run to start over"
    )]
    TemplatesChanged { run: i64, campaign: String },
    /// The list was already sent under another sharding (without `--force`).
    #[error("{0}")]
    Resharded(String),
    /// `not_after`: too late in the day.
    #[error("{0}")]
    TooLate(String),
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "reading {path} to check that this list was not sent under another sharding (--force skips the check)"
    )]
    SiblingJournal {
        path: PathBuf,
        #[source]
        source: JournalError,
    },
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Log(#[from] crate::send::log::LogError),
}

impl PlanError {
    /// The operator must change something (exit 2).
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            PlanError::TemplatesChanged { .. } | PlanError::Resharded(_)
        )
    }

    /// May clear by itself: try again later (exit 75).
    pub fn is_temporary(&self) -> bool {
        matches!(self, PlanError::Locked { .. } | PlanError::TooLate(_))
    }
}

/// How `blast send` picks its run.
#[derive(Debug, Clone, Default)]
pub struct RunFlags {
    pub new_run: bool,
    pub force: bool,
    pub not_after: Option<TimeOfDay>,
    /// `--no-journal` (hidden, for benchmarks).
    pub no_journal: bool,
}

/// Which run a `blast send` works on, decided from the journal before anything is read.
#[allow(clippy::large_enum_variant)] // one per run, moved once
enum RunChoice {
    Resume(RunInfo),
    New,
}

/// What [`RunPlan::choose`] found.
pub enum Planned {
    /// The list's latest run is finished: nothing to do.
    Finished(RunInfo),
    /// A run to start or resume, once the list and templates are loaded.
    Run(Box<RunPlan>),
}

/// A run chosen but not started yet.
pub struct RunPlan {
    journal: Journal,
    choice: RunChoice,
    /// Empty when the list did not exist yet at [`RunPlan::choose`] (the demo list).
    list_fp: String,
    tpl_fp: String,
    /// The journal path without `--shard`: every sharding's journal is named after it.
    base_journal: PathBuf,
    shard: Option<Shard>,
    force: bool,
}

/// A run resumed: what the journal said.
#[derive(Debug, Clone)]
pub struct Resumed {
    pub run: RunInfo,
    pub finals: u64,
    pub unconfirmed: u64,
    pub read_in: Duration,
    /// Delivery log lines written from the journal (a killed session's lost lines).
    pub log_lines_repaired: u64,
}

/// A run started (or resumed) in the journal.
pub struct StartedRun {
    pub journal: Journal,
    pub id: i64,
    /// Rows with a final outcome in earlier sessions: skipped before rendering.
    pub skip: RowSet,
    /// Rows attempted without an outcome in earlier sessions (re-sent, possibly duplicated).
    pub unconfirmed: RowSet,
    pub resumed: Option<Resumed>,
}

/// `--shard K/N`: the shard's own journal (and so lock), delivery log and rejects file.
pub fn shard_outputs(campaign: &mut Campaign, shard: Option<Shard>) {
    if let Some(s) = shard {
        let o = &mut campaign.output;
        o.journal = s.path(&o.journal);
        o.delivery_log = s.path(&o.delivery_log);
        o.rejects = s.path(&o.rejects);
    }
}

/// One sender per campaign: the lock comes before anything is written (rejects, journal).
pub fn lock_campaign(campaign: &Campaign) -> Result<CampaignLock, PlanError> {
    match CampaignLock::acquire(&campaign.output.journal) {
        Ok(l) => Ok(l),
        Err(LockError::Held { pid }) => Err(PlanError::Locked {
            campaign: campaign.id.clone(),
            holder: pid.map_or_else(|| "pid unknown".to_string(), |p| format!("pid {p}")),
        }),
        Err(LockError::Io(source)) => Err(PlanError::Lock {
            path: crate::journal::lock_path(&campaign.output.journal),
            source,
        }),
    }
}

impl RunPlan {
    /// Chooses the run of `campaign` (outputs already sharded, see [`shard_outputs`]): the
    /// latest run over the same list bytes, resumed unless finished; else a new one. Applies
    /// the resharding guard and `not_after`. A first send creates the journal only once the
    /// guards let it start.
    pub fn choose(
        campaign: &Campaign,
        base_journal: &Path,
        shard: Option<Shard>,
        flags: &RunFlags,
    ) -> Result<Planned, PlanError> {
        let journal_path = &campaign.output.journal;
        let journal = if journal_path.exists() {
            Some(Journal::open(journal_path)?)
        } else {
            None
        };
        let list = &campaign.recipients.path;
        // The demo list is generated later (when the campaign is prepared): fingerprinted then.
        let (choice, list_fp, tpl_fp) = if list.exists() {
            let (choice, list_fp, tpl_fp) = choose_run(journal.as_ref(), campaign, flags)?;
            let choice = match choice {
                Chosen::Finished(r) => return Ok(Planned::Finished(r)),
                Chosen::Resume(r) => RunChoice::Resume(r),
                Chosen::New => {
                    if !flags.force {
                        check_sharding(base_journal, campaign, shard, &list_fp)?;
                    }
                    RunChoice::New
                }
            };
            (choice, list_fp, tpl_fp)
        } else {
            (RunChoice::New, String::new(), String::new())
        };
        check_not_after(campaign, flags, &choice)?;
        let journal = match journal {
            Some(j) => j,
            None => Journal::open(journal_path)?,
        };
        Ok(Planned::Run(Box::new(RunPlan {
            journal,
            choice,
            list_fp,
            tpl_fp,
            base_journal: base_journal.to_path_buf(),
            shard,
            force: flags.force,
        })))
    }

    /// Starts the run (or resumes it) in the journal, once the campaign is prepared.
    pub fn start(self, campaign: &Campaign) -> Result<StartedRun, PlanError> {
        let RunPlan {
            journal,
            choice,
            mut list_fp,
            tpl_fp,
            base_journal,
            shard,
            force,
        } = self;
        if list_fp.is_empty() {
            // A list generated just now (the demo): same guard as in `choose`.
            list_fp = fingerprint_list(campaign)?;
            if !force {
                check_sharding(&base_journal, campaign, shard, &list_fp)?;
            }
        }
        let tpl_fp = if tpl_fp.is_empty() {
            crate::journal::template_fingerprint(campaign)
        } else {
            tpl_fp
        };
        match choice {
            RunChoice::Resume(run) => {
                let loading = Instant::now();
                let finals = journal.final_rows(run.id)?;
                let unconfirmed = journal.unconfirmed_rows(run.id, &finals)?;
                journal.resume_run(run.id, &tpl_fp)?;
                let log_lines_repaired = crate::send::log::repair(
                    &campaign.output.delivery_log,
                    journal.log_offset(run.id)?,
                    &journal,
                    run.id,
                )?;
                let resumed = Resumed {
                    finals: finals.len(),
                    unconfirmed: unconfirmed.len(),
                    read_in: loading.elapsed(),
                    run: run.clone(),
                    log_lines_repaired,
                };
                Ok(StartedRun {
                    journal,
                    id: run.id,
                    skip: finals,
                    unconfirmed,
                    resumed: Some(resumed),
                })
            }
            RunChoice::New => {
                let id = journal.create_run(
                    &campaign.id,
                    &list_fp,
                    &tpl_fp,
                    &campaign.recipients.path,
                )?;
                // Where this run's lines will start in the delivery log (see `log::repair`).
                let log_len =
                    std::fs::metadata(&campaign.output.delivery_log).map_or(0, |m| m.len());
                journal.set_log_offset(id, log_len)?;
                Ok(StartedRun {
                    journal,
                    id,
                    skip: RowSet::new(),
                    unconfirmed: RowSet::new(),
                    resumed: None,
                })
            }
        }
    }
}

impl StartedRun {
    /// Records the end of the session: finished if the whole list reached a final outcome,
    /// else stopped (a later `blast send` resumes it). Also records the DNS counters.
    pub fn finish(&self, report: &crate::send::Report) -> Result<RunState, PlanError> {
        let state = if run_complete(report) {
            RunState::Finished
        } else {
            RunState::Stopped
        };
        self.journal.end_run(self.id, state)?;
        if let Some(d) = &report.dns
            && let Err(e) = self.journal.record_dns(self.id, d)
        {
            tracing::warn!("{e}: the DNS counters of this session are not in the journal");
        }
        Ok(state)
    }

    /// The pipeline failed: the run is stopped (resumable).
    pub fn abandon(&self) {
        let _ = self.journal.end_run(self.id, RunState::Stopped);
    }
}

/// Every row of the list reached a final outcome in this run (across sessions).
fn run_complete(report: &crate::send::Report) -> bool {
    report.end == crate::send::dispatch::End::Done
        && report.signal.is_none()
        && report.list_complete
        // Rows that cannot be rendered are final `failed` outcomes, counted in `j.outcomes`.
        // Rows final in earlier sessions are counted apart (`source.done`), not as accepted.
        && report.suppressed
            + report.shard.map_or(0, |(_, other)| other)
            + report.journal.map_or(0, |j| j.outcomes)
            == report.source.accepted
}

fn fingerprint_list(campaign: &Campaign) -> Result<String, PlanError> {
    crate::journal::list_fingerprint(&campaign.recipients.path).map_err(|source| PlanError::Io {
        what: "reading",
        path: campaign.recipients.path.clone(),
        source,
    })
}

/// The resharding guard. Which journal a row's outcome lands in depends on the sharding
/// (`--shard K/N`, or none), so a list already sent under another one (a different N, or sharded
/// vs unsharded) has its done rows in journals this send does not read: it would send them
/// again. Refuses to start a run when a journal of another sharding beside this one holds a run
/// of `campaign` over the same list bytes; `--force` skips the check.
fn check_sharding(
    base_journal: &Path,
    campaign: &Campaign,
    shard: Option<Shard>,
    list_fp: &str,
) -> Result<(), PlanError> {
    let other_scheme = |s: Option<Shard>| match (s, shard) {
        (None, None) => false,
        (Some(a), Some(b)) => a.count() != b.count(),
        _ => true,
    };
    let siblings = crate::send::shard::existing(base_journal).map_err(|source| PlanError::Io {
        what: "listing the journals beside",
        path: base_journal.to_path_buf(),
        source,
    })?;
    let mut found = Vec::new();
    let mut schemes: Vec<String> = Vec::new();
    for (sharding, file) in siblings {
        if !other_scheme(sharding) {
            continue;
        }
        let runs = Journal::open_read_only(&file)
            .and_then(|j| j.runs_of_list(&campaign.id, list_fp))
            .map_err(|source| PlanError::SiblingJournal {
                path: file.clone(),
                source,
            })?;
        let Some((run, finals)) = runs.last() else {
            continue;
        };
        found.push(format!(
            "{} ({}: run {} {}, {} rows final)",
            file.display(),
            crate::send::shard::describe(sharding),
            run.id,
            run.state.as_str(),
            finals
        ));
        let scheme = match sharding {
            Some(s) => format!("--shard K/{}", s.count()),
            None => "no --shard".to_string(),
        };
        if !schemes.contains(&scheme) {
            schemes.push(scheme);
        }
    }
    if found.is_empty() {
        return Ok(());
    }
    Err(PlanError::Resharded(format!(
        "campaign {}: the list {} was already sent under another sharding, recorded in {}. This send ({}, journal {}) does not read those journals and would send their rows again. Send it with the sharding it was started with ({}), or pass --force to start anyway (rows already sent there get the message again)",
        campaign.id,
        campaign.recipients.path.display(),
        found.join("; "),
        crate::send::shard::describe(shard),
        campaign.output.journal.display(),
        schemes.join(" or "),
    )))
}

#[allow(clippy::large_enum_variant)] // one per run, moved once
enum Chosen {
    Finished(RunInfo),
    Resume(RunInfo),
    New,
}

/// Finds the run to work on: the latest run of this campaign over the same list bytes.
fn choose_run(
    journal: Option<&Journal>,
    campaign: &Campaign,
    flags: &RunFlags,
) -> Result<(Chosen, String, String), PlanError> {
    let list_fp = fingerprint_list(campaign)?;
    let tpl_fp = crate::journal::template_fingerprint(campaign);
    let latest = match journal {
        Some(j) if !flags.new_run => j.latest_run(&campaign.id, &list_fp)?,
        _ => None,
    };
    let choice = match latest {
        None => Chosen::New,
        Some(r) if r.state == RunState::Finished => Chosen::Finished(r),
        Some(r) => {
            if r.template_fingerprint != tpl_fp && !flags.force {
                return Err(PlanError::TemplatesChanged {
                    run: r.id,
                    campaign: campaign.id.clone(),
                });
            }
            Chosen::Resume(r)
        }
    };
    Ok((choice, list_fp, tpl_fp))
}

/// `not_after` (campaign or `--not-after`): no run starts or resumes after that time of day.
fn check_not_after(
    campaign: &Campaign,
    flags: &RunFlags,
    choice: &RunChoice,
) -> Result<(), PlanError> {
    let Some(limit) = flags.not_after.or(campaign.schedule.not_after) else {
        return Ok(());
    };
    let now = TimeOfDay::now_utc();
    if now > limit {
        let what = match choice {
            RunChoice::Resume(r) => format!("resume run {}", r.id),
            RunChoice::New => "start a new run".to_string(),
        };
        return Err(PlanError::TooLate(format!(
            "not_after {limit} UTC: it is {now} UTC, too late to {what} of campaign {}; it will run at the next scheduled time (or pass --not-after to override)",
            campaign.id
        )));
    }
    Ok(())
}
