//! Files that hold recipients' addresses — the journal and its logs, the delivery log, the
//! rejects file, the suppression list, its exports, the sink's bounce log and quarantine — are
//! created private: mode 0600 (directories 0700), like the DKIM keys, whatever the umask lets
//! others read. A file that already exists keeps its mode (an operator may have chosen 0640).
//! Files blast reads (the campaign file, templates, the recipient list, DKIM keys) must be
//! regular files ([`not_regular`], [`read_regular`]): `/dev/zero` or a FIFO would be read for
//! ever.

use std::fs::OpenOptions;
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// `OpenOptions` that create files with mode 0600; chain `.create(true).append(true)` etc.
pub fn options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.mode(0o600);
    o
}

/// Creates (truncating) a private file for writing.
pub fn create(path: &Path) -> io::Result<std::fs::File> {
    options().write(true).create(true).truncate(true).open(path)
}

/// For a SQLite database about to be opened: creates `path` empty with mode 0600 unless it
/// exists. SQLite opens an empty file as a new database and creates its -wal and -shm files
/// with the database file's mode.
pub fn create_db_file(path: &Path) -> io::Result<()> {
    match options().write(true).create_new(true).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Creates `dir` and its missing parents with mode 0700 (existing ones keep theirs).
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Why a path that exists cannot be read as a file (`None` for a regular file).
pub fn not_regular(meta: &std::fs::Metadata) -> Option<String> {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    let what = if t.is_file() {
        return None;
    } else if t.is_dir() {
        return Some("is a directory, not a file".to_string());
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a file"
    };
    Some(format!("is not a regular file ({what})"))
}

/// The largest campaign file or DKIM key file blast reads (a PEM key is a few KB).
pub const MAX_INPUT_FILE: u64 = 1 << 20;

/// Why [`read_regular`] read nothing.
#[derive(Debug)]
pub enum ReadProblem {
    /// Opening or reading failed (the file does not exist, permissions, …).
    Io(io::Error),
    /// A directory, a device, a FIFO or a socket: [`not_regular`]'s phrase, e.g. "is a
    /// directory, not a file".
    NotRegular(String),
    /// Larger than the limit given, in bytes.
    TooLarge(u64),
}

impl std::fmt::Display for ReadProblem {
    /// A phrase to follow the file's name: "is a directory, not a file", "cannot be read: …".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadProblem::Io(e) => write!(f, "cannot be read: {e}"),
            ReadProblem::NotRegular(what) => f.write_str(what),
            ReadProblem::TooLarge(limit) => write!(f, "is larger than {} KB", limit >> 10),
        }
    }
}

/// Reads a file blast was told to read: a regular file (checked before opening it, since
/// opening a FIFO blocks, and again on what was opened) of at most `limit` bytes, through a
/// bounded reader, so a device such as `/dev/zero` or a huge file costs nothing.
pub fn read_regular(path: &Path, limit: u64) -> Result<Vec<u8>, ReadProblem> {
    let regular = |meta: std::fs::Metadata| match not_regular(&meta) {
        Some(what) => Err(ReadProblem::NotRegular(what)),
        None => Ok(()),
    };
    regular(std::fs::metadata(path).map_err(ReadProblem::Io)?)?;
    let file = std::fs::File::open(path).map_err(ReadProblem::Io)?;
    regular(file.metadata().map_err(ReadProblem::Io)?)?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(ReadProblem::Io)?;
    if bytes.len() as u64 > limit {
        return Err(ReadProblem::TooLarge(limit));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn creates_private_and_leaves_existing_modes() {
        let d = std::env::temp_dir().join(format!("blast-private-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        create_dir_all(&d.join("q")).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&d.join("q")), 0o700);
        create(&d.join("a")).unwrap();
        create_db_file(&d.join("b")).unwrap();
        assert_eq!((mode(&d.join("a")), mode(&d.join("b"))), (0o600, 0o600));
        std::fs::set_permissions(d.join("b"), std::fs::Permissions::from_mode(0o640)).unwrap();
        create_db_file(&d.join("b")).unwrap();
        assert_eq!(mode(&d.join("b")), 0o640);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn read_regular_refuses_what_is_not_a_bounded_file() {
        let d = std::env::temp_dir().join(format!("blast-read-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        create_dir_all(&d).unwrap();
        std::fs::write(d.join("f"), "12345").unwrap();
        assert_eq!(read_regular(&d.join("f"), 5).unwrap(), b"12345");
        let text = |r: Result<Vec<u8>, ReadProblem>| r.unwrap_err().to_string();
        assert_eq!(text(read_regular(&d.join("f"), 4)), "is larger than 0 KB");
        assert_eq!(text(read_regular(&d, 4)), "is a directory, not a file");
        assert_eq!(
            text(read_regular(Path::new("/dev/zero"), 4)),
            "is not a regular file (a device)"
        );
        assert!(text(read_regular(&d.join("none"), 4)).starts_with("cannot be read: "));
        let _ = std::fs::remove_dir_all(&d);
    }
}
