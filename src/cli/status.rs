//! `blast status`: the journal of a campaign's current or last run, as text or JSON.

use std::path::Path;
use std::process::ExitCode;

use super::BadInput;
use crate::campaign::Campaign;
use crate::journal::{CampaignLock, Journal, JournalError};
use crate::send::plan::shard_outputs;

pub fn status(
    path: &Path,
    json: bool,
    shard: Option<crate::send::shard::Shard>,
) -> anyhow::Result<ExitCode> {
    let mut campaign = Campaign::load(path).map_err(|e| BadInput(e.to_string()))?;
    shard_outputs(&mut campaign, shard);
    let journal_path = &campaign.output.journal;
    let journal = match Journal::open_read_only(journal_path) {
        Ok(j) => Some(j),
        Err(JournalError::Missing { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let run = match &journal {
        Some(j) => j.last_run(&campaign.id)?,
        None => None,
    };
    let (Some(journal), Some(run)) = (journal, run) else {
        if json {
            println!(
                "{}",
                serde_json::json!({"campaign": campaign.id, "journal": journal_path.display().to_string(), "run": null})
            );
        } else {
            println!(
                "campaign {}: no run yet (journal {})",
                campaign.id,
                journal_path.display()
            );
        }
        return Ok(ExitCode::SUCCESS);
    };
    let report = journal.status(&run, CampaignLock::holder(journal_path))?;
    // Bounces come from the suppression list next to the campaign (what `blast sink` recorded).
    let bounces = if campaign.suppression.path.exists() {
        Some(
            crate::bounce::suppression::Suppressions::open(&campaign.suppression.path)?
                .bounce_report(&campaign.id)?,
        )
    } else {
        None
    };
    if json {
        let mut v = serde_json::to_value(&report)?;
        v["campaign"] = serde_json::Value::from(campaign.id.clone());
        v["bounces"] = serde_json::to_value(bounces.unwrap_or_default())?;
        if let Some(s) = shard {
            v["shard"] = serde_json::Value::from(s.to_string());
        }
        // Reply texts, node events: C1 controls too are escaped.
        println!("{}", crate::terminal::json(&v));
    } else {
        println!(
            "campaign   {} ({})",
            campaign.id,
            crate::terminal::Printable(&campaign.name)
        );
        if let Some(s) = shard {
            println!("shard      {s} (journal {})", journal_path.display());
        }
        println!("{}", crate::report::StatusText(&report));
        if let Some(b) = bounces.filter(|b| !b.text().is_empty()) {
            print!("{}", crate::terminal::printable_lines(&b.text()));
        }
    }
    Ok(ExitCode::SUCCESS)
}
