//! The receiver's test behaviours, off unless [`ReceiverOptions::script`] holds a [`Script`]:
//! tests and the demo's embedded node opt in, `blast sink` (a real receiver) never does.
//!
//! - Scripted recipients: a local-part prefix (matched case-insensitively) scripts the
//!   transaction: `tempfail+` / `permfail+` get 451 4.3.0 / 550 5.1.1 at RCPT, `datatemp+` /
//!   `datafail+` get 451 4.3.0 / 554 5.6.0 at the final dot, `drop+` closes the connection
//!   without a reply once the body arrives, `dropfirst+` closes it without a reply once the
//!   final dot arrives the first time this receiver sees the address (the message possibly
//!   delivered; a later transaction is accepted), `slow+` waits [`Script::slow_delay`] before
//!   the final reply. With a [`ReceiverPolicy`](super::ReceiverPolicy) the policy decides RCPT and
//!   prefixes are not looked at.
//! - [`Script::reply_all`]: every MAIL gets one reply (a 421 closes the connection).
//! - [`Script::tarpit`]: connections are accepted and never greeted.
//! - [`Script::trickle`]: from a session's first MAIL on, replies go out a byte at a time.
//!
//! [`ReceiverOptions::script`]: super::ReceiverOptions::script

use std::time::Duration;

use super::protocol::strip_prefix_ci;

/// The test behaviours of a receiver; see the module doc.
#[derive(Debug, Clone)]
pub struct Script {
    /// Delay before the final reply for `slow+` recipients.
    pub slow_delay: Duration,
    /// Answer every MAIL with this reply instead of accepting; a 421 also
    /// closes the connection, as a real server shutting down would.
    pub reply_all: Option<(u16, String)>,
    /// Accept TCP but never greet, to exercise client timeouts.
    pub tarpit: bool,
    /// Write every reply from the session's first MAIL on a byte at a time, this long between
    /// bytes: a relay that keeps each read alive but makes a transaction last for ever.
    pub trickle: Option<Duration>,
}

impl Default for Script {
    /// Scripted recipients on, `slow+` waiting a second, no `reply_all`, no tarpit, no trickle.
    fn default() -> Script {
        Script {
            slow_delay: Duration::from_secs(1),
            reply_all: None,
            tarpit: false,
            trickle: None,
        }
    }
}

impl Script {
    /// RCPT of a recipient with local part `local`: `Err(reply)` refuses it (`tempfail+`,
    /// `permfail+`); otherwise its prefix, if any, marks the transaction.
    pub(super) fn rcpt(&self, local: &[u8], marks: &mut Marks) -> Result<(), &'static [u8]> {
        if strip_prefix_ci(local, b"tempfail+").is_some() {
            return Err(b"451 4.3.0 Temporary failure (scripted)\r\n");
        }
        if strip_prefix_ci(local, b"permfail+").is_some() {
            return Err(b"550 5.1.1 User unknown (scripted)\r\n");
        }
        marks.data_temp |= strip_prefix_ci(local, b"datatemp+").is_some();
        marks.data_fail |= strip_prefix_ci(local, b"datafail+").is_some();
        marks.drop |= strip_prefix_ci(local, b"drop+").is_some();
        marks.drop_first |= strip_prefix_ci(local, b"dropfirst+").is_some();
        marks.slow |= strip_prefix_ci(local, b"slow+").is_some();
        Ok(())
    }
}

/// Scripted behaviour collected from a transaction's recipients.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Marks {
    data_temp: bool,
    data_fail: bool,
    /// Close without replying once body bytes arrive.
    pub(super) drop: bool,
    /// Close without replying once the final dot arrives, the first time for the address.
    pub(super) drop_first: bool,
    /// Wait [`Script::slow_delay`] before the final reply.
    pub(super) slow: bool,
}

impl Marks {
    /// The scripted reply to the final dot, if any (`datafail+` wins over `datatemp+`).
    pub(super) fn final_reply(&self) -> Option<&'static [u8]> {
        if self.data_fail {
            Some(b"554 5.6.0 Message rejected (scripted)\r\n")
        } else if self.data_temp {
            Some(b"451 4.3.0 Temporary failure (scripted)\r\n")
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::super::ReceiverOptions;
    use super::super::protocol::tests::{codes, protocol, run};
    use super::super::protocol::{Protocol, Step};
    use super::*;

    #[test]
    fn scripted_recipients() {
        let mut p = protocol(ReceiverOptions::scripted());
        let (out, _) = run(
            &mut p,
            b"EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<tempfail+1@y>\r\nRCPT TO:<datatemp+1@y>\r\nDATA\r\nx\r\n.\r\n\
              MAIL FROM:<a@x>\r\nRCPT TO:<DataFail+1@y>\r\nDATA\r\nx\r\n.\r\n\
              MAIL FROM:<a@x>\r\nRCPT TO:<slow+1@y>\r\nDATA\r\nx\r\n.\r\n",
        );
        assert_eq!(
            codes(&out),
            [
                "220", "250", "250", "451", "250", "354", "451", "250", "250", "354", "554", "250",
                "250", "354", "250"
            ]
        );
        assert!(out.contains("554 5.6.0 "));
        let stats = &p.shared.counters;
        assert_eq!(stats.transactions.load(Ordering::Relaxed), 3);
        assert_eq!(stats.accepted.load(Ordering::Relaxed), 1);
        assert_eq!(stats.rejected.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn dropfirst_drops_the_first_transaction_of_an_address_only() {
        let mut p = protocol(ReceiverOptions::scripted());
        let tx = b"MAIL FROM:<a@x>\r\nRCPT TO:<DropFirst+1@y>\r\nDATA\r\nx\r\n.\r\n";
        let (out, step) = run(&mut p, &[b"EHLO c\r\n".as_slice(), tx].concat());
        // The final dot arrived; no reply to it, the connection is closed.
        assert_eq!(codes(&out), ["220", "250", "250", "250", "354"]);
        assert_eq!(step, Step::Drop);
        // The next session of the same receiver gets the address accepted.
        let mut again = Protocol::new(p.shared.clone(), false);
        let (out, _) = run(&mut again, &[b"EHLO c\r\n".as_slice(), tx].concat());
        assert_eq!(codes(&out), ["250", "250", "250", "354", "250"]);
        assert_eq!(p.shared.counters.accepted.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn reply_all_421_closes() {
        let mut p = protocol(ReceiverOptions {
            script: Some(Script {
                reply_all: Some((421, "4.3.2 shutting down".into())),
                ..Script::default()
            }),
            ..Default::default()
        });
        let (out, step) = run(&mut p, b"EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\n");
        assert!(out.ends_with("421 4.3.2 shutting down\r\n"), "{out}");
        assert_eq!(step, Step::Close);
    }
}
