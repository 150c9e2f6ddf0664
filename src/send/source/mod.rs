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

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::hash::{DefaultHasher, Hasher};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use csv::{ByteRecord, StringRecord};

/// Longest mailbox that fits the 256-octet RFC 5321 path with its brackets.
const MAX_ADDRESS: usize = 254;
const MAX_LOCAL_PART: usize = 64;
const MAX_DOMAIN: usize = 255;
const MAX_LABEL: usize = 63;

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

/// Column names shared (via `Arc`) with the renderer so templates can resolve
/// names to indexes once, not per row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Columns {
    names: Vec<String>,
    lookup: HashMap<String, usize>,
    address: usize,
}

impl Columns {
    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn index(&self, name: &str) -> Option<usize> {
        // Templates look columns up on every variable of every message: for the usual handful
        // of columns comparing names is cheaper than hashing one (SipHash).
        if self.names.len() <= 16 {
            return self.names.iter().position(|n| n == name);
        }
        self.lookup.get(name).copied()
    }

    pub fn address_index(&self) -> usize {
        self.address
    }

    /// Human name for field `i`, also for fields beyond the header.
    fn describe(&self, i: usize) -> String {
        match self.names.get(i) {
            Some(name) => name.clone(),
            None => format!("#{}", i + 1),
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

/// What is wrong with an address, specific enough for an operator to fix it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressProblem {
    Empty,
    MissingAt,
    MultipleAt,
    EmptyLocalPart,
    LocalPartTooLong(usize),
    /// `"john doe"@x.test` is valid RFC 5321 but not supported here.
    QuotedLocalPart,
    /// Would need SMTPUTF8, which is not supported.
    NonAsciiLocalPart,
    LocalPartCharacter(char),
    /// Leading, trailing or consecutive dots.
    LocalPartDots,
    EmptyDomain,
    /// `user@[192.0.2.1]`: not supported.
    IpLiteral,
    DomainCharacter(char),
    EmptyLabel,
    LabelTooLong(usize),
    LabelHyphen,
    SingleLabelDomain,
    /// `user@192.0.2.1`: an IP address without brackets, not a domain.
    NumericTld,
    /// The Unicode domain cannot be converted to punycode.
    InvalidIdn,
    DomainTooLong(usize),
    AddressTooLong(usize),
}

impl fmt::Display for AddressProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddressProblem::Empty => f.write_str("empty address"),
            AddressProblem::MissingAt => f.write_str("missing @"),
            AddressProblem::MultipleAt => f.write_str("more than one @"),
            AddressProblem::EmptyLocalPart => f.write_str("empty local part"),
            AddressProblem::LocalPartTooLong(n) => {
                write!(f, "local part is {n} octets (max {MAX_LOCAL_PART})")
            }
            AddressProblem::QuotedLocalPart => f.write_str("quoted local part not supported"),
            AddressProblem::NonAsciiLocalPart => {
                f.write_str("non-ASCII local part not supported (needs SMTPUTF8)")
            }
            AddressProblem::LocalPartCharacter(c) => {
                write!(f, "character {c:?} not allowed in local part")
            }
            AddressProblem::LocalPartDots => {
                f.write_str("leading, trailing or double dot in local part")
            }
            AddressProblem::EmptyDomain => f.write_str("empty domain"),
            AddressProblem::IpLiteral => f.write_str("IP-literal domain not supported"),
            AddressProblem::DomainCharacter(c) => {
                write!(f, "character {c:?} not allowed in domain")
            }
            AddressProblem::EmptyLabel => f.write_str("empty domain label"),
            AddressProblem::LabelTooLong(n) => {
                write!(f, "domain label is {n} octets (max {MAX_LABEL})")
            }
            AddressProblem::LabelHyphen => f.write_str("domain label starts or ends with a hyphen"),
            AddressProblem::SingleLabelDomain => f.write_str("domain has no dot"),
            AddressProblem::NumericTld => {
                f.write_str("numeric top-level label (IP address, not a domain)")
            }
            AddressProblem::InvalidIdn => f.write_str("invalid internationalised domain"),
            AddressProblem::DomainTooLong(n) => {
                write!(f, "domain is {n} octets (max {MAX_DOMAIN})")
            }
            AddressProblem::AddressTooLong(n) => {
                write!(f, "address is {n} octets (max {MAX_ADDRESS})")
            }
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
    rejects: Option<(PathBuf, csv::Writer<File>)>,
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
            Some(rejects_path) => {
                let file = match File::create(&rejects_path) {
                    Ok(file) => file,
                    Err(source) => {
                        return Err(SourceError::CreateRejects {
                            path: rejects_path,
                            source,
                        });
                    }
                };
                let mut writer = csv::WriterBuilder::new().flexible(true).from_writer(file);
                let header = ["row", "line", "reason"]
                    .into_iter()
                    .chain(columns.names.iter().map(String::as_str));
                if let Err(source) = writer.write_record(header) {
                    return Err(SourceError::WriteRejects {
                        path: rejects_path,
                        source,
                    });
                }
                Some((rejects_path, writer))
            }
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
            .get(self.columns.address)
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
            match self.check() {
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
                    self.write_reject(row, line, &reason)?;
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
        if let Some((path, mut writer)) = self.rejects
            && let Err(err) = writer.flush()
        {
            return Err(SourceError::WriteRejects {
                path,
                source: err.into(),
            });
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

    /// All per-row checks, cheapest and most fundamental first.
    fn check(&mut self) -> Result<(String, StringRecord), RejectReason> {
        let record = &self.record;
        let columns = &*self.columns;
        // Dedupe: the fingerprint of the address as written (usually the same as of the
        // normalised address), so its slot is on its way into the cache during the checks.
        let early = self.seen.as_ref().and_then(|seen| {
            let raw = record.get(columns.address)?.trim_ascii();
            let fp = fingerprint(raw);
            seen.prefetch(fp);
            Some((raw, fp))
        });
        // One UTF-8 pass over the whole record plus a boundary check per
        // field is equivalent to validating each field, and cheaper.
        let text = match std::str::from_utf8(record.as_slice()) {
            Ok(text)
                if (0..record.len()).all(|i| {
                    record
                        .range(i)
                        .is_some_and(|r| text.is_char_boundary(r.start))
                }) =>
            {
                text
            }
            _ => {
                let bad = record.iter().position(|f| std::str::from_utf8(f).is_err());
                return Err(RejectReason::InvalidUtf8 {
                    column: columns.describe(bad.unwrap_or(0)),
                });
            }
        };
        if record.len() != columns.names.len() {
            return Err(RejectReason::FieldCount {
                expected: columns.names.len(),
                found: record.len(),
            });
        }
        if let Some((offset, code_point)) = find_control(text) {
            let i =
                (0..record.len()).find(|&i| record.range(i).is_some_and(|r| r.contains(&offset)));
            return Err(RejectReason::ControlCharacter {
                column: columns.describe(i.unwrap_or(0)),
                code_point,
            });
        }
        let raw = record
            .range(columns.address)
            .and_then(|r| text.get(r))
            .unwrap_or_default();
        let address = check_address(raw).map_err(|problem| match problem {
            AddressProblem::Empty => RejectReason::EmptyAddress,
            problem => RejectReason::InvalidAddress(problem),
        })?;
        if let Some(seen) = &mut self.seen {
            let fp = match early {
                Some((raw, fp)) if raw.eq_ignore_ascii_case(address.as_bytes()) => fp,
                _ => fingerprint(address.as_bytes()),
            };
            if !seen.insert_fingerprint(fp) {
                return Err(RejectReason::DuplicateAddress);
            }
        }
        // Built from the validated text: `StringRecord::from_byte_record`
        // would validate every non-ASCII field again.
        let mut fields = StringRecord::with_capacity(text.len(), record.len());
        for i in 0..record.len() {
            fields.push_field(
                record
                    .range(i)
                    .and_then(|r| text.get(r))
                    .unwrap_or_default(),
            );
        }
        Ok((address, fields))
    }

    fn write_reject(
        &mut self,
        row: u64,
        line: u64,
        reason: &RejectReason,
    ) -> Result<(), SourceError> {
        let Some((path, writer)) = &mut self.rejects else {
            return Ok(());
        };
        let result = (|| {
            writer.write_field(row.to_string())?;
            writer.write_field(line.to_string())?;
            writer.write_field(reason.to_string())?;
            for field in self.record.iter() {
                writer.write_field(String::from_utf8_lossy(field).as_bytes())?;
            }
            writer.write_record(std::iter::empty::<&[u8]>())
        })();
        result.map_err(|source| SourceError::WriteRejects {
            path: path.clone(),
            source,
        })
    }
}

pub(crate) fn build_columns(
    path: &Path,
    names: Vec<String>,
    address_column: &str,
) -> Result<Columns, SourceError> {
    let mut lookup = HashMap::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        if name.is_empty() {
            return Err(SourceError::EmptyColumnName {
                path: path.to_owned(),
                position: i + 1,
            });
        }
        if find_control(name).is_some() {
            return Err(SourceError::InvalidColumnName {
                path: path.to_owned(),
                position: i + 1,
                name: name.clone(),
            });
        }
        if lookup.insert(name.clone(), i).is_some() {
            return Err(SourceError::DuplicateColumn {
                path: path.to_owned(),
                name: name.clone(),
            });
        }
    }
    let Some(&address) = lookup.get(address_column) else {
        return Err(SourceError::MissingAddressColumn {
            path: path.to_owned(),
            column: address_column.to_owned(),
            available: names,
        });
    };
    Ok(Columns {
        names,
        lookup,
        address,
    })
}

/// Bytes that are, or may start, a forbidden code point: C0 controls except
/// TAB, DEL, and the lead bytes of C1 controls (C2) and U+2028/U+2029 (E2).
/// A table keeps the scan of every byte of every row to one lookup.
const CONTROL_START: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = b != 0x09;
        b += 1;
    }
    table[0x7F] = true;
    table[0xC2] = true;
    table[0xE2] = true;
    table
};

/// Offset and code point of the first forbidden character: C0 controls except
/// TAB, DEL, C1 controls and U+2028/U+2029.
fn find_control(text: &str) -> Option<(usize, u32)> {
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(pos) = bytes
        .get(from..)?
        .iter()
        .position(|&b| CONTROL_START[usize::from(b)])
    {
        let offset = from + pos;
        // Candidates are ASCII or lead bytes, so always char boundaries.
        if let Some(c) = text.get(offset..).and_then(|t| t.chars().next())
            && matches!(c, '\0'..='\x08' | '\x0A'..='\x1F' | '\x7F'..='\u{9F}' | '\u{2028}' | '\u{2029}')
        {
            return Some((offset, u32::from(c)));
        }
        from = offset + 1;
    }
    None
}

/// RFC 5322 `atext`, the characters of a dot-atom besides the dots.
const ATEXT: [bool; 128] = {
    let mut table = [false; 128];
    let mut c = 0;
    while c < 128 {
        let b = c as u8;
        table[c] = b.is_ascii_alphanumeric() || {
            let specials = b"!#$%&'*+-/=?^_`{|}~";
            let mut found = false;
            let mut j = 0;
            while j < specials.len() {
                if specials[j] == b {
                    found = true;
                }
                j += 1;
            }
            found
        };
        c += 1;
    }
    table
};

/// Validates and normalises one address with exactly the rules applied to
/// list rows, so addresses from elsewhere (e.g. a `--to` test recipient) are
/// held to the same standard. Returns the address to send to.
pub fn check_address(raw: &str) -> Result<String, AddressProblem> {
    let address = raw.trim();
    if address.is_empty() {
        return Err(AddressProblem::Empty);
    }
    if address.starts_with('"') {
        return Err(AddressProblem::QuotedLocalPart);
    }
    let Some((local, domain)) = address.split_once('@') else {
        return Err(AddressProblem::MissingAt);
    };
    if domain.contains('@') {
        return Err(AddressProblem::MultipleAt);
    }
    check_local_part(local)?;
    if domain.is_empty() {
        return Err(AddressProblem::EmptyDomain);
    }
    if domain.starts_with('[') {
        return Err(AddressProblem::IpLiteral);
    }
    let mut out = String::with_capacity(address.len());
    out.push_str(local);
    out.push('@');
    if domain.is_ascii() && !has_ace_label(domain) {
        push_ldh_domain(&mut out, domain)?;
    } else {
        let ascii = idna::domain_to_ascii(domain).map_err(|_| AddressProblem::InvalidIdn)?;
        push_ldh_domain(&mut out, &ascii)?;
    }
    if out.len() > MAX_ADDRESS {
        return Err(AddressProblem::AddressTooLong(out.len()));
    }
    Ok(out)
}

fn check_local_part(local: &str) -> Result<(), AddressProblem> {
    if local.is_empty() {
        return Err(AddressProblem::EmptyLocalPart);
    }
    if !local.is_ascii() {
        return Err(AddressProblem::NonAsciiLocalPart);
    }
    if local.len() > MAX_LOCAL_PART {
        return Err(AddressProblem::LocalPartTooLong(local.len()));
    }
    let bytes = local.as_bytes();
    if bytes[0] == b'.' || bytes[bytes.len() - 1] == b'.' {
        return Err(AddressProblem::LocalPartDots);
    }
    let mut previous_dot = false;
    for &b in bytes {
        if b == b'.' {
            if previous_dot {
                return Err(AddressProblem::LocalPartDots);
            }
            previous_dot = true;
        } else if ATEXT[usize::from(b)] {
            previous_dot = false;
        } else {
            return Err(AddressProblem::LocalPartCharacter(char::from(b)));
        }
    }
    Ok(())
}

/// Whether an ASCII domain has an `xn--` label, which must go through IDNA so
/// that broken punycode is rejected here rather than by a relay.
fn has_ace_label(domain: &str) -> bool {
    domain.split('.').any(|label| {
        label
            .as_bytes()
            .get(..4)
            .is_some_and(|prefix| prefix.eq_ignore_ascii_case(b"xn--"))
    })
}

/// Appends the ASCII `domain` lowercased, checking LDH syntax as it goes.
fn push_ldh_domain(out: &mut String, domain: &str) -> Result<(), AddressProblem> {
    if domain.len() > MAX_DOMAIN {
        return Err(AddressProblem::DomainTooLong(domain.len()));
    }
    let mut labels = 0;
    let mut last_label = "";
    for label in domain.split('.') {
        let bytes = label.as_bytes();
        if bytes.is_empty() {
            return Err(AddressProblem::EmptyLabel);
        }
        if bytes.len() > MAX_LABEL {
            return Err(AddressProblem::LabelTooLong(bytes.len()));
        }
        if bytes[0] == b'-' || bytes[bytes.len() - 1] == b'-' {
            return Err(AddressProblem::LabelHyphen);
        }
        if let Some(&bad) = bytes
            .iter()
            .find(|&&b| !(b.is_ascii_alphanumeric() || b == b'-'))
        {
            return Err(AddressProblem::DomainCharacter(char::from(bad)));
        }
        if labels > 0 {
            out.push('.');
        }
        for &b in bytes {
            out.push(char::from(b.to_ascii_lowercase()));
        }
        labels += 1;
        last_label = label;
    }
    if labels < 2 {
        return Err(AddressProblem::SingleLabelDomain);
    }
    if last_label.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AddressProblem::NumericTld);
    }
    Ok(())
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

/// Set of case-folded address fingerprints, 8 bytes per slot: an open-addressing table (linear
/// probing, 0 marks a free slot) kept at most 7/10 full. Its own table rather than a `HashSet`
/// so that the reader can prefetch a row's slot before it validates the row: the table is far
/// larger than the caches, and a miss per row waited for in line was most of what dedupe cost.
struct Fingerprints {
    slots: Vec<u64>,
    len: usize,
}

impl Default for Fingerprints {
    fn default() -> Fingerprints {
        Fingerprints {
            slots: vec![0; 1024],
            len: 0,
        }
    }
}

impl Fingerprints {
    /// `false` if the address (case-insensitively) was already seen.
    fn insert(&mut self, address: &str) -> bool {
        self.insert_fingerprint(fingerprint(address.as_bytes()))
    }

    /// `false` if `fp` was already in the set.
    fn insert_fingerprint(&mut self, fp: u64) -> bool {
        // 0 marks a free slot: fingerprint 0 is stored as 1 (one more 2^-64 collision chance).
        let fp = fp.max(1);
        if (self.len + 1) * 10 > self.slots.len() * 7 {
            self.resize(self.slots.len() * 2);
        }
        let mask = self.slots.len() - 1;
        let mut i = self.home(fp);
        loop {
            match self.slots[i] {
                0 => {
                    self.slots[i] = fp;
                    self.len += 1;
                    return true;
                }
                x if x == fp => return false,
                _ => i = (i + 1) & mask,
            }
        }
    }

    /// Room for `rows` addresses without growing (each doubling rehashes everything).
    fn reserve(&mut self, rows: usize) {
        let want = (rows.saturating_mul(10) / 7 + 1).next_power_of_two();
        if want > self.slots.len() {
            self.resize(want);
        }
    }

    fn resize(&mut self, slots: usize) {
        let old = std::mem::replace(&mut self.slots, vec![0; slots]);
        self.len = 0;
        for fp in old.into_iter().filter(|&fp| fp != 0) {
            self.insert_fingerprint(fp);
        }
    }

    /// Where `fp`'s probe starts (`fp` as stored: not 0).
    fn home(&self, fp: u64) -> usize {
        fp as usize & (self.slots.len() - 1)
    }

    /// Asks the CPU to bring `fp`'s slot into the cache (a hint; no effect on the result).
    fn prefetch(&self, fp: u64) {
        let slot = &self.slots[self.home(fp.max(1))];
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch is only a hint; the pointer is to an element of `slots`.
        unsafe {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            _mm_prefetch::<_MM_HINT_T0>((slot as *const u64).cast());
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = slot;
    }
}

/// SipHash-1-3 with fixed keys (`DefaultHasher::new`) of the ASCII-lowercased
/// address, lowercased through a stack buffer to avoid allocating.
fn fingerprint(address: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    let mut buf = [0u8; 64];
    for chunk in address.chunks(buf.len()) {
        let buf = &mut buf[..chunk.len()];
        buf.copy_from_slice(chunk);
        buf.make_ascii_lowercase();
        hasher.write(buf);
    }
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> String {
        check_address(raw).unwrap_or_else(|e| panic!("{raw:?} rejected: {e:?}"))
    }

    fn problem(raw: &str) -> AddressProblem {
        match check_address(raw) {
            Err(p) => p,
            Ok(a) => panic!("{raw:?}: expected a problem, got {a:?}"),
        }
    }

    #[test]
    fn normalises_domain_case_whitespace_and_idn() {
        assert_eq!(ok("  Bob.Smith@Example.TEST \t"), "Bob.Smith@example.test");
        assert_eq!(ok("a+tag@bücher-42.test"), "a+tag@xn--bcher-42-65a.test");
        assert_eq!(ok("a@BÜCHER.Example"), "a@xn--bcher-kva.example");
        assert_eq!(
            ok("x!#$%&'*+-/=?^_`{|}~y@a-b.c0"),
            "x!#$%&'*+-/=?^_`{|}~y@a-b.c0"
        );
    }

    #[test]
    fn rejects_each_address_problem() {
        use AddressProblem::*;
        assert_eq!(problem("   "), Empty);
        assert_eq!(problem("bob.example.test"), MissingAt);
        assert_eq!(problem("a@b@c.test"), MultipleAt);
        assert_eq!(problem("@c.test"), EmptyLocalPart);
        assert_eq!(
            problem(&format!("{}@c.test", "a".repeat(65))),
            LocalPartTooLong(65)
        );
        assert!(check_address(&format!("{}@c.test", "a".repeat(64))).is_ok());
        assert_eq!(problem("\"john doe\"@c.test"), QuotedLocalPart);
        assert_eq!(problem("josé@c.test"), NonAsciiLocalPart);
        assert_eq!(problem("john doe@c.test"), LocalPartCharacter(' '));
        assert_eq!(problem("Bob <bob@c.test>"), LocalPartCharacter(' '));
        assert_eq!(problem(".bob@c.test"), LocalPartDots);
        assert_eq!(problem("bob.@c.test"), LocalPartDots);
        assert_eq!(problem("b..ob@c.test"), LocalPartDots);
        assert_eq!(problem("bob@"), EmptyDomain);
        assert_eq!(problem("bob@[192.0.2.1]"), IpLiteral);
        assert_eq!(problem("bob@exa_mple.test"), DomainCharacter('_'));
        assert_eq!(problem("bob@example..test"), EmptyLabel);
        assert_eq!(problem("bob@example.test."), EmptyLabel);
        assert_eq!(
            problem(&format!("bob@{}.test", "a".repeat(64))),
            LabelTooLong(64)
        );
        assert_eq!(problem("bob@-example.test"), LabelHyphen);
        assert_eq!(problem("bob@example-.test"), LabelHyphen);
        assert_eq!(problem("bob@localhost"), SingleLabelDomain);
        assert_eq!(problem("bob@192.0.2.1"), NumericTld);
        assert_eq!(problem("bob@xn--a.test"), InvalidIdn);
        let long_domain = format!("{}.test", vec!["a".repeat(63); 4].join("."));
        assert_eq!(
            problem(&format!("b@{long_domain}")),
            DomainTooLong(long_domain.len())
        );
        let near = format!(
            "{}.{}.{}.test",
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63)
        );
        assert_eq!(
            problem(&format!("{}@{near}", "x".repeat(60))),
            AddressTooLong(60 + 1 + near.len())
        );
    }

    #[test]
    fn finds_every_forbidden_control_and_allows_tab() {
        for c in (0u32..0x20)
            .filter(|&c| c != 9)
            .chain([0x7F])
            .chain(0x80..0xA0)
            .chain([0x2028, 0x2029])
        {
            let s = format!("é\tb{}cd\n", char::from_u32(c).unwrap());
            assert_eq!(find_control(&s), Some((4, c)), "U+{c:04X}");
        }
        for ok in [
            "a\tb",
            "José Zoë Łukasz",
            "明 Ольга Nguyễn",
            "\u{2027}\u{202A}\u{A0}\u{FEFF}",
        ] {
            assert_eq!(find_control(ok), None, "{ok:?}");
        }
    }

    #[test]
    fn fingerprint_is_case_insensitive_over_the_whole_address() {
        assert_eq!(fingerprint(b"Bob@X.com"), fingerprint(b"bob@x.com"));
        assert_ne!(fingerprint(b"bob@x.com"), fingerprint(b"bob@x.co"));
        let long = "A".repeat(200);
        assert_eq!(
            fingerprint(long.as_bytes()),
            fingerprint(long.to_lowercase().as_bytes())
        );
        let mut seen = Fingerprints::default();
        assert!(seen.insert("Bob@X.com"));
        assert!(!seen.insert("bob@x.COM"));
        assert!(seen.insert("bob2@x.com"));
    }

    /// The table grows past its start size (rehashing) and still knows every fingerprint,
    /// including 0 and 1 (0 marks free slots) and clustered ones (same low bits).
    #[test]
    fn fingerprint_table_grows_and_keeps_everything() {
        let mut seen = Fingerprints::default();
        let fps: Vec<u64> = (0..5000u64)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .chain((1..50).map(|i| i << 40))
            .chain([0, 1, u64::MAX])
            .collect();
        for &fp in &fps {
            assert!(seen.insert_fingerprint(fp) || fp <= 1, "{fp} new");
        }
        assert!(seen.slots.len() > 1024);
        assert!(seen.len * 10 <= seen.slots.len() * 7);
        for &fp in &fps {
            assert!(!seen.insert_fingerprint(fp), "{fp} seen");
        }
        let mut sized = Fingerprints::default();
        sized.reserve(1_200_000);
        assert_eq!(sized.slots.len(), 1 << 21);
    }

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
