//! [`RowSet`]: the rows of a run already done (final outcome), which the reader skips at
//! resume, or attempted without a final outcome.

/// A set of row numbers: one bit per row (10M rows = 1.25 MB).
#[derive(Debug, Clone, Default)]
pub struct RowSet {
    bits: Vec<u64>,
    len: u64,
}

impl RowSet {
    pub fn new() -> RowSet {
        RowSet::default()
    }

    pub fn insert(&mut self, row: u64) {
        let (w, b) = ((row / 64) as usize, row % 64);
        if w >= self.bits.len() {
            self.bits.resize(w + 1, 0);
        }
        if self.bits[w] & (1 << b) == 0 {
            self.bits[w] |= 1 << b;
            self.len += 1;
        }
    }

    pub fn contains(&self, row: u64) -> bool {
        self.bits
            .get((row / 64) as usize)
            .is_some_and(|w| w & (1 << (row % 64)) != 0)
    }

    /// Rows in the set.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Heap bytes used.
    pub fn memory(&self) -> usize {
        self.bits.capacity() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_set() {
        let mut s = RowSet::new();
        assert!(s.is_empty());
        for r in [1, 63, 64, 65, 10_000_000, 64] {
            s.insert(r);
        }
        assert_eq!(s.len(), 5);
        assert!(
            s.contains(64) && s.contains(10_000_000) && !s.contains(2) && !s.contains(u64::MAX)
        );
        // One bit per row: 10M rows in 1.25 MB.
        assert!(s.memory() <= 10_000_064 / 8 + 64);
    }
}
