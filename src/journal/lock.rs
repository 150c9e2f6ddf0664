//! [`CampaignLock`]: `<journal>.lock`, one `blast send` per campaign.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// `<journal>.lock`, held (`File::try_lock`) for the whole send: one sender per campaign.
pub struct CampaignLock {
    _file: std::fs::File,
    path: PathBuf,
}

/// Why the lock was not taken.
#[derive(Debug)]
pub enum LockError {
    /// Another process holds it; its pid if it wrote one.
    Held {
        pid: Option<u32>,
    },
    Io(std::io::Error),
}

pub fn lock_path(journal: &Path) -> PathBuf {
    let mut p = journal.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

impl CampaignLock {
    /// Takes the lock of the campaign whose journal is `journal`, at once or not at all.
    pub fn acquire(journal: &Path) -> std::result::Result<CampaignLock, LockError> {
        use std::io::{Seek, Write};
        let path = lock_path(journal);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(LockError::Io)?;
        }
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(LockError::Io)?;
        // `blast status` takes a shared lock for an instant to see whether a sender runs: try a
        // few times over ~100 ms so that it never turns a starting sender away.
        let mut tries = 0;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if tries < 5 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(LockError::Held {
                        pid: read_pid(&path),
                    });
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(LockError::Io(e)),
            }
        }
        file.set_len(0).map_err(LockError::Io)?;
        file.seek(std::io::SeekFrom::Start(0))
            .map_err(LockError::Io)?;
        writeln!(file, "{}", std::process::id()).map_err(LockError::Io)?;
        Ok(CampaignLock { _file: file, path })
    }

    /// The pid of the process holding the lock of this journal, if one does.
    pub fn holder(journal: &Path) -> Option<u32> {
        let path = lock_path(journal);
        let file = std::fs::File::open(&path).ok()?;
        // A shared lock fails while an exclusive one is held; taken and released at once.
        match file.try_lock_shared() {
            Ok(()) => {
                let _ = file.unlock();
                None
            }
            Err(_) => read_pid(&path),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::test_support::dir;

    #[test]
    fn lock_is_exclusive() {
        let d = dir("lock");
        let p = d.join("j.sqlite");
        let l = CampaignLock::acquire(&p).unwrap();
        match CampaignLock::acquire(&p) {
            Err(LockError::Held { pid }) => assert_eq!(pid, Some(std::process::id())),
            _ => panic!("second lock taken"),
        }
        assert_eq!(CampaignLock::holder(&p), Some(std::process::id()));
        drop(l);
        assert_eq!(CampaignLock::holder(&p), None);
        assert!(CampaignLock::acquire(&p).is_ok());
        let _ = std::fs::remove_dir_all(&d);
    }
}
