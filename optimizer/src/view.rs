//! Borrowing tch tensor memory as slices, so kernels work in place with no copy.

use crate::error::{OptimizerError, Result};
use tch::{Device, Kind, Tensor};

fn check_borrowable(name: &str, t: &Tensor) -> Result<usize> {
    let unsupported =
        |reason: String| OptimizerError::UnsupportedTensor { name: name.to_owned(), reason };
    if t.kind() != Kind::Float {
        return Err(unsupported(format!("dtype {:?}, expected f32", t.kind())));
    }
    if t.device() != Device::Cpu {
        return Err(unsupported(format!("on {:?}; the CPU kernels need CPU memory", t.device())));
    }
    if !t.is_contiguous() {
        return Err(unsupported("not contiguous".to_owned()));
    }
    let numel = t.numel();
    Ok(numel)
}

/// Runs `f` on the elements of a contiguous CPU f32 tensor.
///
/// The closure form keeps the borrow from outliving the tensor handle.
pub fn with_f32<R>(name: &str, t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let numel = check_borrowable(name, t)?;
    if numel == 0 {
        return Ok(f(&[]));
    }
    // SAFETY: checked above that the tensor is a contiguous CPU f32 tensor of `numel`
    // elements, so `data_ptr` points at `numel` initialised, aligned f32 values owned by
    // LibTorch, alive while `t` is borrowed for the duration of `f`.
    let slice = unsafe { std::slice::from_raw_parts(t.data_ptr() as *const f32, numel) };
    Ok(f(slice))
}

/// Runs `f` on the elements of a contiguous CPU f32 tensor, mutably.
///
/// Takes `&mut Tensor` so the borrow checker rules out a second Rust view of the same
/// handle during `f`. A tensor sharing storage with another handle (a view) is the
/// caller's responsibility, as everywhere in LibTorch.
pub fn with_f32_mut<R>(name: &str, t: &mut Tensor, f: impl FnOnce(&mut [f32]) -> R) -> Result<R> {
    let numel = check_borrowable(name, t)?;
    if numel == 0 {
        return Ok(f(&mut []));
    }
    // SAFETY: as in `with_f32`; exclusivity comes from the `&mut Tensor`.
    let slice = unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut f32, numel) };
    Ok(f(slice))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn borrows_and_writes_through() {
        let mut t = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).reshape([2, 2]);
        let sum = with_f32("t", &t, |s| s.iter().sum::<f32>()).unwrap();
        assert_eq!(sum, 10.0);
        with_f32_mut("t", &mut t, |s| s[3] = 40.0).unwrap();
        assert_eq!(t.double_value(&[1, 1]), 40.0);
    }

    #[test]
    fn refuses_what_it_cannot_borrow() {
        let d = Tensor::from_slice(&[1.0f64, 2.0]);
        assert!(matches!(with_f32("d", &d, |_| ()), Err(OptimizerError::UnsupportedTensor { .. })));
        let nc = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).reshape([2, 2]).transpose(0, 1);
        let err = with_f32("nc", &nc, |_| ()).unwrap_err().to_string();
        assert!(err.contains("not contiguous"), "{err}");
    }
}
