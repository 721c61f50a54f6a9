//! How a flat buffer is cut into chunks for per-chunk selection, and how many entries each
//! chunk keeps.
//!
//! A buffer of `len` elements is cut into `ceil(len / chunk_len)` chunks of `chunk_len`
//! elements; only the last may be shorter. Every full chunk keeps `k` entries; a short last
//! chunk of `r` elements keeps `ceil(k · r / chunk_len)` (at least one), so that density is
//! the same everywhere and a small tensor (a bias, a norm gain) is not sent whole.

use crate::error::{invalid, Result};

/// The chunking of one flat buffer: chunk length and entries kept per full chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkSpec {
    /// Elements in the buffer.
    pub len: usize,
    /// Elements per chunk (the last chunk may be shorter).
    pub chunk_len: usize,
    /// Entries kept from each full chunk.
    pub k: usize,
}

impl ChunkSpec {
    /// Validates `0 < k ≤ chunk_len`, `len > 0`, and `len < 2^32` (indices are `u32`).
    pub fn new(len: usize, chunk_len: usize, k: usize) -> Result<Self> {
        if len == 0 {
            return Err(invalid("len", "the buffer must hold at least one element"));
        }
        if u32::try_from(len).is_err() {
            return Err(invalid("len", format!("{len} elements exceed the u32 index range")));
        }
        if chunk_len == 0 {
            return Err(invalid("chunk_len", "must be positive"));
        }
        if k == 0 || k > chunk_len {
            return Err(invalid("k", format!("{k} is not in 1..={chunk_len} (the chunk length)")));
        }
        Ok(Self { len, chunk_len, k })
    }

    /// Number of chunks, the last possibly short.
    pub fn num_chunks(&self) -> usize {
        self.len.div_ceil(self.chunk_len)
    }

    /// Element range `[start, end)` of chunk `c`.
    pub fn chunk_range(&self, c: usize) -> std::ops::Range<usize> {
        let start = c * self.chunk_len;
        start..(start + self.chunk_len).min(self.len)
    }

    /// Entries kept from a chunk of `this_len` elements (see the module doc).
    pub fn k_for(&self, this_len: usize) -> usize {
        if this_len >= self.chunk_len {
            self.k
        } else {
            (self.k * this_len).div_ceil(self.chunk_len).clamp(1, this_len.max(1))
        }
    }

    /// Entries kept over the whole buffer.
    pub fn total_k(&self) -> usize {
        let full = self.len / self.chunk_len;
        let rest = self.len % self.chunk_len;
        full * self.k + if rest > 0 { self.k_for(rest) } else { 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ragged_tail_keeps_proportional_k() {
        let s = ChunkSpec::new(4096 * 2 + 100, 4096, 64).unwrap();
        assert_eq!(s.num_chunks(), 3);
        assert_eq!(s.chunk_range(2), 8192..8292);
        assert_eq!(s.k_for(100), 2); // ceil(64·100/4096) = ceil(1.56)
        assert_eq!(s.total_k(), 130);
        let tiny = ChunkSpec::new(3, 4096, 64).unwrap();
        assert_eq!(tiny.total_k(), 1);
    }

    #[test]
    fn bad_specs_are_errors() {
        assert!(ChunkSpec::new(0, 64, 1).is_err());
        assert!(ChunkSpec::new(10, 0, 1).is_err());
        assert!(ChunkSpec::new(10, 64, 0).is_err());
        assert!(ChunkSpec::new(10, 64, 65).is_err());
    }
}
