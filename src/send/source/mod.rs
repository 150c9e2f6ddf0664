//! Streaming recipient source: turns a CSV file into validated [`Recipient`]s.
//!
//! Why it exists: recipient lists are 1–10 million rows and arrive from
//! spreadsheets, CRMs and hand edits, so they are both large and dirty. This
//! module is the single gate between that file and everything downstream:
//!
//! * **Constant memory.** Rows are streamed through one reused
//!   [`csv::ByteRecord`]; nothing is collected. The only per-row allocations
//!   are the accepted recipient's own record and address. The optional dedupe
//!   set is the one structure that grows (see "Dedupe" below).
//! * **Injection-proof output.** Any row with a CR, LF, NUL, other C0 control
//!   (TAB is allowed), DEL, C1 control or U+2028/U+2029 in *any* field is
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
//! Known limit: a field that opens a quote and never closes it swallows the
//! rest of the file (up to the next `"`) into one record, which is held in
//! memory before it is rejected.
//!
//! ## Layout
//!
//! This file owns the stream: [`Source`] and its options, statistics, errors and reject
//! reasons, and the line tracking of the reader. `columns` checks the header ([`Columns`]),
//! `validate` holds the per-row checks and the address syntax ([`check_address`],
//! [`AddressProblem`]), `dedupe` the fingerprint table, `rejects` the rejects CSV. The only
//! module of the crate it uses is `journal` (the [`RowSet`](crate::journal::RowSet) of rows
//! done in an earlier session).

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
}

impl RejectKind {
    pub const ALL: [RejectKind; 6] = [
        RejectKind::InvalidUtf8,
        RejectKind::FieldCount,
        RejectKind::ControlCharacter,
        RejectKind::EmptyAddress,
        RejectKind::InvalidAddress,
        RejectKind::DuplicateAddress,
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
    #[error("{}: cannot open recipient list: {source}", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("{}: cannot read recipient list: {source}", path.display())]
    Read { path: PathBuf, source: csv::Error },
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
    #[error("{}: column {position} name {name:?} contains a control character", path.display())]
    InvalidColumnName {
        path: PathBuf,
        position: usize,
        name: String,
    },
    #[error("{}: duplicate column name {name:?}", path.display())]
    DuplicateColumn { path: PathBuf, name: String },
    #[error("{}: header {found:?} does not match configured columns {expected:?}", path.display())]
    HeaderMismatch {
        path: PathBuf,
        expected: Vec<String>,
        found: Vec<String>,
    },
    #[error("{}: address column {column:?} not found (columns: {})", path.display(), available.join(", "))]
    MissingAddressColumn {
        path: PathBuf,
        column: String,
        available: Vec<String>,
    },
    #[error("{}: cannot create rejects file: {source}", path.display())]
    CreateRejects { path: PathBuf, source: io::Error },
    #[error("{}: cannot write rejects file: {source}", path.display())]
    WriteRejects { path: PathBuf, source: csv::Error },
}

/// Streams validated recipients from one CSV file.
pub struct Source {
    path: PathBuf,
    reader: csv::Reader<Tracking<File>>,
    /// Reused for every row: the reason memory does not grow with the file.
    record: ByteRecord,
    columns: Arc<Columns>,
    seen: Option<Fingerprints>,
    rejects: Option<Rejects>,
    stats: SourceStats,
    done: Option<Arc<crate::journal::RowSet>>,
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
        } = opts;
        if matches!(delimiter, b'"' | b'\r' | b'\n') || delimiter >= 0x80 {
            return Err(SourceError::InvalidDelimiter { path, delimiter });
        }
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(source) => return Err(SourceError::Open { path, source }),
        };
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(delimiter)
            .has_headers(false)
            .flexible(true)
            .buffer_capacity(64 * 1024)
            .from_reader(Tracking::new(file));
        let mut record = ByteRecord::new();

        let names = if has_header {
            match reader.read_byte_record(&mut record) {
                Ok(true) => {}
                Ok(false) => return Err(SourceError::MissingHeader { path }),
                Err(source) => return Err(SourceError::Read { path, source }),
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
            record,
            columns: Arc::new(columns),
            seen: dedupe.then(Fingerprints::default),
            rejects,
            stats: SourceStats::default(),
            done: None,
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
                Err(source) => {
                    return Err(SourceError::Read {
                        path: self.path.clone(),
                        source,
                    });
                }
            }
            self.stats.rows += 1;
            let row = self.stats.rows;
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
                    let newlines = self
                        .record
                        .as_slice()
                        .iter()
                        .filter(|&&b| b == b'\n')
                        .count();
                    let line = self.start_line(newlines as u64);
                    self.stats.reject(reason.kind());
                    if let Some(rejects) = &mut self.rejects {
                        rejects.write(row, line, &reason, &self.record)?;
                    }
                }
            }
        }
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
            .saturating_sub(inner_newlines)
            .saturating_sub(u64::from(lf_terminated))
    }
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
