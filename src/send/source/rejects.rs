//! The rejects CSV: `row,line,reason,<columns>`, one line per rejected row with its original
//! fields (invalid UTF-8 written as U+FFFD), so an operator can fix and resend them.

use std::fs::File;
use std::path::PathBuf;

use csv::ByteRecord;

use super::{Columns, RejectReason, SourceError};

/// An open rejects file, its header written.
pub(super) struct Rejects {
    path: PathBuf,
    writer: csv::Writer<File>,
}

impl Rejects {
    /// Creates (truncates) the file and writes the header.
    pub(super) fn create(path: PathBuf, columns: &Columns) -> Result<Rejects, SourceError> {
        // The rejected rows, addresses included: private (0600).
        let file = match crate::private::create(&path) {
            Ok(file) => file,
            Err(cause) => return Err(SourceError::CreateRejects { path, cause }),
        };
        let mut writer = csv::WriterBuilder::new().flexible(true).from_writer(file);
        let header = ["row", "line", "reason"]
            .into_iter()
            .chain(columns.names().iter().map(String::as_str));
        if let Err(cause) = writer.write_record(header) {
            return Err(SourceError::WriteRejects { path, cause });
        }
        Ok(Rejects { path, writer })
    }

    /// Writes one rejected row: its number, line, reason and fields (each cut to `shorten`
    /// characters when given: the fields of a row over a size cap).
    pub(super) fn write(
        &mut self,
        row: u64,
        line: u64,
        reason: &RejectReason,
        record: &ByteRecord,
        shorten: Option<usize>,
    ) -> Result<(), SourceError> {
        let writer = &mut self.writer;
        let result = (|| {
            writer.write_field(row.to_string())?;
            writer.write_field(line.to_string())?;
            writer.write_field(reason.to_string())?;
            for field in record.iter() {
                let text = String::from_utf8_lossy(field);
                let text = match shorten {
                    Some(max) => super::elide(&text, max),
                    None => text,
                };
                writer.write_field(text.as_bytes())?;
            }
            writer.write_record(std::iter::empty::<&[u8]>())
        })();
        result.map_err(|cause| SourceError::WriteRejects {
            path: self.path.clone(),
            cause,
        })
    }

    /// Flushes the file; dropping it instead would lose the flush error.
    pub(super) fn finish(mut self) -> Result<(), SourceError> {
        self.writer
            .flush()
            .map_err(|err| SourceError::WriteRejects {
                path: self.path,
                cause: err.into(),
            })
    }
}
