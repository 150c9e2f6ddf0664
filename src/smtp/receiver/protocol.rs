//! The SMTP dialogue of the receiver, free of I/O: [`Protocol::feed`] consumes input (command
//! lines, or the DATA body with its dot-unstuffing) and appends replies; the [`Step`] it returns
//! tells the socket loop what to do next.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::script::Marks;
use super::{HOSTNAME, ReceivedMessage, Shared};

/// Longest command line accepted, CRLF included (RFC 5321 allows 512; we
/// are lenient, but bounded).
const MAX_LINE: usize = 1000;
const MAX_RECIPIENTS: usize = 100;

/// What the socket loop must do after [`Protocol::feed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// All complete input handled: flush replies, read more.
    NeedInput,
    /// End of data for a `slow+` recipient: flush, sleep, `finish_data`.
    Slow,
    /// Flush and close (QUIT, 421).
    Close,
    /// Close without replying (`drop+`, `dropfirst+`).
    Drop,
    /// Flush the 220, then run the TLS handshake.
    StartTls,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Before EHLO/HELO.
    Connected,
    /// Greeted, no transaction.
    Idle,
    /// MAIL accepted; collecting recipients.
    Mail,
    /// After 354, reading the body.
    Data,
}

/// Per-transaction state, reused across transactions.
#[derive(Default)]
struct Transaction {
    mail_from: String,
    rcpts: Vec<String>,
    rcpt_attempted: bool,
    /// What a [`Script`](super::Script) made of the recipients (`datafail+`, `slow+`, …).
    marks: Marks,
    /// Keep the body (only while `keep_messages` is not reached).
    keep: bool,
    body: Vec<u8>,
    size: usize,
    oversize: bool,
    /// Body scanner: at the start of a line (after CRLF).
    line_start: bool,
    /// Body scanner: the last byte consumed was CR.
    last_cr: bool,
}

impl Transaction {
    fn reset(&mut self) {
        self.mail_from.clear();
        self.rcpts.clear();
        self.rcpt_attempted = false;
        self.marks = Marks::default();
        self.keep = false;
        self.body.clear();
        self.size = 0;
        self.oversize = false;
    }
}

/// The SMTP server dialogue, free of I/O: [`feed`](Self::feed) consumes
/// input and appends replies to `out`.
pub(super) struct Protocol {
    pub(super) shared: Arc<Shared>,
    pub(super) phase: Phase,
    tx: Transaction,
    pub(super) out: Vec<u8>,
    /// Inside an over-long command line; skip to its end, then 500.
    discarding: bool,
    tls_offered: bool,
    tls_active: bool,
    /// Complete command lines read (the session's clock starts a new line's wait on a change).
    lines: u64,
    /// 5xx replies to commands since the last 2xx/3xx (see `ReceiverOptions::max_errors`).
    errors: u32,
    /// A MAIL command was read in this session.
    mailed: bool,
}

impl Protocol {
    pub(super) fn new(shared: Arc<Shared>, tls_offered: bool) -> Protocol {
        Protocol {
            shared,
            phase: Phase::Connected,
            tx: Transaction::default(),
            out: Vec::with_capacity(4096),
            discarding: false,
            tls_offered,
            tls_active: false,
            lines: 0,
            errors: 0,
            mailed: false,
        }
    }

    /// Complete command lines read so far.
    pub(super) fn lines(&self) -> u64 {
        self.lines
    }

    /// A MAIL command was read in this session (for [`Script::trickle`](super::Script)).
    pub(super) fn mailed(&self) -> bool {
        self.mailed
    }

    /// Skipping the rest of an over-long command line (its bytes are consumed, not buffered).
    pub(super) fn mid_line(&self) -> bool {
        self.discarding
    }

    pub(super) fn greet(&mut self) {
        self.reply(format!("220 {HOSTNAME} ESMTP blast receiver\r\n").as_bytes());
    }

    pub(super) fn tls_started(&mut self) {
        self.tls_active = true;
        self.phase = Phase::Connected;
        self.tx.reset();
    }

    fn reply(&mut self, line: &[u8]) {
        self.out.extend_from_slice(line);
    }

    /// Handles every complete command (or body bytes) in `input`.
    /// Returns how much was consumed and what to do next.
    pub(super) fn feed(&mut self, input: &[u8]) -> (usize, Step) {
        let mut pos = 0;
        loop {
            let rest = &input[pos..];
            if self.phase == Phase::Data {
                let (used, step) = self.feed_body(rest);
                pos += used;
                match step {
                    Some(step) => return (pos, step),
                    None => continue,
                }
            }
            let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                if rest.len() >= MAX_LINE {
                    self.discarding = true;
                    return (input.len(), Step::NeedInput);
                }
                return (pos, Step::NeedInput);
            };
            pos += nl + 1;
            self.lines += 1;
            let replied_at = self.out.len();
            let step = if self.discarding || nl + 1 > MAX_LINE {
                self.discarding = false;
                self.reply(b"500 5.5.2 Line too long\r\n");
                Step::NeedInput
            } else {
                let line = &rest[..nl];
                self.command(line.strip_suffix(b"\r").unwrap_or(line))
            };
            if self.too_many_errors(replied_at) {
                return (pos, Step::Close);
            }
            if step != Step::NeedInput {
                return (pos, step);
            }
        }
    }

    /// Counts the reply to one command written at `replied_at`: a 5xx is one more error in a
    /// row, a 2xx/3xx ends the row. One error past `max_errors` replaces the reply with a 421:
    /// true, close the session (a client sending thousands of bad commands gets nowhere).
    fn too_many_errors(&mut self, replied_at: usize) -> bool {
        match self.out.get(replied_at) {
            Some(b'5') => self.errors += 1,
            Some(b'2' | b'3') => self.errors = 0,
            _ => {}
        }
        let Some(max) = self.shared.opts.max_errors else {
            return false;
        };
        if self.errors <= max {
            return false;
        }
        self.out.truncate(replied_at);
        self.reply(b"421 4.7.0 Too many errors, closing connection\r\n");
        true
    }

    /// Consumes body bytes. `Some(step)` stops the feed loop; `None` means
    /// the data ended and commands follow.
    fn feed_body(&mut self, input: &[u8]) -> (usize, Option<Step>) {
        if self.tx.marks.drop && !input.is_empty() {
            return (0, Some(Step::Drop));
        }
        let mut pos = 0;
        while pos < input.len() {
            if self.tx.line_start {
                let rest = &input[pos..];
                if rest[0] == b'.' {
                    if rest.starts_with(b".\r\n") {
                        pos += 3;
                        return match self.end_of_data() {
                            Step::NeedInput => (pos, None),
                            step => (pos, Some(step)),
                        };
                    }
                    if rest == b"." || rest == b".\r" {
                        // Cannot tell a terminator from a stuffed dot yet.
                        return (pos, Some(Step::NeedInput));
                    }
                    pos += 1;
                }
                self.tx.line_start = false;
            }
            let rest = &input[pos..];
            match rest.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    let crlf = if i > 0 {
                        rest[i - 1] == b'\r'
                    } else {
                        self.tx.last_cr
                    };
                    self.body_bytes(&rest[..=i]);
                    self.tx.line_start = crlf;
                    self.tx.last_cr = false;
                    pos += i + 1;
                }
                None => {
                    self.body_bytes(rest);
                    self.tx.last_cr = rest.last() == Some(&b'\r');
                    pos = input.len();
                }
            }
        }
        (pos, Some(Step::NeedInput))
    }

    fn body_bytes(&mut self, chunk: &[u8]) {
        let tx = &mut self.tx;
        tx.size += chunk.len();
        if tx.size > self.shared.opts.max_message_size {
            tx.oversize = true;
            tx.body.clear();
        } else if tx.keep {
            tx.body.extend_from_slice(chunk);
        }
    }

    fn end_of_data(&mut self) -> Step {
        if self.tx.marks.drop_first && self.shared.first_drop(&self.tx.rcpts) {
            return Step::Drop;
        }
        if self.tx.marks.slow {
            return Step::Slow;
        }
        self.finish_data();
        Step::NeedInput
    }

    /// Sends the reply to the final "." and ends the transaction.
    pub(super) fn finish_data(&mut self) {
        let tx = &mut self.tx;
        if tx.oversize {
            self.out
                .extend_from_slice(b"552 5.3.4 Message size exceeds fixed limit\r\n");
            self.shared.count(|c| &c.rejected, 1);
        } else if let Some(reply) = tx.marks.final_reply() {
            self.out.extend_from_slice(reply);
            self.shared.count(|c| &c.rejected, 1);
        } else if let Some(policy) = &self.shared.opts.policy {
            let data = std::mem::take(&mut tx.body);
            let size = data.len() as u64;
            match policy.message(&tx.mail_from, &tx.rcpts, data) {
                Ok(()) => {
                    let id = splitmix64(self.shared.next_id.fetch_add(1, Ordering::Relaxed));
                    self.out.extend_from_slice(b"250 2.0.0 Ok: queued as ");
                    push_hex(&mut self.out, id);
                    self.out.extend_from_slice(b"\r\n");
                    self.shared.count(|c| &c.accepted, 1);
                    self.shared.count(|c| &c.bytes, size);
                }
                Err(line) => {
                    self.out.extend_from_slice(format!("{line}\r\n").as_bytes());
                    self.shared.count(|c| &c.rejected, 1);
                }
            }
        } else {
            let id = splitmix64(self.shared.next_id.fetch_add(1, Ordering::Relaxed));
            self.out.extend_from_slice(b"250 2.0.0 Ok: queued as ");
            push_hex(&mut self.out, id);
            self.out.extend_from_slice(b"\r\n");
            self.shared.count(|c| &c.accepted, 1);
            self.shared.count(|c| &c.bytes, tx.size as u64);
            if tx.keep {
                let keep = self.shared.opts.keep_messages;
                let mut messages = self.shared.messages();
                for rcpt in &tx.rcpts {
                    if messages.len() >= keep {
                        break;
                    }
                    messages.push(ReceivedMessage {
                        mail_from: tx.mail_from.clone(),
                        rcpt: rcpt.clone(),
                        data: tx.body.clone(),
                    });
                }
            }
        }
        self.tx.reset();
        self.phase = Phase::Idle;
    }

    /// One command line without its line ending.
    fn command(&mut self, line: &[u8]) -> Step {
        let (verb, arg) = match line.iter().position(|&b| b == b' ') {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (line, &[][..]),
        };
        let mut upper = [0u8; 8];
        let verb = if verb.len() <= upper.len() {
            for (u, b) in upper.iter_mut().zip(verb) {
                *u = b.to_ascii_uppercase();
            }
            &upper[..verb.len()]
        } else {
            &b""[..]
        };
        match verb {
            b"EHLO" | b"HELO" if arg.iter().all(|b| b.is_ascii_whitespace()) => {
                self.reply(b"501 5.5.4 Syntax: EHLO hostname\r\n");
            }
            b"EHLO" => {
                self.tx.reset();
                self.phase = Phase::Idle;
                let shared = &self.shared;
                let ehlo = if self.tls_offered && !self.tls_active {
                    &shared.ehlo_with_starttls
                } else {
                    &shared.ehlo
                };
                self.out.extend_from_slice(ehlo);
            }
            b"HELO" => {
                self.tx.reset();
                self.phase = Phase::Idle;
                self.reply(format!("250 {HOSTNAME}\r\n").as_bytes());
            }
            b"MAIL" => return self.mail(arg),
            b"RCPT" => self.rcpt(arg),
            b"DATA" => self.data(arg),
            b"RSET" => {
                self.tx.reset();
                if self.phase != Phase::Connected {
                    self.phase = Phase::Idle;
                }
                self.reply(b"250 2.0.0 Ok\r\n");
            }
            b"NOOP" => self.reply(b"250 2.0.0 Ok\r\n"),
            b"QUIT" => {
                self.reply(b"221 2.0.0 Bye\r\n");
                return Step::Close;
            }
            b"VRFY" if self.shared.opts.policy.is_some() => {
                self.reply(b"502 5.5.1 VRFY disabled\r\n");
            }
            b"VRFY" if arg.is_empty() => self.reply(b"501 5.5.4 Syntax: VRFY address\r\n"),
            b"VRFY" => self.reply(b"252 2.5.0 Cannot VRFY user, but will accept message\r\n"),
            b"EXPN" | b"HELP" => self.reply(b"502 5.5.1 Command not implemented\r\n"),
            b"STARTTLS" if !self.tls_offered => {
                self.reply(b"502 5.5.1 Command not implemented\r\n");
            }
            b"STARTTLS" if self.tls_active => self.reply(b"503 5.5.1 TLS already active\r\n"),
            b"STARTTLS" if self.phase == Phase::Mail => {
                self.reply(b"503 5.5.1 Transaction in progress\r\n");
            }
            b"STARTTLS" => {
                self.reply(b"220 2.0.0 Ready to start TLS\r\n");
                return Step::StartTls;
            }
            _ => self.reply(b"500 5.5.2 Command unrecognized\r\n"),
        }
        Step::NeedInput
    }

    fn mail(&mut self, arg: &[u8]) -> Step {
        self.mailed = true;
        match self.phase {
            Phase::Connected => {
                self.reply(b"503 5.5.1 Send EHLO/HELO first\r\n");
                return Step::NeedInput;
            }
            Phase::Mail | Phase::Data => {
                self.reply(b"503 5.5.1 Nested MAIL command\r\n");
                return Step::NeedInput;
            }
            Phase::Idle => {}
        }
        let Some((path, params)) = parse_path(arg, b"FROM:") else {
            self.reply(b"501 5.5.4 Syntax: MAIL FROM:<address>\r\n");
            return Step::NeedInput;
        };
        if let Some((code, text)) = self.shared.script().and_then(|s| s.reply_all.as_ref()) {
            self.out
                .extend_from_slice(format!("{code} {text}\r\n").as_bytes());
            self.shared.count(|c| &c.rejected, 1);
            return if *code == 421 {
                Step::Close
            } else {
                Step::NeedInput
            };
        }
        let declared = params
            .split(|&b| b == b' ')
            .filter_map(|p| strip_prefix_ci(p, b"SIZE="))
            .find_map(|n| std::str::from_utf8(n).ok()?.parse::<usize>().ok());
        if declared.is_some_and(|n| n > self.shared.opts.max_message_size) {
            self.reply(b"552 5.3.4 Message size exceeds fixed limit\r\n");
            self.shared.count(|c| &c.rejected, 1);
            return Step::NeedInput;
        }
        self.tx.reset();
        self.tx.mail_from.push_str(&String::from_utf8_lossy(path));
        self.phase = Phase::Mail;
        self.shared.count(|c| &c.transactions, 1);
        self.reply(b"250 2.1.0 Ok\r\n");
        Step::NeedInput
    }

    fn rcpt(&mut self, arg: &[u8]) {
        if self.phase != Phase::Mail {
            return self.reply(b"503 5.5.1 Need MAIL command\r\n");
        }
        let path = match parse_path(arg, b"TO:") {
            Some((path, _)) if !path.is_empty() => path,
            _ => return self.reply(b"501 5.5.4 Syntax: RCPT TO:<address>\r\n"),
        };
        self.tx.rcpt_attempted = true;
        if self.tx.rcpts.len() >= MAX_RECIPIENTS {
            return self.reply(b"452 4.5.3 Too many recipients\r\n");
        }
        if let Some(policy) = &self.shared.opts.policy {
            let addr = String::from_utf8_lossy(path).into_owned();
            return match policy.rcpt(&addr) {
                Ok(()) => {
                    self.tx.rcpts.push(addr);
                    self.reply(b"250 2.1.5 Ok\r\n");
                }
                Err(line) => {
                    self.shared.count(|c| &c.rejected, 1);
                    self.reply(format!("{line}\r\n").as_bytes());
                }
            };
        }
        if let Some(script) = self.shared.script() {
            let local = path.split(|&b| b == b'@').next().unwrap_or(path);
            if let Err(reply) = script.rcpt(local, &mut self.tx.marks) {
                self.shared.count(|c| &c.rejected, 1);
                return self.reply(reply);
            }
        }
        self.tx
            .rcpts
            .push(String::from_utf8_lossy(path).into_owned());
        self.reply(b"250 2.1.5 Ok\r\n");
    }

    fn data(&mut self, arg: &[u8]) {
        if !arg.is_empty() {
            return self.reply(b"501 5.5.4 Syntax: DATA\r\n");
        }
        if self.phase != Phase::Mail || (self.tx.rcpts.is_empty() && !self.tx.rcpt_attempted) {
            return self.reply(b"503 5.5.1 Need RCPT command\r\n");
        }
        if self.tx.rcpts.is_empty() {
            // RFC 2920: every recipient failed; refuse the pipelined DATA.
            return self.reply(b"554 5.5.1 No valid recipients\r\n");
        }
        let keep = self.shared.opts.keep_messages;
        self.tx.keep =
            self.shared.opts.policy.is_some() || (keep > 0 && self.shared.messages().len() < keep);
        self.tx.line_start = true;
        self.tx.last_cr = false;
        self.phase = Phase::Data;
        self.reply(b"354 End data with <CR><LF>.<CR><LF>\r\n");
    }
}

/// Parses `FROM:<path> params` / `TO:<path> params`; returns the path
/// without brackets and the parameter string.
fn parse_path<'a>(arg: &'a [u8], keyword: &[u8]) -> Option<(&'a [u8], &'a [u8])> {
    let rest = strip_prefix_ci(arg, keyword)?;
    let rest = rest.trim_ascii_start();
    let rest = rest.strip_prefix(b"<")?;
    let close = rest.iter().position(|&b| b == b'>')?;
    let path = &rest[..close];
    if path
        .iter()
        .any(|&b| b.is_ascii_control() || b == b' ' || b == b'<')
    {
        return None;
    }
    Some((path, rest[close + 1..].trim_ascii()))
}

pub(super) fn strip_prefix_ci<'a>(s: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// Spreads sequential ids so queue ids look like a real MTA's.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn push_hex(out: &mut Vec<u8>, n: u64) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for shift in (0..16).rev() {
        out.push(HEX[(n >> (shift * 4)) as usize & 15]);
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::ReceiverOptions;
    use super::*;

    pub(in super::super) fn protocol(opts: ReceiverOptions) -> Protocol {
        let tls = opts.tls.is_some();
        let mut p = Protocol::new(Arc::new(Shared::new(opts)), tls);
        p.greet();
        p
    }

    /// Feeds everything (honouring Slow by finishing immediately) and
    /// returns the replies and the last step.
    pub(in super::super) fn run(p: &mut Protocol, input: &[u8]) -> (String, Step) {
        let mut pos = 0;
        let step = loop {
            let (used, step) = p.feed(&input[pos..]);
            pos += used;
            match step {
                Step::Slow => p.finish_data(),
                Step::NeedInput if pos < input.len() => panic!("stuck at {pos}"),
                other => break other,
            }
        };
        let out = String::from_utf8(std::mem::take(&mut p.out)).unwrap();
        (out, step)
    }

    pub(in super::super) fn codes(out: &str) -> Vec<&str> {
        out.lines()
            .filter(|l| l.as_bytes().get(3) != Some(&b'-'))
            .map(|l| &l[..3])
            .collect()
    }

    #[test]
    fn pipelined_session_and_unstuffing() {
        let mut p = protocol(ReceiverOptions {
            keep_messages: 10,
            ..Default::default()
        });
        let input = b"EHLO c\r\nMAIL FROM:<a@x> SIZE=20\r\nRCPT TO:<b@y>\r\nDATA\r\n\
                      Subject: s\r\n\r\n..dot\r\nx.y\r\n.\r\nQUIT\r\n";
        let (out, step) = run(&mut p, input);
        assert_eq!(
            codes(&out),
            ["220", "250", "250", "250", "354", "250", "221"]
        );
        assert!(out.contains("250-PIPELINING\r\n") && out.contains("250 ENHANCEDSTATUSCODES"));
        assert_eq!(step, Step::Close);
        let msgs = p.shared.messages().clone();
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].mail_from, "a@x");
        assert_eq!(msgs[0].rcpt, "b@y");
        assert_eq!(msgs[0].data, b"Subject: s\r\n\r\n.dot\r\nx.y\r\n");
    }

    #[test]
    fn body_split_at_every_byte() {
        let body = b"l1\r\n..\r\n.x\r\n\r\n.\r\nNOOP\r\n";
        for split in 0..body.len() {
            let mut p = protocol(ReceiverOptions {
                keep_messages: 1,
                ..Default::default()
            });
            run(
                &mut p,
                b"HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<b@y>\r\nDATA\r\n",
            );
            let mut buf = body[..split].to_vec();
            let (used, _) = p.feed(&buf);
            buf.drain(..used);
            buf.extend_from_slice(&body[split..]);
            let (out, _) = run(&mut p, &buf);
            assert_eq!(codes(&out), ["250", "250"], "split {split}");
            assert_eq!(
                p.shared.messages()[0].data,
                b"l1\r\n.\r\nx\r\n\r\n",
                "split {split}"
            );
        }
    }

    #[test]
    fn bare_lf_does_not_end_data() {
        let mut p = protocol(ReceiverOptions {
            keep_messages: 1,
            ..Default::default()
        });
        let (out, _) = run(
            &mut p,
            b"HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<b@y>\r\nDATA\r\na\n.\nb\r\n.\r\n",
        );
        assert_eq!(codes(&out), ["220", "250", "250", "250", "354", "250"]);
        assert_eq!(p.shared.messages()[0].data, b"a\n.\nb\r\n");
    }

    #[test]
    fn bad_sequences() {
        let mut p = protocol(ReceiverOptions::scripted());
        let (out, _) = run(
            &mut p,
            b"MAIL FROM:<a@x>\r\nHELO c\r\nRCPT TO:<b@y>\r\nDATA\r\nMAIL FROM:<a@x>\r\n\
              MAIL FROM:<a@x>\r\nDATA\r\nRCPT TO:<permfail+1@y>\r\nDATA\r\nRSET\r\n\
              BOGUS\r\n\r\nVRFY x\r\nEXPN x\r\nSTARTTLS\r\nMAIL FROM:a@x\r\nNOOP\r\n",
        );
        assert_eq!(
            codes(&out),
            [
                "220", "503", "250", "503", "503", "250", "503", "503", "550", "554", "250", "500",
                "500", "252", "502", "502", "501", "250"
            ]
        );
    }

    #[test]
    fn errors_in_a_row_past_max_errors_get_421_and_close() {
        let mut p = protocol(ReceiverOptions {
            max_errors: Some(3),
            ..Default::default()
        });
        // A good reply ends a row of errors; an over-long line is an error too.
        let long = [vec![b'A'; 2 * MAX_LINE], b"\r\n".to_vec()].concat();
        let input = [b"X\r\nMAIL FROM:<>\r\nNOOP\r\nX\r\nX\r\n".as_slice(), &long].concat();
        let (out, step) = run(&mut p, &input);
        assert_eq!(
            codes(&out),
            ["220", "500", "503", "250", "500", "500", "500"]
        );
        assert_eq!(step, Step::NeedInput);
        let (out, step) = run(&mut p, b"X\r\nNOOP\r\n");
        assert_eq!(out, "421 4.7.0 Too many errors, closing connection\r\n");
        assert_eq!(step, Step::Close);
        // No limit: errors are only answered.
        let mut p = protocol(ReceiverOptions {
            max_errors: None,
            ..Default::default()
        });
        let (out, _) = run(&mut p, &b"X\r\n".repeat(50));
        assert_eq!(codes(&out).len(), 51);
    }

    #[test]
    fn long_lines_are_bounded() {
        let mut p = protocol(ReceiverOptions::default());
        let long = vec![b'A'; 3 * MAX_LINE];
        let (used, step) = p.feed(&long);
        assert_eq!((used, step), (long.len(), Step::NeedInput));
        let (out, _) = run(&mut p, b"AAAA\r\nNOOP\r\n");
        assert_eq!(codes(&out), ["220", "500", "250"]);
    }

    #[test]
    fn oversize_message_rejected_but_session_continues() {
        let mut p = protocol(ReceiverOptions {
            max_message_size: 10,
            keep_messages: 1,
            ..Default::default()
        });
        let (out, _) = run(
            &mut p,
            b"EHLO c\r\nMAIL FROM:<a@x> SIZE=11\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n\
              0123456789\r\n.\r\nNOOP\r\n",
        );
        assert!(out.contains("250-SIZE 10\r\n"));
        assert_eq!(
            codes(&out),
            ["220", "250", "552", "250", "250", "354", "552", "250"]
        );
        assert!(p.shared.messages().is_empty());
        assert_eq!(
            p.tx.body.capacity(),
            0,
            "oversize body must not be buffered"
        );
    }

    #[test]
    fn pipelining_not_advertised_when_disabled() {
        let mut p = protocol(ReceiverOptions {
            pipelining: false,
            ..Default::default()
        });
        let (out, _) = run(&mut p, b"EHLO c\r\n");
        assert!(!out.contains("PIPELINING"));
        assert!(out.ends_with("250 ENHANCEDSTATUSCODES\r\n"));
    }

    #[test]
    fn queue_ids_are_16_hex_and_distinct() {
        let mut a = Vec::new();
        push_hex(&mut a, splitmix64(1));
        let mut b = Vec::new();
        push_hex(&mut b, splitmix64(2));
        assert_eq!(a.len(), 16);
        assert!(a.iter().all(u8::is_ascii_hexdigit));
        assert_ne!(a, b);
    }
}
