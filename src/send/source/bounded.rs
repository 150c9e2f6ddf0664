//! Field and record size caps, enforced *before* the `csv` reader sees the bytes.
//!
//! `csv` holds a whole record in memory before it returns it, so a list with a 1 GB field (or
//! an unclosed quote) would cost gigabytes. [`Bounded`] sits between the file and `csv` and
//! follows the same quoting rules as `csv_core` (a quote opens a quoted field only at the start
//! of a field, `""` inside it is a quote, a CR or LF outside quotes ends the record, line ends
//! before a record are blank lines). When a field grows past `max_field` bytes or a record past
//! `max_record` bytes (as written in the file: quotes and delimiters count), it cuts the
//! record there: `csv` gets what came before the cut plus a made-up end of record (`"\n` inside
//! a quoted field, `\n` elsewhere), and the rest of the record, up to and including its real
//! terminator, is read and dropped without being kept. The reader records each cut ([`Cut`])
//! so that the source can reject that record with the reason and keep the line numbers of the
//! records after it right. Memory stays bounded by the caps whatever the file holds.

use std::collections::VecDeque;
use std::io::{self, Read};

/// Which cap a cut record broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Oversize {
    /// Field `index` (0-based) is longer than the field cap.
    Field { index: usize },
    /// The record is longer than the record cap.
    Record,
}

/// A record cut short by a cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Cut {
    /// Offset, in the bytes handed to `csv`, just past the made-up end of record: where `csv`'s
    /// position is after it returns the cut record.
    pub(super) end: u64,
    pub(super) what: Oversize,
    /// Line ends dropped with the rest of the record minus the one made up (`csv` counts LFs
    /// for its line numbers): what to add to the line numbers of the records after it.
    /// Complete once the rest of the record has been dropped, which is before `csv` sees a
    /// byte of the next record.
    pub(super) line_delta: i64,
}

/// Where the parser is, as `csv_core` would be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before a record: line ends here are blank lines.
    StartRecord,
    /// After a delimiter.
    StartField,
    Unquoted,
    Quoted,
    /// A quote inside a quoted field: the end of the quotes, or the first of `""`.
    QuoteInQuoted,
}

/// What one byte is, in the state the parser is in.
enum Class {
    /// A line end before a record (a blank line): not part of any record.
    Blank,
    /// Part of the current field; the parser then is in this state.
    Field(State),
    /// A delimiter: part of the record, starts the next field.
    Delimiter,
    /// The end of the record.
    End,
}

/// What a scan of bytes found.
enum Scan {
    /// Every byte belongs to records within the caps.
    All,
    /// The byte at this index is the first over a cap.
    Cut(usize, Oversize),
}

const BOM: &[u8] = b"\xef\xbb\xbf";

/// A reader that cuts records longer than the caps (see the module documentation).
pub(super) struct Bounded<R> {
    inner: R,
    delimiter: u8,
    max_field: usize,
    max_record: usize,
    state: State,
    /// Bytes of the current field and record so far.
    field_len: usize,
    record_len: usize,
    /// 0-based index of the current field.
    field_index: usize,
    /// Bytes read from `inner` but not yet handed on (what followed a cut).
    carry: Vec<u8>,
    /// The made-up end of a cut record, still to hand out.
    synthetic: &'static [u8],
    /// Dropping the rest of a cut record (the last entry of `cuts`).
    dropping: bool,
    /// The dropped record ended with a CR: an LF right after it belongs to it.
    drop_lf: bool,
    /// Bytes handed out so far.
    out_offset: u64,
    cuts: VecDeque<Cut>,
}

impl<R: Read> Bounded<R> {
    pub(super) fn new(inner: R, delimiter: u8, max_field: usize, max_record: usize) -> Self {
        Bounded {
            inner,
            delimiter,
            max_field: max_field.max(1),
            max_record: max_record.max(1),
            state: State::StartRecord,
            field_len: 0,
            record_len: 0,
            field_index: 0,
            carry: Vec::new(),
            synthetic: b"",
            dropping: false,
            drop_lf: false,
            out_offset: 0,
            cuts: VecDeque::new(),
        }
    }

    /// The oldest cut the source has not taken yet.
    pub(super) fn first_cut(&self) -> Option<&Cut> {
        self.cuts.front()
    }

    pub(super) fn pop_cut(&mut self) -> Option<Cut> {
        self.cuts.pop_front()
    }

    /// Input into `out`: the carried-over bytes first, then the file.
    fn fill(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.carry.is_empty() {
            return self.inner.read(out);
        }
        let n = self.carry.len().min(out.len());
        out[..n].copy_from_slice(&self.carry[..n]);
        self.carry.drain(..n);
        Ok(n)
    }

    /// `csv_core`'s view of byte `b` in the current state.
    fn classify(&self, b: u8) -> Class {
        let term = b == b'\r' || b == b'\n';
        match self.state {
            State::Quoted if b == b'"' => Class::Field(State::QuoteInQuoted),
            State::Quoted => Class::Field(State::Quoted),
            State::StartRecord if term => Class::Blank,
            State::StartRecord | State::StartField if b == b'"' => Class::Field(State::Quoted),
            State::QuoteInQuoted if b == b'"' => Class::Field(State::Quoted),
            _ if b == self.delimiter => Class::Delimiter,
            _ if term => Class::End,
            _ => Class::Field(State::Unquoted),
        }
    }

    fn start_record(&mut self) {
        self.state = State::StartRecord;
        self.field_len = 0;
        self.record_len = 0;
        self.field_index = 0;
    }

    /// Follows `bytes` through the parser, stopping at the first byte over a cap.
    fn scan(&mut self, bytes: &[u8]) -> Scan {
        let mut i = 0;
        while i < bytes.len() {
            // A run of field bytes that leave the state as it is: up to the next byte that
            // may change it.
            let next = match self.state {
                State::Unquoted => memchr::memchr3(self.delimiter, b'\n', b'\r', &bytes[i..]),
                State::Quoted => memchr::memchr(b'"', &bytes[i..]),
                _ => Some(0),
            };
            let run = next.unwrap_or(bytes.len() - i);
            if run > 0 {
                if let Some((fits, what)) = self.over_cap(run) {
                    return Scan::Cut(i + fits, what);
                }
                self.field_len += run;
                self.record_len += run;
                i += run;
                continue;
            }
            match self.classify(bytes[i]) {
                Class::Blank => {}
                Class::End => self.start_record(),
                Class::Field(next) => {
                    if let Some((_, what)) = self.over_cap(1) {
                        return Scan::Cut(i, what);
                    }
                    self.field_len += 1;
                    self.record_len += 1;
                    self.state = next;
                }
                Class::Delimiter => {
                    if self.record_len >= self.max_record {
                        return Scan::Cut(i, Oversize::Record);
                    }
                    self.record_len += 1;
                    self.field_len = 0;
                    self.field_index += 1;
                    self.state = State::StartField;
                }
            }
            i += 1;
        }
        Scan::All
    }

    /// With `run` more field bytes, `None` if they fit under both caps, else how many do and
    /// which cap the next one breaks (the field's when both).
    fn over_cap(&self, run: usize) -> Option<(usize, Oversize)> {
        let field_room = self.max_field.saturating_sub(self.field_len);
        let record_room = self.max_record.saturating_sub(self.record_len);
        if run <= field_room.min(record_room) {
            return None;
        }
        Some(if field_room <= record_room {
            (
                field_room,
                Oversize::Field {
                    index: self.field_index,
                },
            )
        } else {
            (record_room, Oversize::Record)
        })
    }

    /// Drops the rest of a cut record from `bytes`: the index of the first byte after it, or
    /// `None` when all of `bytes` belongs to it.
    fn drop_rest(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut newlines = 0;
        let mut end = None;
        for (i, &b) in bytes.iter().enumerate() {
            newlines += i64::from(b == b'\n');
            match self.classify(b) {
                Class::Field(next) => self.state = next,
                Class::Delimiter => self.state = State::StartField,
                Class::End | Class::Blank => {
                    self.drop_lf = b == b'\r';
                    end = Some(i + 1);
                    break;
                }
            }
        }
        self.add_line_delta(newlines);
        if end.is_some() {
            self.dropping = false;
            self.start_record();
        }
        end
    }

    fn add_line_delta(&mut self, n: i64) {
        if let Some(cut) = self.cuts.back_mut() {
            cut.line_delta += n;
        }
    }

    /// Hands on `out[..n]` up to the first cut, if any (the rest is carried over and the made-up
    /// end of record written after it, as far as it fits): the number of bytes handed out.
    fn pass(&mut self, out: &mut [u8], n: usize) -> usize {
        // csv_core drops a BOM at the very start; so does the parser here.
        let bom = if self.out_offset == 0 && out[..n].starts_with(BOM) {
            BOM.len()
        } else {
            0
        };
        let keep = match self.scan(&out[bom..n]) {
            Scan::All => {
                self.out_offset += n as u64;
                return n;
            }
            Scan::Cut(i, what) => {
                let keep = bom + i;
                let synthetic: &'static [u8] = if self.state == State::Quoted {
                    b"\"\n"
                } else {
                    b"\n"
                };
                self.cuts.push_back(Cut {
                    end: self.out_offset + (keep + synthetic.len()) as u64,
                    what,
                    line_delta: -1,
                });
                self.synthetic = synthetic;
                keep
            }
        };
        self.dropping = true;
        self.carry.splice(0..0, out[keep..n].iter().copied());
        let fit = self.synthetic.len().min(out.len() - keep);
        out[keep..keep + fit].copy_from_slice(&self.synthetic[..fit]);
        self.synthetic = &self.synthetic[fit..];
        self.out_offset += (keep + fit) as u64;
        keep + fit
    }
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            if !self.synthetic.is_empty() {
                let n = self.synthetic.len().min(out.len());
                out[..n].copy_from_slice(&self.synthetic[..n]);
                self.synthetic = &self.synthetic[n..];
                self.out_offset += n as u64;
                return Ok(n);
            }
            let n = self.fill(out)?;
            if n == 0 {
                return Ok(0);
            }
            let mut start = 0;
            if self.dropping {
                match self.drop_rest(&out[..n]) {
                    Some(j) => start = j,
                    None => continue,
                }
            }
            if self.drop_lf && start < n {
                // The LF of the dropped record's CRLF (it may come in the next read).
                self.drop_lf = false;
                if out[start] == b'\n' {
                    self.add_line_delta(1);
                    start += 1;
                }
            }
            if start == n {
                continue;
            }
            out.copy_within(start..n, 0);
            return Ok(self.pass(out, n - start));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out at most `chunk` bytes per read, so states cross read boundaries.
    struct Chunky<'a> {
        data: &'a [u8],
        chunk: usize,
    }

    impl Read for Chunky<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.data.len().min(buf.len()).min(self.chunk);
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    type Records = Vec<(Vec<String>, Option<Oversize>)>;

    const CHUNKS: [usize; 7] = [1, 2, 3, 5, 7, 64, 1 << 16];

    /// The records `csv` reads through [`Bounded`] in `chunk`-byte reads, each with the cut
    /// that ended it, if any.
    fn records_in(input: &[u8], chunk: usize, field: usize, record: usize) -> Records {
        let bounded = Bounded::new(Chunky { data: input, chunk }, b',', field, record);
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .buffer_capacity(chunk.max(16))
            .from_reader(bounded);
        let mut got = Vec::new();
        let mut r = csv::ByteRecord::new();
        while reader.read_byte_record(&mut r).unwrap() {
            let end = reader.position().byte();
            let b = reader.get_mut();
            while b.first_cut().is_some_and(|c| c.end < end) {
                b.pop_cut();
            }
            let cut = b.first_cut().filter(|c| c.end == end).map(|c| c.what);
            let fields = r
                .iter()
                .map(|f| String::from_utf8_lossy(f).into())
                .collect();
            got.push((fields, cut));
        }
        got
    }

    /// [`records_in`], the same for every chunk size.
    fn records(input: &[u8], field: usize, record: usize) -> Records {
        let all = records_in(input, 1, field, record);
        for chunk in CHUNKS {
            assert_eq!(
                records_in(input, chunk, field, record),
                all,
                "chunk size {chunk}"
            );
        }
        all
    }

    fn plain(fields: &[&str]) -> (Vec<String>, Option<Oversize>) {
        (fields.iter().map(|s| s.to_string()).collect(), None)
    }

    #[test]
    fn within_the_caps_nothing_changes() {
        let inputs: [&[u8]; 6] = [
            b"email,name\na@x.test,Ann\n",
            b"\xef\xbb\xbf\"email\",name\r\n\r\na@x.test,\"A, \"\"nn\"\"\"\r\n",
            b"a,\"multi\nline\r\nfield\"\n\n\nb,c",
            b"a\rb\rc,\"\"\r\n",
            b",,\n\"x\"y,z\"\n",
            b"",
        ];
        for input in inputs {
            for chunk in CHUNKS {
                // What csv reads from the same reads without the caps.
                let mut reader = csv::ReaderBuilder::new()
                    .has_headers(false)
                    .flexible(true)
                    .buffer_capacity(chunk.max(16))
                    .from_reader(Chunky { data: input, chunk });
                let expected: Records = reader
                    .byte_records()
                    .map(|r| {
                        let r = r.unwrap();
                        let fields = r.iter().map(|f| String::from_utf8_lossy(f).into());
                        (fields.collect(), None)
                    })
                    .collect();
                assert_eq!(
                    records_in(input, chunk, 64, 64),
                    expected,
                    "{input:?} in {chunk}-byte reads"
                );
            }
        }
    }

    #[test]
    fn a_long_field_is_cut_and_the_rest_of_its_record_dropped() {
        let input = b"a,b\nxy,0123456789,more,fields\nc,d\n";
        assert_eq!(
            records(input, 4, 100),
            [
                plain(&["a", "b"]),
                (
                    vec!["xy".into(), "0123".into()],
                    Some(Oversize::Field { index: 1 })
                ),
                plain(&["c", "d"]),
            ]
        );
    }

    #[test]
    fn a_long_quoted_field_with_line_breaks_is_cut() {
        // Quoted line breaks and delimiters inside the dropped part do not end the record.
        let input = b"h\n\"ab\ncd,\n\"\"ef\ngh\"\r\nnext\n";
        let got = records(input, 5, 100);
        assert_eq!(
            got,
            [
                plain(&["h"]),
                // The opening quote counts: 5 bytes are `"ab\nc`.
                (vec!["ab\nc".into()], Some(Oversize::Field { index: 0 })),
                plain(&["next"]),
            ]
        );
        // Three LFs were dropped with the record (two in the field, the CRLF's), one made up.
        let mut b = Bounded::new(&input[..], b',', 5, 100);
        let mut out = Vec::new();
        b.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"h\n\"ab\nc\"\nnext\n");
        assert_eq!(b.first_cut().unwrap().line_delta, 3 - 1);
    }

    #[test]
    fn a_long_record_of_short_fields_is_cut() {
        let input = b"1,2,3,4,5,6,7,8,9\nok\n";
        assert_eq!(
            records(input, 4, 8),
            [
                (
                    vec!["1".into(), "2".into(), "3".into(), "4".into(), "".into()],
                    Some(Oversize::Record)
                ),
                plain(&["ok"]),
            ]
        );
    }

    #[test]
    fn a_long_record_at_the_end_without_a_line_end() {
        let input = b"a\nxxxxxxxxxxxxxxxx";
        assert_eq!(
            records(input, 4, 100),
            [
                plain(&["a"]),
                (vec!["xxxx".into()], Some(Oversize::Field { index: 0 })),
            ]
        );
    }

    #[test]
    fn memory_stays_bounded_for_an_unclosed_quote() {
        // 8 MB in one quoted field: csv never holds more than the cap of it.
        let mut input = b"email\n\"".to_vec();
        input.extend(std::iter::repeat_n(b'x', 8 << 20));
        let got = records(&input, 1024, 4096);
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].0[0].len(), 1023, "the quote counts");
        assert_eq!(got[1].1, Some(Oversize::Field { index: 0 }));
    }
}
