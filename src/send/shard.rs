//! `--shard K/N`: N feeder boxes split one recipient list with no overlap and no coordination.
//!
//! A row belongs to shard `fnv1a64(lowercase(address)) % N + 1`, where `address` is the
//! normalised address (trimmed, domain lowercased and punycode) and FNV-1a 64 runs over the
//! UTF-8 bytes of its full lowercase form. The hash is fixed (not std's randomised hasher) and
//! part of the on-disk contract: every blast, on every box and in every version, puts an
//! address in the same shard, so a resumed shard never picks up rows of another one. The same
//! address always lands in the same shard, so `dedupe` keeps working per shard.
//!
//! Each shard has outputs of its own — journal, lock, delivery log, rejects file — named by
//! inserting `.shard-K-of-N` before the extension (`journal.sqlite` →
//! `journal.shard-2-of-3.sqlite`), so shards never contend for a lock or a file even when
//! they share a disk. Rows of other shards are skipped by the reader before rendering; they
//! are neither rejected nor sent.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Shards at most.
pub const MAX_SHARDS: u32 = 1024;

/// Shard `k` of `n` (1 ≤ k ≤ n ≤ [`MAX_SHARDS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    k: u32,
    n: u32,
}

impl Shard {
    pub fn new(k: u32, n: u32) -> Result<Shard, String> {
        if n == 0 || n > MAX_SHARDS {
            return Err(format!(
                "shard count {n} out of range: N must be 1 to {MAX_SHARDS}"
            ));
        }
        if k == 0 || k > n {
            return Err(format!("shard {k} out of range: K must be 1 to N ({n})"));
        }
        Ok(Shard { k, n })
    }

    /// K (1-based).
    pub fn index(self) -> u32 {
        self.k
    }

    /// N.
    pub fn count(self) -> u32 {
        self.n
    }

    /// The shard (1..=n) of a normalised address.
    pub fn of(address: &str, n: u32) -> u32 {
        (hash_address(address) % u64::from(n.max(1))) as u32 + 1
    }

    /// Does this address belong to this shard?
    pub fn contains(self, address: &str) -> bool {
        Shard::of(address, self.n) == self.k
    }

    /// `path` with `.shard-K-of-N` inserted before its extension (appended if it has none).
    pub fn path(self, path: &Path) -> PathBuf {
        let tag = format!("shard-{}-of-{}", self.k, self.n);
        let name = match (path.file_stem(), path.extension()) {
            (Some(stem), Some(ext)) => {
                format!("{}.{tag}.{}", stem.to_string_lossy(), ext.to_string_lossy())
            }
            (Some(stem), None) => format!("{}.{tag}", stem.to_string_lossy()),
            _ => tag,
        };
        path.with_file_name(name)
    }
}

/// Which sharding a file of `base`'s outputs belongs to: `Some(None)` for `base` itself
/// (unsharded), `Some(Some(shard))` for `shard.path(base)`, None for any other file. The
/// inverse of [`Shard::path`].
pub fn sharding_of(base: &Path, path: &Path) -> Option<Option<Shard>> {
    if path.file_name()? == base.file_name()? {
        return Some(None);
    }
    let name = path.file_name()?.to_str()?;
    let (prefix, suffix) = match (base.file_stem(), base.extension()) {
        (Some(stem), Some(ext)) => (
            format!("{}.shard-", stem.to_str()?),
            format!(".{}", ext.to_str()?),
        ),
        (Some(stem), None) => (format!("{}.shard-", stem.to_str()?), String::new()),
        _ => ("shard-".to_string(), String::new()),
    };
    let (k, n) = name
        .strip_prefix(&prefix)?
        .strip_suffix(&suffix)?
        .split_once("-of-")?;
    let shard = Shard::new(k.parse().ok()?, n.parse().ok()?).ok()?;
    // Exactly the name blast writes ("01-of-3" is not shard 1/3's).
    (shard.path(base).file_name()? == path.file_name()?).then_some(Some(shard))
}

/// The files of every sharding of `base` that exist beside it: `base` itself (unsharded, `None`)
/// and `shard.path(base)` for any K/N (`Some(shard)`), sorted by name.
pub fn existing(base: &Path) -> std::io::Result<Vec<(Option<Shard>, PathBuf)>> {
    let dir = match base.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = dir.join(entry?.file_name());
        if let Some(sharding) = sharding_of(base, &path)
            && path.is_file()
        {
            found.push((sharding, path));
        }
    }
    found.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(found)
}

/// `--shard K/N`, or "no --shard", as an operator would type it.
pub fn describe(sharding: Option<Shard>) -> String {
    match sharding {
        Some(s) => format!("--shard {s}"),
        None => "no --shard".to_string(),
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.k, self.n)
    }
}

impl FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Shard, String> {
        let bad = || format!("{s:?}: expected K/N, e.g. 2/3 (1 ≤ K ≤ N ≤ {MAX_SHARDS})");
        let (k, n) = s.trim().split_once('/').ok_or_else(bad)?;
        let k: u32 = k.trim().parse().map_err(|_| bad())?;
        let n: u32 = n.trim().parse().map_err(|_| bad())?;
        Shard::new(k, n)
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a 64 of the bytes.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
    })
}

/// FNV-1a 64 of the UTF-8 bytes of `address.to_lowercase()`, without allocating.
pub fn hash_address(address: &str) -> u64 {
    let mut h = FNV_OFFSET;
    let mut buf = [0u8; 4];
    for c in address.chars().flat_map(char::to_lowercase) {
        for &b in c.encode_utf8(&mut buf).as_bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(FNV_PRIME);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn the_hash_is_of_the_lowercased_address() {
        assert_eq!(hash_address("Ann@Example.COM"), fnv1a64(b"ann@example.com"));
        assert_eq!(
            hash_address("ÉLODIE@x.fr"),
            fnv1a64("élodie@x.fr".as_bytes())
        );
        // Pinned: shard journals on disk depend on this never changing.
        assert_eq!(
            Shard::of("u1@d1.test", 3),
            (fnv1a64(b"u1@d1.test") % 3) as u32 + 1
        );
    }

    #[test]
    fn shards_partition_and_are_balanced() {
        let n = 7;
        let mut counts = [0u32; 7];
        for i in 0..70_000 {
            let a = format!("user{i}@domain{}.example", i % 97);
            let s = Shard::of(&a, n);
            counts[(s - 1) as usize] += 1;
            let owners = (1..=n)
                .filter(|&k| Shard::new(k, n).unwrap().contains(&a))
                .count();
            assert_eq!(owners, 1);
        }
        assert!(
            counts.iter().all(|&c| (9_000..11_000).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn parses_and_validates() {
        assert_eq!("2/3".parse::<Shard>().unwrap(), Shard::new(2, 3).unwrap());
        assert_eq!("1/1".parse::<Shard>().unwrap().to_string(), "1/1");
        assert!("1024/1024".parse::<Shard>().is_ok());
        for bad in [
            "0/3", "4/3", "1/0", "1/1025", "3", "a/b", "-1/3", "1/3/4", "",
        ] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }

    #[test]
    fn shard_paths_are_recognised() {
        let base = Path::new("/srv/c/journal.sqlite");
        let s = Shard::new(2, 3).unwrap();
        assert_eq!(sharding_of(base, &s.path(base)), Some(Some(s)));
        assert_eq!(sharding_of(base, base), Some(None));
        for other in [
            "/srv/c/journal.sqlite-wal",
            "/srv/c/journal.shard-2-of-3.sqlite-wal",
            "/srv/c/journal.shard-2-of-3.sqlite.lock",
            "/srv/c/journal.shard-02-of-3.sqlite",
            "/srv/c/journal.shard-4-of-3.sqlite",
            "/srv/c/other.shard-1-of-3.sqlite",
            "/srv/c/journal.shard-1-of-3.db",
        ] {
            assert_eq!(sharding_of(base, Path::new(other)), None, "{other}");
        }
        let bare = Path::new("out/journal");
        let s = Shard::new(1, 1).unwrap();
        assert_eq!(sharding_of(bare, &s.path(bare)), Some(Some(s)));
    }

    #[test]
    fn paths_get_the_shard_before_the_extension() {
        let s = Shard::new(2, 3).unwrap();
        assert_eq!(
            s.path(Path::new("/srv/c/journal.sqlite")),
            PathBuf::from("/srv/c/journal.shard-2-of-3.sqlite")
        );
        assert_eq!(
            s.path(Path::new("out/delivery")),
            PathBuf::from("out/delivery.shard-2-of-3")
        );
    }
}
