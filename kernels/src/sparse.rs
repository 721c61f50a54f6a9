//! A sparse selection of a dense buffer: positions and their values.

use crate::error::{check_finite, check_len, KernelError, Result};

/// Positions of a dense buffer and the values found (or to be placed) there.
///
/// Invariant kept by every producer in this crate: `indices` is strictly increasing and
/// `indices.len() == values.len()`. [`Sparse::validate`] checks it for data that came from
/// elsewhere.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sparse {
    /// Positions in the dense buffer, strictly increasing.
    pub indices: Vec<u32>,
    /// The value at each position.
    pub values: Vec<f32>,
}

impl Sparse {
    /// An empty selection with room for `n` entries.
    pub fn with_capacity(n: usize) -> Self {
        Self { indices: Vec::with_capacity(n), values: Vec::with_capacity(n) }
    }

    /// Number of selected positions.
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    /// Whether nothing is selected.
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// Removes every entry, keeping the allocations.
    pub fn clear(&mut self) {
        self.indices.clear();
        self.values.clear();
    }

    /// Checks the invariants against a dense buffer of `dense_len` elements: equal lengths,
    /// strictly increasing indices below `dense_len`, finite values.
    pub fn validate(&self, dense_len: usize) -> Result<()> {
        check_len("sparse values", self.indices.len(), self.values.len())?;
        let mut prev: Option<u32> = None;
        for &i in &self.indices {
            if (i as usize) >= dense_len {
                return Err(KernelError::IndexOutOfRange {
                    what: "sparse indices",
                    index: u64::from(i),
                    len: dense_len as u64,
                });
            }
            if prev.is_some_and(|p| p >= i) {
                return Err(crate::error::malformed(
                    "sparse indices",
                    format!("not strictly increasing at index {i}"),
                ));
            }
            prev = Some(i);
        }
        check_finite("sparse values", &self.values)
    }

    /// Writes the selection into `dense` (which the caller has zeroed or filled as wanted).
    pub fn scatter_into(&self, dense: &mut [f32]) -> Result<()> {
        self.validate(dense.len())?;
        for (&i, &v) in self.indices.iter().zip(&self.values) {
            dense[i as usize] = v;
        }
        Ok(())
    }

    /// The dense vector of `len` elements holding this selection and zeros elsewhere.
    pub fn to_dense(&self, len: usize) -> Result<Vec<f32>> {
        let mut dense = vec![0.0; len];
        self.scatter_into(&mut dense)?;
        Ok(dense)
    }
}
