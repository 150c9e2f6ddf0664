//! The human-readable form of `blast status` ([`StatusText`]).

use std::fmt;
use std::fmt::Write;

use super::DnsLine;
use crate::journal::{RunState, StatusReport};
use crate::terminal::Printable;

/// `blast status` as text: one line per fact, `label      value`.
pub struct StatusText<'a>(pub &'a StatusReport);

impl fmt::Display for StatusText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.0;
        let r = &st.run;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "run        {} of {} ({}{}), sessions {}",
            r.id,
            Printable(&r.campaign),
            r.state.as_str(),
            match (r.state, st.sender_pid) {
                (RunState::Running, Some(pid)) => format!(", sending: pid {pid}"),
                (RunState::Running, None) =>
                    ", no sender: crashed or killed; resume with `blast send`".to_string(),
                _ => String::new(),
            },
            r.sessions
        );
        let _ = writeln!(
            s,
            "time       started {}, {}",
            r.started_at,
            match &r.ended_at {
                Some(e) if r.state != RunState::Running => format!("ended {e}"),
                _ => "not ended".to_string(),
            }
        );
        let _ = writeln!(
            s,
            "list       {} (sha256 {})",
            Printable(&r.list_path),
            &r.list_fingerprint[..16.min(r.list_fingerprint.len())]
        );
        let b = &st.by_status;
        let _ = writeln!(
            s,
            "outcomes   {} final: {} accepted, {} failed, {} expired; {:.0}/s over {} s",
            st.rows_final, b.accepted, b.failed, b.expired, st.rate_per_second, st.elapsed_seconds
        );
        let _ = writeln!(
            s,
            "unsure     {} possibly duplicated, {} attempted without a final outcome yet",
            st.possibly_duplicated, st.unconfirmed
        );
        for n in &st.nodes {
            let c = &n.counts;
            let _ = writeln!(
                s,
                "node       {:<24} {} accepted, {} failed, {} expired",
                Printable(&n.name),
                c.accepted,
                c.failed,
                c.expired
            );
        }
        for ev in &st.node_events {
            let _ = writeln!(
                s,
                "health     {:<24} {:<4} {}  {}",
                Printable(&ev.node),
                Printable(&ev.event),
                Printable(&ev.time),
                if ev.event == "up" {
                    format!("(after {} accepted)", ev.accepted)
                } else {
                    // The relay's reply, often.
                    crate::terminal::printable(&ev.reason).into_owned()
                }
            );
        }
        if let Some(d) = &st.dns {
            let _ = writeln!(s, "{}", DnsLine::from(d));
        }
        for d in &st.domains {
            let c = &d.counts;
            let _ = writeln!(
                s,
                "domain     {:<24} {} accepted, {} failed, {} expired",
                Printable(&d.name),
                c.accepted,
                c.failed,
                c.expired
            );
        }
        for f in &st.failure_reasons {
            let _ = writeln!(
                s,
                "failure    {:>7}  {} {} {}",
                f.count,
                f.code.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
                Printable(f.enhanced.as_deref().unwrap_or("-")),
                // The relay's reply text (or a template error quoting list values).
                Printable(f.text.as_deref().unwrap_or("(no reply)"))
            );
        }
        s.pop();
        f.write_str(&s)
    }
}
