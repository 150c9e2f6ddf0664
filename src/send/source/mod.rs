//! Streaming recipient source: turns a CSV file into validated [`Recipient`]s.
//!
//! Why it exists: recipient lists are 1–10 million rows and arrive from
//! spreadsheets, CRMs and hand edits, so they are both large and dirty. This
//! module is the single gate between that file and everything downstream:
//!
//! * **Constant memory.** Rows are streamed through one reused
//!   [`csv::ByteRecord`]; nothing is collected. The only per-row allocations
//!   are the accepted recipient's own record and address. The optional dedupe
//!   set is the one structure that grows (see "Dedupe" below). A field longer
//!   than `max_field_size` (64 KB by default) or a row longer than
//!   `max_record_size` (1 MB) is cut off before the `csv` reader holds it
//!   (`bounded`) and the row rejected as `too_large`, so no file — not a 1 GB
//!   field, not a quote that is never closed — makes the reader hold more.
//! * **Injection-proof output.** Any row with a CR, LF, NUL, other C0 control
//!   (TAB is allowed: it cannot end a line, and the renderer writes it as a
//!   space in header values), DEL, C1 control or U+2028/U+2029 in *any* field is
//!   rejected, so no value a template interpolates can ever start a new header
//!   line (`Bob\r\nBcc: x@evil.test` never reaches the renderer). Quoted
//!   multi-line fields are parsed correctly by `csv` and are then rejected by
//!   this same rule: a newline inside a value has no safe place in a mail.
//! * **Stable identity.** [`Recipient::row`] is the 1-based number of the data
//!   record, counting rejected records too, so the journal, VERP tags and
//!   Message-IDs stay stable however many rows are rejected. Blank lines are
//!   skipped by the `csv` parser and are not counted. Note that a bare CR is a
//!   record terminator to `csv` (old Mac line endings), so an unquoted CR splits
//!   a row in two rather than reaching a field.
//! * **Bad rows are skipped, not fatal.** Each is counted per [`RejectKind`]
//!   and, if configured, written to a rejects CSV (`row,line,reason,<columns>`)
//!   with the original fields, so an operator can fix and resend them. Invalid
//!   UTF-8 bytes are written as U+FFFD so the rejects file itself is UTF-8.
//!   Only I/O failures end the stream.
//!
//! Accepted address syntax is the RFC 5321 mailbox subset that every relay
//! takes: a dot-atom local part of at most 64 octets, an LDH domain of at
//! least two labels (each ≤ 63 octets, total ≤ 255) whose last label is not
//! numeric. Surrounding whitespace is trimmed and the domain is lowercased;
//! Unicode (IDN) domains are converted to punycode. Rejected as unsupported,
//! with a reason saying so: quoted local parts, non-ASCII local parts (would
//! need SMTPUTF8) and IP-literal domains.
//!
//! ## Dedupe
//!
//! Operators expect `Bob@X.com` and `bob@x.com` to be the same person, so
//! duplicates are detected on the *whole* address lowercased, although the
//! local part is formally case-sensitive (the address actually sent keeps its
//! local part's case). To keep memory bounded, the set stores a 64-bit SipHash
//! fingerprint (fixed keys) per distinct address instead of the address, in an
//! open-addressing table of 8-byte slots at most 7/10 full (power-of-two sizes),
//! so 11.4–22.9 bytes per distinct address: 1.2M addresses hold 16.8 MB (2^21
//! slots, sized up front from the list's estimated row count), 10M hold 134 MB
//! (2^24); a table that has to grow past the estimate holds both sizes while
//! it doubles. The reader prefetches a row's slot before validating the row.
//! Two distinct addresses collide with probability about n²/2^65: 4·10⁻⁸ for
//! 1.2M addresses, 3·10⁻⁶ for 10M; a collision wrongly rejects one recipient
//! as a duplicate (it shows up in the rejects file).
//!
//! A field that opens a quote and never closes it swallows the rest of the
//! file (up to the next `"`) into one record, as in any CSV parser; that record
//! is cut at the size caps like any other and rejected as `too_large`.
//!
//! ## Layout
//!
//! This file owns the stream: [`Source`] and its options, statistics, errors and reject
//! reasons, and the line tracking of the reader. `bounded` enforces the size caps under the
//! `csv` reader, `columns` checks the header ([`Columns`]),
//! `validate` holds the per-row checks and the address syntax ([`check_address`],
//! [`AddressProblem`]), `dedupe` the fingerprint table, `rejects` the rejects CSV. The only
//! module of the crate it uses is `journal` (the [`RowSet`](crate::journal::RowSet) of rows
//! done in an earlier session).

mod bounded;
mod columns;
mod dedupe;
mod rejects;
mod validate;

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Arc;

use csv::{ByteRecord, StringRecord};

pub use columns::Columns;
pub(crate) use columns::build_columns;
pub use validate::{AddressProblem, check_address};

use bounded::{Bounded, Oversize};
use dedupe::Fingerprints;
use rejects::Rejects;
use validate::check_row;

/// How to read one recipient list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceOptions {
    pub path: PathBuf,
    /// Any ASCII byte except `"`, CR and LF.
    pub delimiter: u8,
    /// Header names are trimmed of surrounding whitespace; a UTF-8 BOM before
    /// the first line is ignored either way.
    pub has_header: bool,
    /// Column names when `has_header` is false (required then); with a header,
    /// if given, the header must equal it exactly (guards against a list
    /// exported with shuffled columns).
    pub columns: Option<Vec<String>>,
    pub address_column: String,
    pub dedupe: bool,
    /// Rejects CSV; `None` still counts rejects but writes nothing.
    pub rejects_path: Option<PathBuf>,
    /// Longest field and record, in bytes as written: a longer row is rejected
    /// ([`RejectKind::TooLarge`]) without ever being held whole in memory.
    pub max_field_size: usize,
    pub max_record_size: usize,
}

/// Default [`SourceOptions::max_field_size`] (the campaign's default too).
pub const DEFAULT_MAX_FIELD_SIZE: usize = 64 << 10;
/// Default [`SourceOptions::max_record_size`] (the campaign's default too).
pub const DEFAULT_MAX_RECORD_SIZE: usize = 1 << 20;

/// At most `max` characters of `s`, with "…" when cut: for echoing input in error messages.
pub fn elide(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match s.char_indices().nth(max) {
        None => s.into(),
        Some((i, _)) => format!("{}…", &s[..i]).into(),
    }
}

/// How much of a value an error message echoes.
const ECHO: usize = 200;

/// A list of names for an error message, at most [`ECHO`] characters of it.
fn elide_names(names: &[String]) -> String {
    elide(&format!("{names:?}"), ECHO).into_owned()
}

impl SourceOptions {
    /// Defaults for the common case: comma-separated with a header, address in
    /// `email`, dedupe on, no rejects file.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SourceOptions {
            path: path.into(),
            delimiter: b',',
            has_header: true,
            columns: None,
            address_column: "email".to_owned(),
            dedupe: true,
            rejects_path: None,
            max_field_size: DEFAULT_MAX_FIELD_SIZE,
            max_record_size: DEFAULT_MAX_RECORD_SIZE,
        }
    }
}

/// One accepted row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// 1-based data-record number, rejected records included: the stable
    /// identity used by the journal, VERP and Message-ID.
    pub row: u64,
    /// File line where the record starts (for humans fixing the file).
    pub line: u64,
    /// Normalised address: trimmed, domain lowercased and punycode.
    pub address: String,
    /// All fields in column order, exactly as in the file.
    pub record: StringRecord,
}

impl Recipient {
    /// Field `i`, or `""` if out of range (never panics).
    pub fn field(&self, i: usize) -> &str {
        self.record.get(i).unwrap_or("")
    }
}

/// Counter key for [`RejectReason`], without its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectKind {
    InvalidUtf8,
    FieldCount,
    ControlCharacter,
    EmptyAddress,
    InvalidAddress,
    DuplicateAddress,
    /// A field or the whole record over its size cap.
    TooLarge,
}

impl RejectKind {
    pub const ALL: [RejectKind; 7] = [
        RejectKind::InvalidUtf8,
        RejectKind::FieldCount,
        RejectKind::ControlCharacter,
        RejectKind::EmptyAddress,
        RejectKind::InvalidAddress,
        RejectKind::DuplicateAddress,
        RejectKind::TooLarge,
    ];

    /// Stable snake_case name for logs and summaries.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectKind::InvalidUtf8 => "invalid_utf8",
            RejectKind::FieldCount => "field_count",
            RejectKind::ControlCharacter => "control_character",
            RejectKind::EmptyAddress => "empty_address",
            RejectKind::InvalidAddress => "invalid_address",
            RejectKind::DuplicateAddress => "duplicate_address",
            RejectKind::TooLarge => "too_large",
        }
    }
}

impl fmt::Display for RejectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a row was skipped; `Display` is the short reason in the rejects file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RejectReason {
    InvalidUtf8 {
        column: String,
    },
    FieldCount {
        expected: usize,
        found: usize,
    },
    ControlCharacter {
        column: String,
        code_point: u32,
    },
    EmptyAddress,
    InvalidAddress(AddressProblem),
    /// The first row is not known: the set holds fingerprints only.
    DuplicateAddress,
    /// A field longer than `max_field_size` bytes.
    FieldTooLarge {
        column: String,
        limit: usize,
    },
    /// A record longer than `max_record_size` bytes.
    RecordTooLarge {
        limit: usize,
    },
}

impl RejectReason {
    pub fn kind(&self) -> RejectKind {
        match self {
            RejectReason::InvalidUtf8 { .. } => RejectKind::InvalidUtf8,
            RejectReason::FieldCount { .. } => RejectKind::FieldCount,
            RejectReason::ControlCharacter { .. } => RejectKind::ControlCharacter,
            RejectReason::EmptyAddress => RejectKind::EmptyAddress,
            RejectReason::InvalidAddress(_) => RejectKind::InvalidAddress,
            RejectReason::DuplicateAddress => RejectKind::DuplicateAddress,
            RejectReason::FieldTooLarge { .. } | RejectReason::RecordTooLarge { .. } => {
                RejectKind::TooLarge
            }
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RejectReason::InvalidUtf8 { column } => write!(f, "invalid UTF-8 in column {column}"),
            RejectReason::FieldCount { expected, found } => {
                write!(f, "expected {expected} fields, found {found}")
            }
            RejectReason::ControlCharacter { column, code_point } => {
                write!(f, "control character U+{code_point:04X} in column {column}")
            }
            RejectReason::EmptyAddress => f.write_str("empty address"),
            RejectReason::InvalidAddress(problem) => write!(f, "invalid address: {problem}"),
            RejectReason::DuplicateAddress => f.write_str("duplicate address"),
            RejectReason::FieldTooLarge { column, limit } => write!(
                f,
                "column {column} is longer than {limit} bytes (recipients.max_field_size); only its start is in this file"
            ),
            RejectReason::RecordTooLarge { limit } => write!(
                f,
                "row is longer than {limit} bytes (recipients.max_record_size); only its start is in this file"
            ),
        }
    }
}

/// Running totals; `rows == accepted + rejected + done`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceStats {
    pub rows: u64,
    pub accepted: u64,
    pub rejected: u64,
    /// Rows skipped because they were final in an earlier session (see [`Source::skip_done`]).
    pub done: u64,
    rejected_by_kind: [u64; RejectKind::ALL.len()],
}

impl SourceStats {
    pub fn rejected_for(&self, kind: RejectKind) -> u64 {
        self.rejected_by_kind[kind as usize]
    }

    /// Every kind with its count, zeros included, in [`RejectKind::ALL`] order.
    pub fn rejected_by_kind(&self) -> impl Iterator<Item = (RejectKind, u64)> + '_ {
        RejectKind::ALL
            .iter()
            .map(|&kind| (kind, self.rejected_by_kind[kind as usize]))
    }

    fn reject(&mut self, kind: RejectKind) {
        self.rejected += 1;
        self.rejected_by_kind[kind as usize] += 1;
    }
}

/// Fatal problems: the list cannot be read (or the rejects file written).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{}: cannot open recipient list: {cause}", path.display())]
    Open { path: PathBuf, cause: io::Error },
    /// A directory, device, FIFO or socket: `what` says which.
    #[error("{}: recipient list {what}", path.display())]
    NotRegular { path: PathBuf, what: String },
    /// A header field or the header row over its size cap.
    #[error("{}: header row: {what}; is this the right file?", path.display())]
    HeaderTooLarge { path: PathBuf, what: String },
    #[error("{}: cannot read recipient list: {cause}", path.display())]
    Read { path: PathBuf, cause: csv::Error },
    #[error("{}: delimiter {:?} is not usable", path.display(), char::from(*delimiter))]
    InvalidDelimiter { path: PathBuf, delimiter: u8 },
    #[error("{}: file is empty, expected a header row", path.display())]
    MissingHeader { path: PathBuf },
    #[error("{}: has_header is false, so column names must be given", path.display())]
    ColumnsRequired { path: PathBuf },
    #[error("{}: header is not valid UTF-8", path.display())]
    HeaderUtf8 { path: PathBuf },
    #[error("{}: column {position} has an empty name", path.display())]
    EmptyColumnName { path: PathBuf, position: usize },
    #[error("{}: column {position} name {} contains a control character", path.display(), elide(&format!("{name:?}"), ECHO))]
    InvalidColumnName {
        path: PathBuf,
        position: usize,
        name: String,
    },
    #[error("{}: duplicate column name {}", path.display(), elide(&format!("{name:?}"), ECHO))]
    DuplicateColumn { path: PathBuf, name: String },
    #[error("{}: header {} does not match configured columns {}", path.display(), elide_names(found), elide_names(expected))]
    HeaderMismatch {
        path: PathBuf,
        expected: Vec<String>,
        found: Vec<String>,
    },
    #[error("{}: address column {} not found (columns: {})", path.display(), elide(&format!("{column:?}"), ECHO), elide(&available.join(", "), ECHO))]
    MissingAddressColumn {
        path: PathBuf,
        column: String,
        available: Vec<String>,
    },
    #[error("{}: cannot create rejects file: {cause}", path.display())]
    CreateRejects { path: PathBuf, cause: io::Error },
    #[error("{}: cannot write rejects file: {cause}", path.display())]
    WriteRejects { path: PathBuf, cause: csv::Error },
}

/// Streams validated recipients from one CSV file.
pub struct Source {
    path: PathBuf,
    reader: csv::Reader<Tracking<Bounded<File>>>,
    /// The caps, for reject reasons.
    max_field_size: usize,
    max_record_size: usize,
    /// What to add to `csv`'s line numbers for the lines of cut records it never saw.
    line_adjust: i64,
    /// Reused for every row: the reason memory does not grow with the file.
    record: ByteRecord,
    columns: Arc<Columns>,
    seen: Option<Fingerprints>,
    rejects: Option<Rejects>,
    stats: SourceStats,
    done: Option<Arc<crate::journal::RowSet>>,
    /// The row whose reject reason is kept ([`Source::watch`]), and the reason once rejected.
    watch: Option<(u64, Option<RejectReason>)>,
    /// The first rejects kept for `check` ([`Source::keep_first_rejects`]), and how many.
    first_rejects: Vec<(u64, u64, RejectReason)>,
    keep_rejects: usize,
}

impl Source {
    /// Opens the list, reads and validates the header (a UTF-8 BOM is
    /// tolerated) and creates the rejects file, so a stale one from an earlier
    /// run is never mistaken for this run's.
    pub fn open(opts: SourceOptions) -> Result<Source, SourceError> {
        let SourceOptions {
            path,
            delimiter,
            has_header,
            columns,
            address_column,
            dedupe,
            rejects_path,
            max_field_size,
            max_record_size,
        } = opts;
        if matches!(delimiter, b'"' | b'\r' | b'\n') || delimiter >= 0x80 {
            return Err(SourceError::InvalidDelimiter { path, delimiter });
        }
        let file = open_regular(&path)?;
        let bounded = Bounded::new(file, delimiter, max_field_size, max_record_size);
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(delimiter)
            .has_headers(false)
            .flexible(true)
            .buffer_capacity(64 * 1024)
            .from_reader(Tracking::new(bounded));
        let mut record = ByteRecord::new();

        let names = if has_header {
            match reader.read_byte_record(&mut record) {
                Ok(true) => {}
                Ok(false) => return Err(SourceError::MissingHeader { path }),
                Err(cause) => return Err(SourceError::Read { path, cause }),
            }
            let end = reader.position().byte();
            if let Some(cut) = reader.get_ref().inner.first_cut()
                && cut.end == end
            {
                let what = match cut.what {
                    Oversize::Field { index } => format!(
                        "column {} is longer than {max_field_size} bytes (recipients.max_field_size)",
                        index + 1
                    ),
                    Oversize::Record => {
                        format!("longer than {max_record_size} bytes (recipients.max_record_size)")
                    }
                };
                return Err(SourceError::HeaderTooLarge { path, what });
            }
            let mut found = Vec::with_capacity(record.len());
            for field in record.iter() {
                match std::str::from_utf8(field) {
                    Ok(name) => found.push(name.trim().to_owned()),
                    Err(_) => return Err(SourceError::HeaderUtf8 { path }),
                }
            }
            if let Some(expected) = columns
                && expected != found
            {
                return Err(SourceError::HeaderMismatch {
                    path,
                    expected,
                    found,
                });
            }
            found
        } else {
            match columns {
                Some(names) => names,
                None => return Err(SourceError::ColumnsRequired { path }),
            }
        };
        let columns = build_columns(&path, names, &address_column)?;

        let rejects = match rejects_path {
            Some(rejects_path) => Some(Rejects::create(rejects_path, &columns)?),
            None => None,
        };

        Ok(Source {
            path,
            reader,
            max_field_size,
            max_record_size,
            line_adjust: 0,
            record,
            columns: Arc::new(columns),
            seen: dedupe.then(Fingerprints::default),
            rejects,
            stats: SourceStats::default(),
            done: None,
            watch: None,
            first_rejects: Vec::new(),
            keep_rejects: 0,
        })
    }

    pub fn columns(&self) -> &Arc<Columns> {
        &self.columns
    }

    /// Sizes the dedupe set for about `rows` rows up front, so that it does not grow (rehashing
    /// everything each time) while the list streams by; it is the size the set reaches anyway.
    /// A hint only: the set still grows past it.
    pub fn expect_rows(&mut self, rows: u64) {
        if let Some(seen) = &mut self.seen {
            seen.reserve(usize::try_from(rows).unwrap_or(usize::MAX).min(1 << 32));
        }
    }

    /// Rows in `done` (final in an earlier session of a resumed run) are skipped on a fast path:
    /// no control-character scan, no record copy; only the address is normalised and fed to
    /// dedupe, so a later duplicate of a done row is still rejected as before.
    pub fn skip_done(&mut self, done: Arc<crate::journal::RowSet>) {
        self.done = Some(done);
    }

    /// Keeps the reason if `row` is rejected (see [`Source::watched_reject`]): for `preview`,
    /// which must say why the row asked for is not there.
    pub fn watch(&mut self, row: u64) {
        self.watch = Some((row, None));
    }

    /// Why the watched row was rejected, once it has been read and was.
    pub fn watched_reject(&self) -> Option<&RejectReason> {
        self.watch.as_ref().and_then(|(_, r)| r.as_ref())
    }

    /// Keeps the row, line and reason of the first `n` rejected rows ([`Source::first_rejects`]):
    /// for `check`, which shows them.
    pub fn keep_first_rejects(&mut self, n: usize) {
        self.keep_rejects = n;
    }

    pub fn first_rejects(&self) -> &[(u64, u64, RejectReason)] {
        &self.first_rejects
    }

    /// The fast path of [`Source::skip_done`]: true when the current record was skipped.
    fn skipped_as_done(&mut self, row: u64) -> bool {
        if !self.done.as_ref().is_some_and(|d| d.contains(row)) {
            return false;
        }
        let raw = self
            .record
            .get(self.columns.address_index())
            .and_then(|f| std::str::from_utf8(f).ok());
        let Some(Ok(address)) = raw.map(check_address) else {
            // Not the row it was (the list fingerprint makes this unlikely): full check.
            return false;
        };
        if let Some(seen) = &mut self.seen {
            seen.insert(&address);
        }
        self.stats.done += 1;
        true
    }

    /// Next valid recipient; bad rows are counted, written to the rejects file
    /// and skipped. `Err` only for I/O failures, after which the stream is
    /// unusable.
    pub fn next_recipient(&mut self) -> Result<Option<Recipient>, SourceError> {
        loop {
            match self.reader.read_byte_record(&mut self.record) {
                Ok(true) => {}
                Ok(false) => return Ok(None),
                Err(cause) => {
                    return Err(SourceError::Read {
                        path: self.path.clone(),
                        cause,
                    });
                }
            }
            self.stats.rows += 1;
            let row = self.stats.rows;
            if let Some(reason) = self.oversize() {
                let line = self.start_line(self.record_newlines());
                self.reject(row, line, &reason, true)?;
                continue;
            }
            if self.skipped_as_done(row) {
                continue;
            }
            match check_row(&self.record, &self.columns, self.seen.as_mut()) {
                Ok((address, record)) => {
                    self.stats.accepted += 1;
                    // Accepted records contain no LF (control check).
                    let line = self.start_line(0);
                    return Ok(Some(Recipient {
                        row,
                        line,
                        address,
                        record,
                    }));
                }
                Err(reason) => {
                    let line = self.start_line(self.record_newlines());
                    self.reject(row, line, &reason, false)?;
                }
            }
        }
    }

    /// LFs inside the record just read (in quoted fields).
    fn record_newlines(&self) -> u64 {
        memchr::memchr_iter(b'\n', self.record.as_slice()).count() as u64
    }

    /// Counts a rejected row and writes it to the rejects file; `cut`: the record is only the
    /// start of the row, so its fields are written shortened.
    fn reject(
        &mut self,
        row: u64,
        line: u64,
        reason: &RejectReason,
        cut: bool,
    ) -> Result<(), SourceError> {
        self.stats.reject(reason.kind());
        if self.first_rejects.len() < self.keep_rejects {
            self.first_rejects.push((row, line, reason.clone()));
        }
        if let Some((watched, kept)) = &mut self.watch
            && *watched == row
        {
            *kept = Some(reason.clone());
        }
        if let Some(rejects) = &mut self.rejects {
            let shorten = cut.then_some(ECHO);
            rejects.write(row, line, reason, &self.record, shorten)?;
        }
        Ok(())
    }

    /// Why the record just read is not whole (a field or the record over its cap), taking the
    /// line counts of the cut records before it into account.
    fn oversize(&mut self) -> Option<RejectReason> {
        let end = self.reader.position().byte();
        let bounded = &mut self.reader.get_mut().inner;
        while let Some(cut) = bounded.first_cut() {
            if cut.end >= end {
                break;
            }
            // A cut record before this one: its dropped lines are complete by now.
            self.line_adjust += cut.line_delta;
            bounded.pop_cut();
        }
        let cut = bounded.first_cut().filter(|c| c.end == end)?;
        Some(match cut.what {
            Oversize::Field { index } => RejectReason::FieldTooLarge {
                column: self.columns.describe(index),
                limit: self.max_field_size,
            },
            Oversize::Record => RejectReason::RecordTooLarge {
                limit: self.max_record_size,
            },
        })
    }

    pub fn stats(&self) -> &SourceStats {
        &self.stats
    }

    /// Flushes the rejects file; dropping a `Source` instead would lose the
    /// flush error.
    pub fn finish(self) -> Result<SourceStats, SourceError> {
        if let Some(rejects) = self.rejects {
            rejects.finish()?;
        }
        Ok(self.stats)
    }

    /// Line of the record just read. `csv` only reports the position where
    /// it started looking, which is before skipped blank lines and before the
    /// LF of a CRLF, so count back from the end instead: the end line, minus
    /// LFs inside quoted fields, minus the terminator if it was an LF.
    fn start_line(&self, inner_newlines: u64) -> u64 {
        let end = self.reader.position();
        let lf_terminated = self.reader.get_ref().byte_before(end.byte()) == Some(b'\n');
        end.line()
            .saturating_add_signed(self.line_adjust)
            .saturating_sub(inner_newlines)
            .saturating_sub(u64::from(lf_terminated))
    }
}

/// Opens the list if it is a regular file: a directory, device (`/dev/zero`), FIFO or socket
/// is refused with what it is, before reading (a FIFO is not even opened: that would block).
fn open_regular(path: &std::path::Path) -> Result<File, SourceError> {
    let open_error = |cause| SourceError::Open {
        path: path.to_owned(),
        cause,
    };
    let check = |meta: std::fs::Metadata| match crate::private::not_regular(&meta) {
        None => Ok(()),
        Some(what) => Err(SourceError::NotRegular {
            path: path.to_owned(),
            what,
        }),
    };
    check(std::fs::metadata(path).map_err(open_error)?)?;
    let file = File::open(path).map_err(open_error)?;
    check(file.metadata().map_err(open_error)?)?;
    Ok(file)
}

/// Remembers the latest chunk handed to the `csv` reader's buffer, so the
/// last byte consumed for a record (its terminator) can be looked up: `csv`
/// hides it, and it decides the record's line number.
struct Tracking<R> {
    inner: R,
    chunk: Vec<u8>,
    /// File offset of `chunk[0]`.
    chunk_start: u64,
    /// Last byte of the chunk before, for a record ending exactly there.
    previous_last: Option<u8>,
}

impl<R> Tracking<R> {
    fn new(inner: R) -> Self {
        Tracking {
            inner,
            chunk: Vec::new(),
            chunk_start: 0,
            previous_last: None,
        }
    }

    /// Byte at `offset - 1`, if still remembered.
    fn byte_before(&self, offset: u64) -> Option<u8> {
        let index = offset.checked_sub(1)?;
        match index.checked_sub(self.chunk_start) {
            Some(i) => self.chunk.get(usize::try_from(i).ok()?).copied(),
            None if index + 1 == self.chunk_start => self.previous_last,
            None => None,
        }
    }
}

impl<R: Read> Read for Tracking<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            self.previous_last = self.chunk.last().copied();
            self.chunk_start += self.chunk.len() as u64;
            self.chunk.clear();
            self.chunk.extend_from_slice(&buf[..n]);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads in 3-byte chunks so lookups cross chunk boundaries.
    #[test]
    fn tracking_reader_finds_the_byte_before_an_offset() {
        struct Chunky<'a>(&'a [u8]);
        impl Read for Chunky<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = self.0.len().min(buf.len()).min(3);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut tracking = Tracking::new(Chunky(b"abcdefgh"));
        let mut buf = [0u8; 16];
        assert_eq!(tracking.read(&mut buf).unwrap(), 3);
        assert_eq!(tracking.byte_before(0), None);
        assert_eq!(tracking.byte_before(1), Some(b'a'));
        assert_eq!(tracking.byte_before(3), Some(b'c'));
        assert_eq!(tracking.read(&mut buf).unwrap(), 3);
        assert_eq!(tracking.byte_before(3), Some(b'c'));
        assert_eq!(tracking.byte_before(4), Some(b'd'));
        assert_eq!(tracking.byte_before(6), Some(b'f'));
        assert_eq!(tracking.byte_before(2), None);
        assert_eq!(tracking.byte_before(7), None);
        assert_eq!(tracking.read(&mut buf).unwrap(), 2);
        assert_eq!(tracking.read(&mut buf).unwrap(), 0);
        assert_eq!(tracking.byte_before(8), Some(b'h'));
    }

    #[test]
    fn reject_reasons_display_short_human_text() {
        let reason = RejectReason::ControlCharacter {
            column: "first_name".into(),
            code_point: 0x0D,
        };
        assert_eq!(
            reason.to_string(),
            "control character U+000D in column first_name"
        );
        assert_eq!(
            RejectReason::InvalidAddress(AddressProblem::IpLiteral).to_string(),
            "invalid address: IP-literal domain not supported"
        );
        assert_eq!(
            RejectReason::FieldCount {
                expected: 6,
                found: 7
            }
            .to_string(),
            "expected 6 fields, found 7"
        );
    }
}
