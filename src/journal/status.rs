//! What `blast status` shows about a run ([`StatusReport`]): the queries over a journal. Its
//! human-readable form is `report::StatusText`.

use serde::Serialize;

use super::{Journal, Result, RunInfo, RunState, sql};
use crate::clock::unix_now;

/// Final outcomes per status.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct StatusCounts {
    pub accepted: u64,
    pub failed: u64,
    pub expired: u64,
}

impl StatusCounts {
    fn add(&mut self, status: &str, n: u64) {
        match status {
            "accepted" => self.accepted += n,
            "failed" => self.failed += n,
            _ => self.expired += n,
        }
    }

    pub fn total(&self) -> u64 {
        self.accepted + self.failed + self.expired
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupCounts {
    pub name: String,
    #[serde(flatten)]
    pub counts: StatusCounts,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailureReason {
    pub code: Option<i64>,
    pub enhanced: Option<String>,
    pub text: Option<String>,
    pub count: u64,
}

/// One down/up event of a node (table `node_events`).
#[derive(Debug, Clone, Serialize)]
pub struct NodeEventRow {
    pub node: String,
    /// "down" or "up".
    pub event: String,
    pub reason: String,
    /// The node's accepted count in its session at that moment.
    pub accepted: u64,
    pub time: String,
}

/// DNS counters of a run (table `dns_counts`, summed over sessions).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct DnsStatus {
    /// Sessions that recorded counters.
    pub sessions: u64,
    /// Distinct recipient domains looked up.
    pub domain_lookups: u64,
    /// Rows whose domain was already known or being looked up.
    pub cache_hits: u64,
    /// Domains that do not accept mail (NXDOMAIN, null MX, neither MX nor address).
    pub negative: u64,
    /// Domain lookups that failed temporarily (SERVFAIL, timeout).
    pub temporary: u64,
    /// Rows final `failed` because their domain does not accept mail (outcomes of node `dns`).
    pub rows_failed: u64,
    /// Rows sent although their domain does not accept mail (`prevalidate = "warn"`).
    pub rows_warned: u64,
}

/// What `blast status` reports.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub journal: String,
    pub run: RunInfo,
    /// Pid of the `blast send` holding the campaign lock, if one does.
    pub sender_pid: Option<u32>,
    pub rows_final: u64,
    /// Final outcomes per second since the run started (to its end, or now).
    pub rate_per_second: f64,
    pub elapsed_seconds: i64,
    pub by_status: StatusCounts,
    pub possibly_duplicated: u64,
    /// Rows with an attempt mark and no final outcome (in flight now, deferred, or in flight
    /// when a sender died).
    pub unconfirmed: u64,
    pub nodes: Vec<GroupCounts>,
    /// Top 10 recipient domains.
    pub domains: Vec<GroupCounts>,
    /// Top 10 failure reasons (failed and expired).
    pub failure_reasons: Vec<FailureReason>,
    /// Node health history (down/up events), oldest first.
    pub node_events: Vec<NodeEventRow>,
    /// DNS counters (pre-validation, direct delivery); None without any.
    pub dns: Option<DnsStatus>,
}

impl Journal {
    /// Everything `blast status` shows about a run.
    pub fn status(&self, run: &RunInfo, running_pid: Option<u32>) -> Result<StatusReport> {
        let by_status = self.counts_by_status(run.id)?;
        let nodes = self.grouped_counts(
            run.id,
            "SELECT node, status, COUNT(*) FROM outcomes WHERE run_id = ?1 GROUP BY node, status",
        )?;
        let mut domains = self.grouped_counts(
            run.id,
            "SELECT substr(address, instr(address, '@') + 1) AS domain, status, COUNT(*)
             FROM outcomes WHERE run_id = ?1 GROUP BY domain, status",
        )?;
        domains.truncate(10);
        let failure_reasons = self.failure_reasons(run.id)?;
        let possibly_duplicated = self.count(
            run.id,
            "SELECT COUNT(*) FROM outcomes WHERE run_id = ?1 AND possibly_duplicated <> 0",
        )?;
        let in_flight_marks = self.count(
            run.id,
            "SELECT COUNT(DISTINCT a.row) FROM attempts a WHERE a.run_id = ?1
                 AND NOT EXISTS (SELECT 1 FROM outcomes o WHERE o.run_id = a.run_id AND o.row = a.row)",
        )?;
        let node_events = self.node_events(run.id)?;
        let dns_failed = nodes
            .iter()
            .find(|n| n.name == "dns")
            .map_or(0, |n| n.counts.failed);
        let dns = self.dns_status(run.id, dns_failed)?;
        let finals = by_status.total();
        let end = run.ended_unix.filter(|_| run.state != RunState::Running);
        let elapsed = (end.unwrap_or_else(unix_now) - run.started_unix).max(1);
        Ok(StatusReport {
            journal: self.path.display().to_string(),
            run: run.clone(),
            sender_pid: running_pid,
            rows_final: finals,
            rate_per_second: finals as f64 / elapsed as f64,
            elapsed_seconds: elapsed,
            by_status,
            possibly_duplicated: possibly_duplicated as u64,
            unconfirmed: in_flight_marks as u64,
            nodes,
            domains,
            failure_reasons,
            node_events,
            dns,
        })
    }

    /// Final outcomes of a run per status.
    fn counts_by_status(&self, run: i64) -> Result<StatusCounts> {
        let e = sql(&self.path);
        let mut by_status = StatusCounts::default();
        let mut s = self
            .conn
            .prepare("SELECT status, COUNT(*) FROM outcomes WHERE run_id = ?1 GROUP BY status")
            .map_err(&e)?;
        let rows = s
            .query_map([run], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .map_err(&e)?;
        for r in rows {
            let (status, n) = r.map_err(&e)?;
            by_status.add(&status, n as u64);
        }
        Ok(by_status)
    }

    /// Final outcomes of a run per status and per name, by `query` (`name, status, count`
    /// rows); the largest groups first.
    fn grouped_counts(&self, run: i64, query: &str) -> Result<Vec<GroupCounts>> {
        let e = sql(&self.path);
        let mut s = self.conn.prepare(query).map_err(&e)?;
        let rows = s
            .query_map([run], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .map_err(&e)?;
        let mut out: Vec<GroupCounts> = Vec::new();
        for r in rows {
            let (name, status, n) = r.map_err(&e)?;
            match out.iter_mut().find(|g| g.name == name) {
                Some(g) => g.counts.add(&status, n as u64),
                None => {
                    let mut g = GroupCounts {
                        name,
                        counts: StatusCounts::default(),
                    };
                    g.counts.add(&status, n as u64);
                    out.push(g);
                }
            }
        }
        out.sort_by(|a, b| {
            b.counts
                .total()
                .cmp(&a.counts.total())
                .then(a.name.cmp(&b.name))
        });
        Ok(out)
    }

    /// The top 10 failure reasons of a run (failed and expired).
    fn failure_reasons(&self, run: i64) -> Result<Vec<FailureReason>> {
        let e = sql(&self.path);
        let mut failure_reasons = Vec::new();
        let mut s = self
            .conn
            .prepare(
                "SELECT code, enhanced, text, COUNT(*) AS n FROM outcomes
                     WHERE run_id = ?1 AND status <> 'accepted'
                     GROUP BY code, enhanced, text ORDER BY n DESC LIMIT 10",
            )
            .map_err(&e)?;
        let rows = s
            .query_map([run], |r| {
                Ok(FailureReason {
                    code: r.get(0)?,
                    enhanced: r.get(1)?,
                    text: r.get(2)?,
                    count: r.get::<_, i64>(3)? as u64,
                })
            })
            .map_err(&e)?;
        for r in rows {
            failure_reasons.push(r.map_err(&e)?);
        }
        Ok(failure_reasons)
    }

    /// A single count of a run, by `query`.
    fn count(&self, run: i64, query: &str) -> Result<i64> {
        self.conn
            .query_row(query, [run], |r| r.get(0))
            .map_err(sql(&self.path))
    }

    /// The node health history of a run, oldest first.
    fn node_events(&self, run: i64) -> Result<Vec<NodeEventRow>> {
        let e = sql(&self.path);
        let mut node_events = Vec::new();
        let mut s = self
            .conn
            .prepare(
                "SELECT node, event, reason, accepted, time FROM node_events
                     WHERE run_id = ?1 ORDER BY rowid",
            )
            .map_err(&e)?;
        let rows = s
            .query_map([run], |r| {
                Ok(NodeEventRow {
                    node: r.get(0)?,
                    event: r.get(1)?,
                    reason: r.get(2)?,
                    accepted: r.get::<_, i64>(3)? as u64,
                    time: r.get(4)?,
                })
            })
            .map_err(&e)?;
        for r in rows {
            node_events.push(r.map_err(&e)?);
        }
        Ok(node_events)
    }

    /// The DNS counters of a run (summed over its sessions); `rows_failed` from the outcomes
    /// of node `dns`. None when no session recorded any and no row failed by DNS.
    fn dns_status(&self, run: i64, rows_failed: u64) -> Result<Option<DnsStatus>> {
        let e = sql(&self.path);
        // A journal written by an older blast (read-only: not migrated) has no such table.
        let has_table: bool = self
            .conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'dns_counts')",
                [],
                |r| r.get(0),
            )
            .map_err(&e)?;
        let mut d = DnsStatus {
            rows_failed,
            ..DnsStatus::default()
        };
        if has_table {
            let (sessions, lookups, hits, negative, temporary, warned): (
                i64,
                i64,
                i64,
                i64,
                i64,
                i64,
            ) = self
                .conn
                .query_row(
                    "SELECT COUNT(*), COALESCE(SUM(domain_lookups), 0), COALESCE(SUM(cache_hits), 0),
                     COALESCE(SUM(negative), 0), COALESCE(SUM(temporary), 0),
                     COALESCE(SUM(rows_warned), 0) FROM dns_counts WHERE run_id = ?1",
                    [run],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
                )
                .map_err(&e)?;
            d.sessions = sessions as u64;
            d.domain_lookups = lookups as u64;
            d.cache_hits = hits as u64;
            d.negative = negative as u64;
            d.temporary = temporary as u64;
            d.rows_warned = warned as u64;
        }
        Ok((d.sessions > 0 || d.rows_failed > 0).then_some(d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::test_support::{dir, outcome};
    use crate::outcome::Status;
    use std::path::Path;

    #[test]
    fn dns_counts_in_status() {
        let d = dir("dns-counts");
        let p = d.join("j.sqlite");
        let j = Journal::open(&p).unwrap();
        let run = j.create_run("c", "l", "t", Path::new("x.csv")).unwrap();
        let info = j.latest_run("c", "l").unwrap().unwrap();
        assert_eq!(j.status(&info, None).unwrap().dns, None);
        let w = j.writer(run, 16).unwrap();
        let tx = w.sender();
        for row in 1..=4 {
            let mut o = outcome(row, Status::Failed);
            o.node = "dns".into();
            assert!(tx.record(&o));
        }
        assert!(tx.record(&outcome(5, Status::Accepted)));
        w.close().unwrap();
        let counts = |lookups, hits| crate::dns::DnsReport {
            domain_lookups: lookups,
            cache_hits: hits,
            negative: 1,
            temporary: 2,
            rows_warned: 3,
            ..Default::default()
        };
        j.record_dns(run, &counts(10, 90)).unwrap();
        j.record_dns(run, &counts(5, 20)).unwrap(); // a resumed session
        let st = Journal::open_read_only(&p)
            .unwrap()
            .status(&info, None)
            .unwrap();
        let dns = st.dns.clone().unwrap();
        assert_eq!(
            dns,
            DnsStatus {
                sessions: 2,
                domain_lookups: 15,
                cache_hits: 110,
                negative: 2,
                temporary: 4,
                rows_failed: 4,
                rows_warned: 6,
            }
        );
        let json = serde_json::to_value(&st).unwrap();
        assert_eq!(json["dns"]["rows_failed"], 4);
        let _ = std::fs::remove_dir_all(&d);
    }
}
