//! Files that hold recipients' addresses — the journal and its logs, the delivery log, the
//! rejects file, the suppression list, its exports, the sink's bounce log and quarantine — are
//! created private: mode 0600 (directories 0700), like the DKIM keys, whatever the umask lets
//! others read. A file that already exists keeps its mode (an operator may have chosen 0640).
//! Files blast reads (templates, the recipient list) must be regular files ([`not_regular`]):
//! `/dev/zero` or a FIFO would be read for ever.

use std::fs::OpenOptions;
use std::io;
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
}
