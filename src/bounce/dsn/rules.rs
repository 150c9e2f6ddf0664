//! From text and status codes to a [`Reason`]: the keyword table, the status-code mapping,
//! the SMTP command a rejection answered, and whether a reason is hard.

use super::Reason;

/// Keyword rules, tried in order on the lowercased text.
const RULES: &[(Reason, &[&str])] = &[
    // The sender's side (its domain, its IP, its authentication) is not the recipient's fault.
    (
        Reason::Policy,
        &[
            "domain of sender",
            "unroutable sender",
            "permission to post",
            "sender address rejected",
            "sender domain",
            "spamhaus",
            "blacklist",
            "blocklist",
            "block list",
            "black list",
            "dnsbl",
            "client host blocked",
            "client host rejected",
            "ip source",
            "spf",
            "dkim",
            "dmarc",
            "authentication checks",
            "reverse dns",
            "ptr record",
            "ip name lookup failed",
            "recipient preferences",
            "too many recipients",
        ],
    ),
    (
        Reason::Spam,
        &[
            "spam",
            "junk mail",
            "virus",
            "malware",
            "unsolicited",
            "bulk mail",
            "content filter",
            "message content",
            "rejected due to content",
            "phish",
        ],
    ),
    (
        Reason::MailboxFull,
        &[
            "mailbox full",
            "mailbox is full",
            "mailbox was full",
            "quota",
            "storage",
            "full mailbox",
            "too much mail",
            "mailbox size limit",
            "mailfolder is full",
            "maildir is full",
            "box is full",
            "is over the limit",
            "exceeds the size of the mailbox",
            "mailbox has exceeded",
            "account is full",
            "would exceed",
            "mailbox exceeds",
            "mailbox exceeded",
            "'s mailbox",
            "exceeded the local limit",
        ],
    ),
    (
        Reason::MessageTooBig,
        &[
            "message too big",
            "message too large",
            "too large",
            "size exceeds",
            "message size",
            "exceeds size",
            "exceeded the maximum",
            "message length exceeds",
            "message file too big",
            "size limit",
            "too big",
        ],
    ),
    (
        Reason::Suspended,
        &[
            "suspended",
            "disabled",
            "inactive",
            "deactivated",
            "not active",
            "account is locked",
            "locked account",
            "account has been closed",
            "is frozen",
            "account is blocked",
            "has been frozen",
            "is not accepting mail",
        ],
    ),
    (
        Reason::Moved,
        &[
            "has moved",
            "address changed",
            "moved to",
            "no longer valid",
        ],
    ),
    (
        Reason::NotAccept,
        &[
            "null mx",
            "doesn't receive email",
            "does not receive email",
            "no smtp service",
            "couldn't find a mail exchanger",
            "does not accept mail",
            "no mx record",
        ],
    ),
    (
        Reason::Network,
        &[
            "malformed or unexpected name server reply",
            "hop count",
            "routing loop",
            "network error",
            "too many hops",
        ],
    ),
    (
        Reason::HostUnknown,
        &[
            "host unknown",
            "unknown host",
            "host not found",
            "domain not found",
            "no such domain",
            "domain does not exist",
            "unrouteable",
            "unroutable",
            "name or service not known",
            "host or domain name not found",
            "domain name not found",
            "unknown domain",
            "nxdomain",
            "no mx",
            "mx record",
            "dns error",
            "domain lookup failed",
            "domain is not reachable",
            "name server",
            "hostname not found",
            "host name lookup failure",
        ],
    ),
    (
        Reason::UserUnknown,
        &[
            "user unknown",
            "unknown user",
            "no such user",
            "user not found",
            "does not exist",
            "doesn't exist",
            "not exist",
            "mailbox not found",
            "recipient not found",
            "invalid recipient",
            "no mailbox",
            "unknown recipient",
            "recipient unknown",
            "not recognized",
            "not a valid mailbox",
            "no such mailbox",
            "invalid mailbox",
            "unknown local part",
            "unknown local-part",
            "no such recipient",
            "address unknown",
            "unknown address",
            "bad destination mailbox",
            "mailbox does not",
            "addressee unknown",
            "no such address",
            "not a known user",
            "user doesn't",
            "user not known",
            "invalid address",
            "account does not",
            "unknown or illegal alias",
            "mailbox unavailable",
            "no account",
            "address is correct",
            "not our customer",
            "user is unknown",
            "recipient no longer",
            "unknown mailbox",
            "mailbox is unavailable",
            "is not a valid",
            "user invalid",
            "not listed",
            "address not present",
            "no valid recipients",
            "undeliverable address",
            "dosn't exist",
            "not found in",
            "no longer available",
            "does not have an account",
            "user_unknown",
            "userunknown",
            "nosuchuser",
            "unknown recipients",
            "address rejected.",
        ],
    ),
    (
        Reason::Expired,
        &[
            "connection timed out",
            "timed out",
            "retry timeout exceeded",
            "delivery time expired",
            "message expired",
            "was not delivered within",
            "could not be delivered within",
            "delivery period",
            "failed 20 attempts",
            "will be retried",
            "retry time not reached",
        ],
    ),
    (
        Reason::Policy,
        &[
            "blocked",
            "denied",
            "not allowed",
            "policy",
            "authenticat",
            "reverse lookup",
            "relay",
            "rbl",
            "reputation",
            "not authorized",
            "unauthorized",
            "prohibited",
            "refused",
            "rejected",
            "too many",
            "rate limit",
            "throttl",
            "tls",
            "starttls",
            "filtered",
            "filter",
            "banned",
            "not permitted",
            "sender address",
            "your ip",
            "listed",
            "security",
            "unacceptable",
            "not accepted",
            "permission",
            "forbidden",
        ],
    ),
    (
        Reason::Network,
        &[
            "connection refused",
            "network",
            "no route",
            "could not connect",
            "couldn't connect",
            "lost connection",
            "connection reset",
            "unable to connect",
            "connection dropped",
            "conversation with",
            "connect to",
            "no answer",
            "establish an smtp connection",
            "not reachable",
        ],
    ),
    (
        Reason::System,
        &[
            "system error",
            "internal error",
            "local error",
            "mailer error",
            "configuration",
            "loop",
            "temporary local problem",
            "server error",
            "out of memory",
            "disk",
            "resources",
            "system is busy",
            "system not available",
            "program",
            "mail system",
            "service unavailable",
            "service currently unavailable",
            "ldap",
            "couldn't create",
            "pipe to",
            "upstream error",
        ],
    ),
    (
        Reason::Expired,
        &[
            "too long in queue",
            "in the queue too long",
            "giving up",
            "gave up",
            "has expired",
            "timeout waiting",
            "time limit",
            "maximum time",
            "for more than",
            "queue timeout",
            "delayed for",
            "retry period",
            "expired",
        ],
    ),
];

/// Reason from a status code alone, if the code is specific enough.
fn reason_from_status(status: &str) -> Option<Reason> {
    let mut it = status.split('.');
    let _class = it.next()?;
    let subject = it.next()?;
    let detail = it.next()?;
    Some(match (subject, detail) {
        ("1", "1") => Reason::UserUnknown,
        ("1", "2") => Reason::HostUnknown,
        ("1", "6") => Reason::Moved,
        ("1", "10") => Reason::NotAccept,
        ("2", "1") => Reason::Suspended,
        ("2", "2") => Reason::MailboxFull,
        ("2", "3") | ("3", "4") => Reason::MessageTooBig,
        ("3", "1") | ("3", "2") | ("3", "5") => Reason::System,
        ("4", "4") => Reason::HostUnknown,
        ("4", "1") | ("4", "2") | ("4", "6") => Reason::Network,
        ("4", "7") => Reason::Expired,
        ("6", _) => Reason::Spam,
        ("7", "1") | ("7", "0") => Reason::Policy,
        ("7", d) if d.len() == 2 => Reason::Policy,
        ("7", _) => Reason::Policy,
        _ => return None,
    })
}

/// Decides the reason from diagnostic text and status: a specific status code wins unless
/// the text says something more telling.
pub(super) fn decide_reason(text: &str, status: Option<&str>) -> Reason {
    let from_text = reason_from_text(text);
    let from_status = status.and_then(reason_from_status);
    let lower = text.to_lowercase();
    // A mailbox rejected at the end of DATA is a content filter speaking, not a dead address.
    let after_data = rejected_after_data(&lower);
    // The sender-side words (first rule: blocklists, SPF/DKIM, "recipient preferences",
    // rate limits) beat any status: a 5.1.1 that says so is not a dead mailbox.
    let strong_policy = RULES[0].1.iter().any(|w| lower.contains(w));
    let r = match (from_status, from_text) {
        (_, Some(Reason::Policy)) if strong_policy => Reason::Policy,
        // A specific mailbox status (moved, disabled) beats a generic "user unknown".
        (Some(s @ Reason::Moved), Some(Reason::UserUnknown)) => s,
        // Words that name the problem beat a code that is often reused loosely.
        (
            _,
            Some(
                t @ (Reason::UserUnknown
                | Reason::MailboxFull
                | Reason::HostUnknown
                | Reason::Suspended
                | Reason::MessageTooBig
                | Reason::Spam
                | Reason::NotAccept
                | Reason::Moved),
            ),
        ) => t,
        (Some(Reason::Policy | Reason::Network | Reason::System), Some(t)) => t,
        (Some(s), _) => s,
        (None, Some(t)) => t,
        (None, None) => Reason::Other,
    };
    // A local delivery agent failing (procmail, maildrop) is a mailer error, whatever the
    // status says and whatever it says about the user.
    let local_agent = ["procmail:", "maildrop:", "couldn't create \"/var/"]
        .iter()
        .any(|w| lower.contains(w));
    // A DNS lookup that failed with a temporary status is a network problem, not a domain
    // known not to exist.
    let dns_temporary = r == Reason::HostUnknown
        && status.is_some_and(|s| s.starts_with('4'))
        && ["name server", "dns error", "lookup"]
            .iter()
            .any(|w| lower.contains(w));
    // Exchange Online's directory-based edge blocking: "550 5.4.1 Recipient address rejected:
    // Access denied" is its answer for a recipient not in the tenant's directory.
    let dbeb = lower.contains("recipient address rejected: access denied");
    if local_agent {
        Reason::System
    } else if dbeb {
        Reason::UserUnknown
    } else if dns_temporary {
        Reason::Network
    } else if r == Reason::UserUnknown && after_data {
        Reason::Policy
    } else {
        r
    }
}

/// Whether the text says the rejection came after DATA (a content filter), not at RCPT.
fn rejected_after_data(lower: &str) -> bool {
    smtp_command(lower, None) == Some(Command::Data)
}

/// The SMTP command a rejection answered, as far as the report says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Command {
    Mail,
    Rcpt,
    Data,
}

/// The command the report names (`lower`: lowercased text; Postfix "in reply to RCPT TO command", Exim "after RCPT
/// TO:", a Sendmail transcript's `>>>` line before the `<<<` error, …). With `addr`, a
/// transcript's error line naming that address wins over the first error.
pub(super) fn smtp_command(lower: &str, addr: Option<&str>) -> Option<Command> {
    let mut last: Option<Command> = None;
    let mut first_error: Option<Option<Command>> = None;
    let lines: Vec<&str> = lower.lines().map(str::trim_start).collect();
    for (i, &line) in lines.iter().enumerate() {
        if let Some(cmd) = line.strip_prefix(">>> ") {
            let cmd = cmd.trim_start();
            last = if cmd.starts_with("rcpt") {
                Some(Command::Rcpt)
            } else if cmd.starts_with("mail") {
                Some(Command::Mail)
            } else if cmd.starts_with("data") || cmd == "." {
                Some(Command::Data)
            } else {
                None
            };
        } else if line.starts_with("<<< 4") || line.starts_with("<<< 5") {
            // With PIPELINING, Sendmail shows the RCPT replies after `>>> DATA`: every reply
            // before the last one of that command answered a RCPT.
            let more = lines[i + 1..]
                .iter()
                .take_while(|l| !l.starts_with(">>> "))
                .any(|l| l.starts_with("<<< "));
            let cmd = if last == Some(Command::Data) && more {
                Some(Command::Rcpt)
            } else {
                last
            };
            if addr.is_some_and(|a| line.contains(a)) {
                return cmd;
            }
            first_error.get_or_insert(cmd);
        }
    }
    if let Some(c) = first_error {
        return c;
    }
    let text = lower.split_whitespace().collect::<Vec<_>>().join(" ");
    let data = [
        "end of data",
        "after data",
        "(data)",
        "data command",
        "after end of data",
    ]
    .iter()
    .any(|p| text.contains(p));
    let rcpt = [
        "rcpt to command",
        "after rcpt to",
        "in reply to rcpt",
        "rcpt to:<",
        "(rcpt)",
        "our rcpt to",
        "rcpt to response",
        "smtp:rcpt",
    ]
    .iter()
    .any(|p| text.contains(p));
    let mail = [
        "mail from command",
        "after mail from",
        "in reply to mail from",
    ]
    .iter()
    .any(|p| text.contains(p));
    match (data, rcpt, mail) {
        (true, false, _) => Some(Command::Data),
        (false, true, _) => Some(Command::Rcpt),
        (false, false, true) => Some(Command::Mail),
        _ => None,
    }
}

/// "No such user" is a dead address when it answered RCPT, or when the status says so (x.1.1)
/// and no later command is named; the same words after DATA, or with neither a RCPT nor a
/// x.1.1 status (a 5.7.1, a bare 550 from a filtering gateway), are a filter speaking — soft,
/// like sisimai's "filtered".
pub(super) fn user_unknown_or_filtered(
    reason: Reason,
    status: Option<&str>,
    command: Option<Command>,
    text: &str,
) -> Reason {
    if reason != Reason::UserUnknown {
        return reason;
    }
    let from_status = status.and_then(reason_from_status);
    match command {
        Some(Command::Rcpt) => Reason::UserUnknown,
        Some(Command::Data) => Reason::Policy,
        _ if from_status == Some(Reason::Policy) => Reason::Policy,
        // A remote reply quoted in the text with an x.7.x code ("550-'5.7.1 … Access denied'")
        // is an access verdict, whatever the local summary calls it.
        _ if mentions_security_status(text) => Reason::Policy,
        // "5.2.1 User unknown" with no command named: the mailbox exists but is disabled.
        None if from_status == Some(Reason::Suspended) => Reason::Suspended,
        // Like sisimai: without an x.1.1 code, the bare "user unknown" / "no such user" that
        // filtering gateways also answer is a dead address only when it answered RCPT.
        None if from_status != Some(Reason::UserUnknown) && only_generic_unknown(text) => {
            Reason::Policy
        }
        _ => Reason::UserUnknown,
    }
}

/// Words every "no such mailbox" filter also uses; the other user-unknown wordings ("not
/// recognized", "does not exist", "RecipientNotFound", …) come from the mailbox's own server.
const GENERIC_UNKNOWN: &[&str] = &[
    "user unknown",
    "unknown user",
    "no such user",
    "mailbox unavailable",
    "user doesn't",
    "doesn't have a",
];

/// `text` quotes an RFC 3463 code of the security/policy class (`5.7.1`, `4.7.0`).
fn mentions_security_status(text: &str) -> bool {
    let b = text.as_bytes();
    text.match_indices(".7.").any(|(i, _)| {
        i > 0
            && matches!(b[i - 1], b'4' | b'5')
            && (i < 2 || !(b[i - 2].is_ascii_alphanumeric() || b[i - 2] == b'.'))
            && b.get(i + 3).is_some_and(u8::is_ascii_digit)
    })
}

/// `text` says "user unknown" only in the generic words, with no x.1.1 code anywhere.
fn only_generic_unknown(text: &str) -> bool {
    let lower = text.to_lowercase();
    let words = RULES
        .iter()
        .find(|(r, _)| *r == Reason::UserUnknown)
        .map_or(&[][..], |(_, w)| *w);
    // Yahoo's own "554 delivery error: dd This user doesn't have a yahoo.com account".
    let yahoo_dd = lower.contains("delivery error: dd ");
    !yahoo_dd
        && GENERIC_UNKNOWN.iter().any(|w| lower.contains(w))
        && !words
            .iter()
            .any(|w| !GENERIC_UNKNOWN.contains(w) && lower.contains(w))
        && !lower.contains(".1.1")
}

pub fn reason_from_text(text: &str) -> Option<Reason> {
    let lower = text.to_lowercase();
    if lower.trim().is_empty() {
        return None;
    }
    RULES
        .iter()
        .find(|(_, words)| words.iter().any(|w| lower.contains(w)))
        .map(|(r, _)| *r)
}

pub(super) fn is_hard(reason: Reason, temporary: bool) -> bool {
    match reason {
        Reason::UserUnknown | Reason::HostUnknown | Reason::Moved => true,
        Reason::NotAccept => !temporary,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_unknown_after_data_or_with_5_7_is_a_filter() {
        let rcpt = "550 5.1.1 <a@b.example>: User unknown (in reply to RCPT TO command)";
        let data = "550 Unknown user a@b.example (in reply to end of DATA\n    command)";
        assert_eq!(
            smtp_command(&rcpt.to_lowercase(), None),
            Some(Command::Rcpt)
        );
        assert_eq!(
            smtp_command(&data.to_lowercase(), None),
            Some(Command::Data)
        );
        let r = |t: &str, st: Option<&str>| {
            let cmd = smtp_command(&t.to_lowercase(), Some("a@b.example"));
            user_unknown_or_filtered(decide_reason(t, st), st, cmd, t)
        };
        assert_eq!(r(rcpt, Some("5.1.1")), Reason::UserUnknown);
        assert_eq!(r(data, None), Reason::Policy);
        assert_eq!(
            r("550 5.7.1 550 User Unknown: a@b.example", Some("5.7.1")),
            Reason::Policy
        );
        assert_eq!(
            r("550 5.1.6 recipient no longer on server", Some("5.1.6")),
            Reason::Moved
        );
        assert_eq!(
            r("550 5.2.1 <a@b.example>... User Unknown", Some("5.2.1")),
            Reason::Suspended
        );
        // Sendmail with PIPELINING: the RCPT replies show up after `>>> DATA`.
        let t = ">>> DATA\n<<< 550 5.1.1 <a@b.example>... User Unknown\n<<< 503 5.0.0 Need RCPT\n";
        assert_eq!(
            smtp_command(&t.to_lowercase(), Some("a@b.example")),
            Some(Command::Rcpt)
        );
        let t = ">>> DATA\n<<< 550 Unknown user a@b.example\n554 5.0.0 Service unavailable\n";
        assert_eq!(
            smtp_command(&t.to_lowercase(), Some("a@b.example")),
            Some(Command::Data)
        );
    }

    #[test]
    fn generic_user_unknown_without_rcpt_or_x_1_1_is_a_filter() {
        let r = |t: &str, st: Option<&str>| {
            let cmd = smtp_command(&t.to_lowercase(), Some("a@b.example"));
            let reason = user_unknown_or_filtered(decide_reason(t, st), st, cmd, t);
            (reason, is_hard(reason, false))
        };
        // The words filtering gateways use, with nothing saying RCPT: soft.
        assert_eq!(
            r("550 <a@b.example> No such user here", None).0,
            Reason::Policy
        );
        assert_eq!(
            r("550 Unknown user a@b.example", Some("5.0.0")).0,
            Reason::Policy
        );
        // … but hard with an x.1.1 code, or when the reply answered RCPT.
        assert_eq!(
            r("550 5.1.1 <a@b.example>... User Unknown", None),
            (Reason::UserUnknown, true)
        );
        let t =
            "most progress was RCPT TO response; remote host said: 550 Unknown user a@b.example";
        assert_eq!(r(t, Some("5.5.0")), (Reason::UserUnknown, true));
        // The mailbox's own server wording stays hard.
        assert_eq!(
            r("The recipient name is not recognized", None),
            (Reason::UserUnknown, true)
        );
        // Exchange Online's edge blocking and Yahoo's "dd" wording name a missing mailbox.
        assert_eq!(
            r(
                "550 5.4.1 [a@b.example]: Recipient address rejected: Access denied",
                Some("5.4.1")
            ),
            (Reason::UserUnknown, true)
        );
        let t =
            "554 delivery error: dd This user doesn't have a b.example account (a@b.example) [0]";
        assert_eq!(r(t, Some("5.0.0")), (Reason::UserUnknown, true));
        // A quoted 5.7.x reply is an access verdict.
        let t = "5.1.0 - Unknown address error 550-'5.7.1 <x@y.example>... Access denied'";
        assert_eq!(r(t, Some("5.1.0")).0, Reason::Policy);
    }

    #[test]
    fn temporary_dns_failures_and_local_agents() {
        let t = "Deferred: Name server: example.jp.: host name lookup failure";
        assert_eq!(decide_reason(t, Some("4.4.7")), Reason::Network);
        assert_eq!(
            decide_reason("Host or domain name not found", Some("5.4.4")),
            Reason::HostUnknown
        );
        let t = "procmail: Couldn't create \"/var/spool/mail/neko\" id: No such user";
        assert_eq!(decide_reason(t, Some("5.1.1")), Reason::System);
    }
}
