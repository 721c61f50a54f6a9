//! Error feedback: what compression did not send stays behind for the next round.
//!
//! The residual must be computed from exactly what the receivers will decode (the
//! dequantized values at the sent positions), not from the values before quantization;
//! otherwise the quantization error is silently dropped instead of carried forward.

use crate::error::{check_finite, check_len, Result};
use crate::sparse::Sparse;

/// `buffer[i] -= v` for every sent `(i, v)`: leaves in `buffer` what was not sent.
///
/// Validates `sent` against `buffer` first (sorted, in range, finite) and changes nothing
/// on error.
pub fn subtract_sent(buffer: &mut [f32], sent: &Sparse) -> Result<()> {
    sent.validate(buffer.len())?;
    for (&i, &v) in sent.indices.iter().zip(&sent.values) {
        buffer[i as usize] -= v;
    }
    Ok(())
}

/// `buffer -= reconstructed` elementwise: the residual when the sent part is dense (for
/// example after an inverse transform of the sent coefficients).
pub fn subtract_dense(buffer: &mut [f32], reconstructed: &[f32]) -> Result<()> {
    check_len("reconstructed", buffer.len(), reconstructed.len())?;
    check_finite("reconstructed", reconstructed)?;
    for (b, r) in buffer.iter_mut().zip(reconstructed) {
        *b -= r;
    }
    Ok(())
}

/// The decayed accumulation `e ← decay·e + update` used by SparseLoCo-style feedback.
pub fn accumulate(error: &mut [f32], decay: f32, update: &[f32]) -> Result<()> {
    check_len("update", error.len(), update.len())?;
    if !decay.is_finite() {
        return Err(crate::error::invalid("decay", format!("{decay} is not finite")));
    }
    check_finite("update", update)?;
    for (e, u) in error.iter_mut().zip(update) {
        *e = decay.mul_add(*e, *u);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subtract_sent_leaves_the_unsent_part() {
        let mut b = vec![1.0, -2.0, 3.0, 4.0];
        let sent = Sparse { indices: vec![1, 3], values: vec![-1.5, 4.0] };
        subtract_sent(&mut b, &sent).unwrap();
        assert_eq!(b, vec![1.0, -0.5, 3.0, 0.0]);
    }

    #[test]
    fn bad_sent_changes_nothing() {
        let mut b = vec![1.0, 2.0];
        let out_of_range = Sparse { indices: vec![0, 2], values: vec![1.0, 1.0] };
        assert!(subtract_sent(&mut b, &out_of_range).is_err());
        let nan = Sparse { indices: vec![0], values: vec![f32::NAN] };
        assert!(subtract_sent(&mut b, &nan).is_err());
        assert!(subtract_dense(&mut b, &[1.0]).is_err());
        assert!(subtract_dense(&mut b, &[1.0, f32::INFINITY]).is_err());
        assert_eq!(b, vec![1.0, 2.0]);
    }

    #[test]
    fn accumulate_decays_then_adds() {
        let mut e = vec![1.0, 2.0];
        accumulate(&mut e, 0.5, &[1.0, -1.0]).unwrap();
        assert_eq!(e, vec![1.5, 0.0]);
        assert!(accumulate(&mut e, f32::NAN, &[0.0, 0.0]).is_err());
        assert!(accumulate(&mut e, 0.5, &[0.0]).is_err());
    }
}
