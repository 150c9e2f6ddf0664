//! The dedupe set: case-folded address fingerprints in an open-addressing table (memory and
//! collision odds: "Dedupe" in the module doc of `source`).

use std::hash::{DefaultHasher, Hasher};

/// Set of case-folded address fingerprints, 8 bytes per slot: an open-addressing table (linear
/// probing, 0 marks a free slot) kept at most 7/10 full. Its own table rather than a `HashSet`
/// so that the reader can prefetch a row's slot before it validates the row: the table is far
/// larger than the caches, and a miss per row waited for in line was most of what dedupe cost.
pub(super) struct Fingerprints {
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
    pub(super) fn insert(&mut self, address: &str) -> bool {
        self.insert_fingerprint(fingerprint(address.as_bytes()))
    }

    /// `false` if `fp` was already in the set.
    pub(super) fn insert_fingerprint(&mut self, fp: u64) -> bool {
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
    pub(super) fn reserve(&mut self, rows: usize) {
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
    pub(super) fn prefetch(&self, fp: u64) {
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
pub(super) fn fingerprint(address: &[u8]) -> u64 {
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
}
