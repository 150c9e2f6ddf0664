//! What keeps a client from holding a session (and its connection slot) forever: the time
//! limits of one session ([`Clock`]) and the cap on sessions per client address ([`PerIp`]).
//!
//! Every wait of the socket loop ends at [`Clock::deadline`]:
//! - at the command prompt, the whole next command line must arrive within `command_timeout`
//!   of the previous reply, and within `line_timeout` of its own first byte — absolute limits,
//!   not restarted by each read, so a client trickling `EHLO aaaa…` a byte at a time is cut off;
//! - while every connection slot is taken ("busy"), the line must arrive within `busy_timeout`
//!   of the previous reply, so idle and trickling sessions give their slots to the clients
//!   waiting in the listen backlog; inside DATA, a busy session must receive at least
//!   [`BUSY_DATA_BYTES`] of the message per `busy_timeout` (a minimum rate: 1 KB/s with the
//!   sink's default 1 s), so a client trickling its body a byte at a time gives its slot up
//!   too;
//! - the session ends at `session_timeout` after the accept, except inside DATA, which has its
//!   own limit (`data_timeout` from the 354 to the final dot): a session lasts at most
//!   `session_timeout + data_timeout`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::ReceiverOptions;

/// While busy, a DATA phase must receive this many bytes per `busy_timeout` (see the module
/// documentation): far below any real sender's rate, far above a trickle's.
pub(super) const BUSY_DATA_BYTES: u64 = 1024;

/// Which limit ended a wait; [`Cut::reply`] is what the client is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cut {
    Command,
    Line,
    Busy,
    Session,
    Data,
}

impl Cut {
    pub(super) fn reply(self) -> &'static [u8] {
        match self {
            Cut::Command | Cut::Data => b"421 4.4.2 Timeout, closing connection\r\n",
            Cut::Line => b"421 4.4.2 Command line too slow, closing connection\r\n",
            Cut::Busy => b"421 4.7.0 Server busy and this session is slow, closing connection\r\n",
            Cut::Session => b"421 4.4.2 Session time limit reached, closing connection\r\n",
        }
    }
}

/// `t + d`, or a time far away when that does not fit (`--session-timeout 9999999h`).
fn after(t: Instant, d: Duration) -> Instant {
    t.checked_add(d)
        .unwrap_or_else(|| t + Duration::from_secs(365 * 86_400))
}

/// The time limits of one session.
pub(super) struct Clock {
    command: Duration,
    line: Duration,
    busy: Option<Duration>,
    data: Duration,
    session_end: Option<Instant>,
    /// When the wait for the current command line began (greeting, previous reply, end of
    /// DATA); None inside DATA.
    line_wait: Option<Instant>,
    /// When the current command line's first byte arrived.
    first_byte: Option<Instant>,
    /// Complete command lines read when `line_wait` was set.
    lines_seen: u64,
    /// The 354's deadline for the final dot.
    data_end: Option<Instant>,
    /// Inside DATA: since when, and from how many bytes received in the session, the body is
    /// measured against the busy rate ([`BUSY_DATA_BYTES`] per `busy_timeout`).
    data_mark: Option<(Instant, u64)>,
}

impl Clock {
    pub(super) fn new(opts: &ReceiverOptions, now: Instant) -> Clock {
        Clock {
            command: opts.command_timeout,
            line: opts.line_timeout,
            busy: opts.busy_timeout,
            data: opts.data_timeout,
            session_end: opts.session_timeout.map(|d| after(now, d)),
            line_wait: None,
            first_byte: None,
            lines_seen: 0,
            data_end: None,
            data_mark: None,
        }
    }

    /// Called after the protocol consumed what it could: `in_data` (after a 354), `partial`
    /// (bytes of an unfinished command line are buffered or being skipped), `lines` (complete
    /// command lines so far; a change means the line being waited for is a new one) and
    /// `received` (bytes read in the session so far).
    pub(super) fn update(
        &mut self,
        now: Instant,
        in_data: bool,
        partial: bool,
        lines: u64,
        received: u64,
    ) {
        if in_data {
            self.data_end.get_or_insert_with(|| after(now, self.data));
            let mark = self.data_mark.get_or_insert((now, received));
            if received - mark.1 >= BUSY_DATA_BYTES {
                *mark = (now, received);
            }
            self.line_wait = None;
            self.first_byte = None;
            return;
        }
        self.data_end = None;
        self.data_mark = None;
        if self.line_wait.is_none() || lines != self.lines_seen {
            self.line_wait = Some(now);
            self.lines_seen = lines;
            self.first_byte = partial.then_some(now);
        } else if partial && self.first_byte.is_none() {
            self.first_byte = Some(now);
        }
    }

    /// When the current wait ends and which limit ends it; `busy`: every slot is taken.
    pub(super) fn deadline(&self, now: Instant, busy: bool) -> (Instant, Cut) {
        if let Some(end) = self.data_end {
            if let (true, Some(busy), Some((mark, _))) = (busy, self.busy, self.data_mark) {
                let slow = after(mark, busy);
                if slow < end {
                    return (slow, Cut::Busy);
                }
            }
            return (end, Cut::Data);
        }
        let waiting = self.line_wait.unwrap_or(now);
        let mut limit = (after(waiting, self.command), Cut::Command);
        let mut tighten = |at: Instant, cut: Cut| {
            if at < limit.0 {
                limit = (at, cut);
            }
        };
        if let Some(first) = self.first_byte {
            tighten(after(first, self.line), Cut::Line);
        }
        if let (true, Some(busy)) = (busy, self.busy) {
            tighten(after(waiting, busy), Cut::Busy);
        }
        if let Some(end) = self.session_end {
            tighten(end, Cut::Session);
        }
        limit
    }
}

/// Sessions per client address, capped (`max_connections_per_ip`). IPv6 clients count per /64
/// (one subscriber's prefix), IPv4-mapped IPv6 addresses as IPv4.
#[derive(Debug)]
pub(super) struct PerIp {
    max: Option<usize>,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// A session's place in [`PerIp`]; given back when dropped.
pub(super) struct IpSlot {
    /// None without a cap: nothing to give back.
    taken: Option<(Arc<PerIp>, IpAddr)>,
}

impl PerIp {
    pub(super) fn new(max: Option<usize>) -> PerIp {
        PerIp {
            max,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// A place for one more session from `ip`, or None when that address is at the cap.
    pub(super) fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        let Some(max) = self.max else {
            return Some(IpSlot { taken: None });
        };
        let key = key(ip);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(key).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            taken: Some((self.clone(), key)),
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let Some((per_ip, key)) = self.taken.take() else {
            return;
        };
        let mut open = per_ip.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&key);
            }
        }
    }
}

fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock(f: impl FnOnce(&mut ReceiverOptions)) -> (Clock, Instant) {
        let mut o = ReceiverOptions {
            command_timeout: Duration::from_secs(300),
            line_timeout: Duration::from_secs(30),
            busy_timeout: Some(Duration::from_secs(1)),
            data_timeout: Duration::from_secs(600),
            session_timeout: Some(Duration::from_secs(3600)),
            ..ReceiverOptions::default()
        };
        f(&mut o);
        let now = Instant::now();
        (Clock::new(&o, now), now)
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn a_trickled_line_is_timed_from_its_first_byte_not_from_each_read() {
        let (mut c, t0) = clock(|_| {});
        c.update(t0, false, false, 0, 0);
        assert_eq!(c.deadline(t0, false), (t0 + S(300), Cut::Command));
        // The first byte after 10 s of silence starts the line's 30 s.
        c.update(t0 + S(10), false, true, 0, 0);
        assert_eq!(c.deadline(t0 + S(10), false), (t0 + S(40), Cut::Line));
        // More bytes of the same line do not move it.
        c.update(t0 + S(20), false, true, 0, 0);
        assert_eq!(c.deadline(t0 + S(20), false), (t0 + S(40), Cut::Line));
        // A finished line starts the next wait.
        c.update(t0 + S(25), false, false, 1, 0);
        assert_eq!(c.deadline(t0 + S(25), false), (t0 + S(325), Cut::Command));
        // Busy: the whole line within 1 s of the previous reply.
        assert_eq!(c.deadline(t0 + S(25), true), (t0 + S(26), Cut::Busy));
    }

    #[test]
    fn data_has_its_own_limit_and_the_session_ends_after_it() {
        let (mut c, t0) = clock(|o| o.session_timeout = Some(S(60)));
        c.update(t0 + S(50), false, false, 3, 0);
        assert_eq!(c.deadline(t0 + S(50), false), (t0 + S(60), Cut::Session));
        c.update(t0 + S(55), true, false, 4, 0);
        assert_eq!(c.deadline(t0 + S(55), false), (t0 + S(655), Cut::Data));
        c.update(t0 + S(100), false, false, 4, 0);
        assert_eq!(c.deadline(t0 + S(100), false), (t0 + S(60), Cut::Session));
    }

    #[test]
    fn a_busy_data_phase_must_keep_a_minimum_rate() {
        let (mut c, t0) = clock(|_| {});
        // The 354 at 10 s, with 500 bytes of the session read so far.
        c.update(t0 + S(10), true, false, 3, 500);
        assert_eq!(c.deadline(t0 + S(10), false), (t0 + S(610), Cut::Data));
        assert_eq!(c.deadline(t0 + S(10), true), (t0 + S(11), Cut::Busy));
        // A trickle (1023 bytes in) does not move the mark; 1024 bytes do.
        c.update(
            t0 + S(10) + Duration::from_millis(900),
            true,
            false,
            3,
            1523,
        );
        assert_eq!(c.deadline(t0 + S(11), true), (t0 + S(11), Cut::Busy));
        c.update(t0 + S(11), true, false, 3, 1524);
        assert_eq!(c.deadline(t0 + S(11), true), (t0 + S(12), Cut::Busy));
        // Not busy: only data_timeout.
        assert_eq!(c.deadline(t0 + S(11), false), (t0 + S(610), Cut::Data));
        // After the dot, the command-line limits again.
        c.update(t0 + S(12), false, false, 4, 2000);
        assert_eq!(c.deadline(t0 + S(12), true), (t0 + S(13), Cut::Busy));
        assert_eq!(c.deadline(t0 + S(12), false), (t0 + S(312), Cut::Command));
    }

    #[test]
    fn huge_limits_do_not_overflow() {
        let (mut c, t0) = clock(|o| {
            o.command_timeout = Duration::MAX;
            o.session_timeout = Some(Duration::MAX);
        });
        c.update(t0, false, false, 0, 0);
        assert!(c.deadline(t0, false).0 > t0 + S(86_400));
    }

    #[test]
    fn per_ip_cap_counts_v6_per_64_and_gives_slots_back() {
        let per_ip = Arc::new(PerIp::new(Some(2)));
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let s1 = per_ip.admit(a).unwrap();
        let _s2 = per_ip.admit(b).unwrap();
        assert!(per_ip.admit(a).is_none(), "same /64");
        assert!(per_ip.admit(other).is_some());
        drop(s1);
        assert!(per_ip.admit(b).is_some());
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let _m = per_ip.admit(mapped).unwrap();
        let _v = per_ip.admit(v4).unwrap();
        assert!(per_ip.admit(v4).is_none(), "v4-mapped counts as v4");
        assert_eq!(
            per_ip.open.lock().unwrap().len(),
            2,
            "slots given back leave no entry"
        );
        let uncapped = Arc::new(PerIp::new(None));
        let all: Vec<_> = (0..100).map(|_| uncapped.admit(v4)).collect();
        assert!(all.iter().all(Option::is_some));
    }
}
