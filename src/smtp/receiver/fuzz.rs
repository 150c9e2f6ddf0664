//! The receiver's dialogue driven without sockets, for the fuzz target `receiver` and the corpus
//! replay in `tests/fuzz_corpus.rs` (see `crate::fuzzing`). Owns nothing else; uses only the
//! receiver's own [`Protocol`] the way its socket loop does.

use std::sync::{Arc, Mutex};

use super::protocol::{Phase, Protocol, Step};
use super::{ReceiverOptions, ReceiverPolicy, Script, Shared};

/// Longest command line the protocol buffers (`protocol::MAX_LINE`): past it, the line's bytes
/// are discarded as they arrive.
const MAX_LINE: usize = 1000;

/// A message handed on: envelope sender, recipients, body (unstuffed).
pub type Handed = (String, Vec<String>, Vec<u8>);

/// What one client session produced: every reply byte, the messages handed on, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dialogue {
    pub replies: Vec<u8>,
    pub messages: Vec<Handed>,
    pub closed: bool,
}

/// A bounce-sink-like policy: local parts starting with `b` are accepted, others refused; every
/// accepted message is kept, and a message whose first body byte is `!` is refused (451).
#[derive(Debug, Default)]
struct Keep(Mutex<Vec<Handed>>);

impl ReceiverPolicy for Keep {
    fn rcpt(&self, address: &str) -> Result<(), String> {
        if address.starts_with('b') {
            Ok(())
        } else {
            Err("550 5.1.1 No such user".into())
        }
    }

    fn message(&self, mail_from: &str, rcpts: &[String], data: Vec<u8>) -> Result<(), String> {
        if data.first() == Some(&b'!') {
            return Err("451 4.3.0 Busy".into());
        }
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        kept.push((mail_from.to_owned(), rcpts.to_vec(), data));
        Ok(())
    }
}

/// Runs one session over `input`, delivered in pieces of the given sizes (the rest, if any, in
/// one last piece), as the socket loop would: unconsumed input stays buffered and more is
/// appended; `Slow` is finished at once; `Close`/`Drop` end the session. `scripted`: the test
/// receiver's [`Script`] instead of a sink policy. Small limits (4 KiB messages, 10 errors in
/// a row) so that every path is reachable from short inputs.
///
/// Panics if the socket loop's own assumption breaks: after `NeedInput`, what stays buffered
/// is less than a command line's limit (more would fill the loop's read buffer).
pub fn session(input: &[u8], pieces: &[usize], scripted: bool) -> Dialogue {
    let keep = Arc::new(Keep::default());
    let opts = ReceiverOptions {
        max_message_size: 4096,
        keep_messages: 64,
        policy: (!scripted).then(|| keep.clone() as Arc<dyn ReceiverPolicy>),
        script: scripted.then(Script::default),
        ..ReceiverOptions::default()
    };
    let shared = Arc::new(Shared::new(opts));
    let mut proto = Protocol::new(shared.clone(), false);
    proto.greet();
    let mut replies = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut at = 0;
    let mut sizes = pieces.iter().copied().chain(std::iter::once(usize::MAX));
    let mut closed = false;
    'session: while at < input.len() {
        let n = sizes
            .next()
            .unwrap_or(usize::MAX)
            .max(1)
            .min(input.len() - at);
        buf.extend_from_slice(&input[at..at + n]);
        at += n;
        loop {
            let (used, step) = proto.feed(&buf);
            assert!(used <= buf.len(), "feed consumed more than it was given");
            buf.drain(..used);
            replies.append(&mut proto.out);
            match step {
                Step::NeedInput => {
                    // In DATA only a "." or ".\r" at a line start waits for what follows.
                    let limit = if proto.phase == Phase::Data {
                        3
                    } else {
                        MAX_LINE
                    };
                    assert!(
                        buf.len() < limit,
                        "{} bytes left buffered in {:?}",
                        buf.len(),
                        proto.phase
                    );
                    break;
                }
                Step::Slow => proto.finish_data(),
                Step::Close | Step::Drop | Step::StartTls => {
                    closed = true;
                    break 'session;
                }
            }
        }
    }
    replies.append(&mut proto.out);
    let mut messages = std::mem::take(&mut *keep.0.lock().unwrap_or_else(|e| e.into_inner()));
    if scripted {
        messages.extend(
            shared
                .messages()
                .drain(..)
                .map(|m| (m.mail_from, vec![m.rcpt], m.data)),
        );
    }
    Dialogue {
        replies,
        messages,
        closed,
    }
}
