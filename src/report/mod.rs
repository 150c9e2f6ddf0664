//! What blast shows people about a run, as `Display` types: the end-of-run summary of
//! `blast send` ([`RunSummary`], and [`summary_json`] for scripts) and `blast status`
//! ([`StatusText`]); the lines both show are written once (the DNS line, [`DnsLine`]).
//!
//! Uses: send (its `Report`), journal (its `StatusReport`), clock. Prints nothing itself; the
//! CLI does.

mod status;

pub use status::StatusText;

use std::fmt;
use std::fmt::Write;
use std::path::Path;

use crate::send::dispatch::End;
use crate::send::{NodeReport, Report, Signal};
use crate::terminal::Printable;

/// The DNS line of the summary and of `blast status`: domain lookups and what pre-validation
/// did with their rows.
pub struct DnsLine {
    pub lookups: u64,
    pub cache_hits: u64,
    pub negative: u64,
    pub temporary: u64,
    pub rows_failed: u64,
    pub rows_warned: u64,
}

impl From<&crate::dns::DnsReport> for DnsLine {
    /// This session's counters (the send summary).
    fn from(d: &crate::dns::DnsReport) -> DnsLine {
        DnsLine {
            lookups: d.domain_lookups,
            cache_hits: d.cache_hits,
            negative: d.negative,
            temporary: d.temporary,
            rows_failed: d.rows_failed,
            rows_warned: d.rows_warned,
        }
    }
}

impl From<&crate::journal::DnsStatus> for DnsLine {
    /// The run's counters, summed over its sessions (`blast status`).
    fn from(d: &crate::journal::DnsStatus) -> DnsLine {
        DnsLine {
            lookups: d.domain_lookups,
            cache_hits: d.cache_hits,
            negative: d.negative,
            temporary: d.temporary,
            rows_failed: d.rows_failed,
            rows_warned: d.rows_warned,
        }
    }
}

impl fmt::Display for DnsLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "dns        {} domain lookups, {} cache hits, {} negative (do not accept mail), {} temporary failures; {} rows failed by DNS, {} sent despite a warning",
            self.lookups,
            self.cache_hits,
            self.negative,
            self.temporary,
            self.rows_failed,
            self.rows_warned
        )
    }
}

/// The summary printed at the end of `blast send`, ending with `result …, exit code N`.
pub struct RunSummary<'a> {
    report: &'a Report,
    exit_code: u8,
    rejects_file: Option<&'a Path>,
}

impl<'a> RunSummary<'a> {
    /// `exit_code` is what the process exits with (the CLI decides it).
    pub fn new(report: &'a Report, exit_code: u8) -> RunSummary<'a> {
        RunSummary {
            report,
            exit_code,
            rejects_file: None,
        }
    }

    /// Where the rejected rows were written (none in a dry run or a `--to` test send).
    pub fn rejects_file(mut self, path: Option<&'a Path>) -> RunSummary<'a> {
        self.rejects_file = path;
        self
    }
}

impl fmt::Display for RunSummary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.report;
        let mut s = String::new();
        rows_lines(&mut s, r, self.rejects_file);
        outcome_lines(&mut s, r);
        rate_and_output_lines(&mut s, r);
        let why = match (r.signal, r.end) {
            (Some(Signal::Interrupt), _) => "interrupted (SIGINT)",
            (Some(Signal::Terminate), _) => "terminated (SIGTERM)",
            (None, End::AllNodesDown) => "stopped: no node reachable",
            (None, End::Stopped) => "stopped",
            (None, End::Done) => "done",
        };
        let _ = write!(s, "result     {why}, exit code {}", self.exit_code);
        f.write_str(&s)
    }
}

/// What was read: rows, rejects by reason, rows skipped (resumed, other shards, suppressed).
fn rows_lines(s: &mut String, r: &Report, rejects_file: Option<&Path>) {
    let rejects = match (r.source.rejected, rejects_file) {
        (0, _) => String::new(),
        (_, Some(p)) => format!(" (rows and reasons in {})", p.display()),
        (_, None) => " (no rejects file in this mode)".to_string(),
    };
    let _ = writeln!(
        s,
        "rows       {} read, {} rejected{rejects}, {} rendered{}",
        r.source.rows,
        r.source.rejected,
        r.rendered,
        if r.render_errors > 0 {
            format!(", {} render errors", r.render_errors)
        } else {
            String::new()
        }
    );
    for (kind, n) in r.source.rejected_by_kind().filter(|(_, n)| *n > 0) {
        let _ = writeln!(s, "  rejected {n:>9}  {kind}");
    }
    if r.skipped > 0 || r.resumed_duplicates > 0 {
        let _ = writeln!(
            s,
            "resumed    {} rows skipped (final in an earlier session), {} possibly duplicated (resumed: in flight when a session died)",
            r.skipped, r.resumed_duplicates
        );
    }
    if let Some((shard, other)) = r.shard {
        let _ = writeln!(
            s,
            "shard      {shard}: {other} rows of other shards skipped"
        );
    }
    if r.suppressed > 0 {
        let _ = writeln!(
            s,
            "suppressed {} rows skipped (address on the suppression list)",
            r.suppressed
        );
    }
}

/// What was sent: outcomes, retries and each node (direct delivery: the first MX hosts).
fn outcome_lines(s: &mut String, r: &Report) {
    if r.dry_run {
        let _ = writeln!(s, "dry run    nothing sent");
    } else {
        let _ = writeln!(
            s,
            "outcomes   {} accepted, {} failed{}, {} expired, {} unfinished",
            r.accepted,
            r.failed,
            if r.render_errors > 0 {
                format!(" ({} render errors)", r.render_errors)
            } else {
                String::new()
            },
            r.expired,
            r.unfinished
        );
        let _ = writeln!(
            s,
            "retries    {} deferrals (4xx), {} re-sent after lost connections, {} possibly duplicated",
            r.deferrals, r.requeues, r.possibly_duplicated
        );
        // Direct delivery has a node per MX host: show the first ones.
        const NODES_SHOWN: usize = 20;
        if r.nodes.len() > NODES_SHOWN {
            let _ = writeln!(
                s,
                "nodes      {} (MX hosts); the first {NODES_SHOWN}:",
                r.nodes.len()
            );
        }
        for n in r.nodes.iter().take(NODES_SHOWN) {
            let _ = writeln!(
                s,
                "node       {:<16} {} accepted, {} deferred, {} failed, {} connection errors",
                Printable(&n.name),
                n.accepted,
                n.deferred,
                n.failed,
                n.errors
            );
            health_lines(s, n, r.started_at);
        }
    }
}

/// Time and rates, the delivery log, the journal writer, DNS and the embedded receiver.
fn rate_and_output_lines(s: &mut String, r: &Report) {
    let secs = r.duration.as_secs_f64().max(0.001);
    let done = if r.dry_run {
        r.rendered
    } else {
        r.accepted + r.failed + r.expired
    };
    // The peak is measured on final outcomes, which a dry run has none of.
    let peak = if r.dry_run {
        String::new()
    } else {
        format!(", {:.0} msg/s peak", r.peak_rate)
    };
    let _ = writeln!(
        s,
        "time       {:.1} s, {:.0} msg/s average{peak}",
        secs,
        done as f64 / secs,
    );
    if !r.dry_run {
        let _ = writeln!(
            s,
            "log        {} lines, {} waits for the writer",
            r.log_lines, r.log_waits
        );
    }
    if let Some(j) = &r.journal {
        let _ = writeln!(
            s,
            "journal    {} outcomes, {} attempt marks, {} transactions, {} log writes{}",
            j.outcomes,
            j.attempts,
            j.transactions,
            j.log_writes,
            match j.cpu {
                Some(cpu) => format!(
                    ", writer CPU {:.2} s ({:.1} µs per outcome)",
                    cpu.as_secs_f64(),
                    cpu.as_secs_f64() * 1e6 / j.outcomes.max(1) as f64
                ),
                None => String::new(),
            }
        );
    }
    if let Some(d) = &r.dns {
        let _ = writeln!(s, "{}", DnsLine::from(d));
    }
    if let Some(n) = r.embedded_received {
        let _ = writeln!(s, "embedded   receiver accepted {n} messages");
    }
}

/// The summary's lines for a node's down/up events: time (UTC, and seconds since the start),
/// the reason it went down and the probes that failed, what it accepted while up again.
fn health_lines(s: &mut String, n: &NodeReport, started: std::time::SystemTime) {
    let events = &n.health.events;
    // Direct delivery names nodes after MX hosts (DNS answers); reasons quote relay replies.
    let name = Printable(&n.name);
    for (i, e) in events.iter().enumerate() {
        let at = e
            .time
            .duration_since(started)
            .unwrap_or_default()
            .as_secs_f64();
        let time = crate::clock::rfc3339(e.time);
        if e.up {
            let until = events.get(i + 1).map_or(n.accepted, |next| next.accepted);
            let _ = writeln!(
                s,
                "  health   {:<16} up   {time} (+{at:.1} s), then {} accepted",
                name,
                until.saturating_sub(e.accepted)
            );
        } else {
            let _ = writeln!(
                s,
                "  health   {:<16} down {time} (+{at:.1} s) after {} accepted, {} probes failed: {}",
                name,
                e.accepted,
                e.failed_probes,
                Printable(&e.reason)
            );
        }
    }
    if n.health.dropped > 0 {
        let _ = writeln!(
            s,
            "  health   {:<16} … {} more events not kept",
            name, n.health.dropped
        );
    }
}

/// The run summary as one JSON object (`blast send --summary-json FILE`): the same numbers as
/// [`RunSummary`], for scripts and tests. Fields are documented in the README.
pub fn summary_json(r: &Report, exit_code: u8) -> serde_json::Value {
    use serde_json::json;
    let rejected: serde_json::Map<String, serde_json::Value> = r
        .source
        .rejected_by_kind()
        .filter(|(_, n)| *n > 0)
        .map(|(kind, n)| (kind.to_string(), json!(n)))
        .collect();
    let nodes: Vec<serde_json::Value> = r
        .nodes
        .iter()
        .map(|n| {
            let health: Vec<serde_json::Value> = n
                .health
                .events
                .iter()
                .map(|e| {
                    json!({
                        "time": crate::clock::rfc3339(e.time),
                        "up": e.up,
                        "reason": e.reason,
                        "accepted": e.accepted,
                        "failed_probes": e.failed_probes,
                    })
                })
                .collect();
            json!({
                "name": n.name, "accepted": n.accepted, "deferred": n.deferred,
                "failed": n.failed, "connection_errors": n.errors,
                "open_connections": n.connections, "health": health,
                "health_events_dropped": n.health.dropped,
            })
        })
        .collect();
    let secs = r.duration.as_secs_f64().max(0.001);
    let done = if r.dry_run {
        r.rendered
    } else {
        r.accepted + r.failed + r.expired
    };
    json!({
        "rows": {
            "read": r.source.rows, "accepted": r.source.accepted, "rejected": r.source.rejected,
            "rejected_by_reason": rejected, "rendered": r.rendered,
            "render_errors": r.render_errors, "skipped_done": r.skipped,
            "skipped_suppressed": r.suppressed,
            "skipped_other_shards": r.shard.map_or(0, |(_, other)| other),
        },
        "shard": r.shard.map(|(s, _)| s.to_string()),
        "dry_run": r.dry_run,
        "outcomes": {
            "accepted": r.accepted, "failed": r.failed, "expired": r.expired,
            "unfinished": r.unfinished,
        },
        "retries": {
            "deferrals": r.deferrals, "requeues": r.requeues,
            "possibly_duplicated": r.possibly_duplicated,
            "resumed_duplicates": r.resumed_duplicates,
        },
        "nodes": nodes,
        "seconds": r.duration.as_secs_f64(),
        "average_rate": done as f64 / secs,
        "peak_rate": (!r.dry_run).then_some(r.peak_rate),
        "log": (!r.dry_run).then(|| json!({"lines": r.log_lines, "waits": r.log_waits})),
        "journal": r.journal.map(|j| json!({
            "outcomes": j.outcomes, "attempt_marks": j.attempts,
            "transactions": j.transactions, "log_writes": j.log_writes,
        })),
        "dns": r.dns.as_ref().map(|d| json!({
            "domain_lookups": d.domain_lookups, "cache_hits": d.cache_hits,
            "negative": d.negative, "temporary": d.temporary,
            "rows_failed": d.rows_failed, "rows_warned": d.rows_warned,
        })),
        "embedded_received": r.embedded_received,
        "result": result_word(r),
        "exit_code": exit_code,
    })
}

/// How the run ended, in one word: done, stopped, no_node_reachable, interrupted, terminated.
fn result_word(r: &Report) -> &'static str {
    match (r.signal, r.end) {
        (Some(Signal::Interrupt), _) => "interrupted",
        (Some(Signal::Terminate), _) => "terminated",
        (None, End::AllNodesDown) => "no_node_reachable",
        (None, End::Stopped) => "stopped",
        (None, End::Done) => "done",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dns_line() {
        let line = DnsLine {
            lookups: 15,
            cache_hits: 110,
            negative: 2,
            temporary: 4,
            rows_failed: 4,
            rows_warned: 6,
        };
        assert_eq!(
            line.to_string(),
            "dns        15 domain lookups, 110 cache hits, 2 negative (do not accept mail), 4 temporary failures; 4 rows failed by DNS, 6 sent despite a warning"
        );
    }
}
