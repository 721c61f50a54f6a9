//! Helpers shared by the two test modules of the CUDA backend (`tests.rs`, which also runs
//! on a device, and `host_tests.rs`): the same inputs, and the same byte stream for the C++
//! host harnesses, which read a DCT plan as the kernels take it.

use crate::dct::DctPlan;
use crate::rng::SplitMix64;

/// Gaussian-ish values with a share of exact ties (values on a coarse grid), to exercise
/// the lower-index rule.
pub(super) fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut r = SplitMix64::new(seed);
    (0..n)
        .map(|i| {
            let u = r.next_unit_f32() + r.next_unit_f32() + r.next_unit_f32() - 1.5;
            if i % 7 == 0 {
                (u * 8.0).round() / 8.0
            } else {
                u
            }
        })
        .collect()
}

/// The first C++ compiler on the PATH, for the host harnesses.
pub(super) fn host_compiler() -> Option<&'static str> {
    ["c++", "g++", "clang++"].into_iter().find(|c| {
        std::process::Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success())
    })
}

/// Appends `v` as a little-endian u32, as the harnesses read every count.
pub(super) fn put_u32(buf: &mut Vec<u8>, v: usize) {
    buf.extend_from_slice(&(v as u32).to_le_bytes());
}

/// Appends the floats little-endian.
pub(super) fn put_f32s(buf: &mut Vec<u8>, v: &[f32]) {
    for x in v {
        buf.extend_from_slice(&x.to_le_bytes());
    }
}

/// Appends `plan` as the harnesses read it: the fields of `TileGeometry` (dct.cuh), the
/// tile count, then for the row and the column dimension its length, whether it is fast,
/// the table sizes, the fast path's permutation and constants and the dense basis.
pub(super) fn put_dct_plan(buf: &mut Vec<u8>, plan: &DctPlan) {
    let (r, c) = (plan.rows(), plan.cols());
    let line = if r.len == 1 {
        1
    } else if c.len == 1 {
        2
    } else {
        0
    };
    for v in [r.len, c.len, r.chunk, c.chunk, c.padded / c.chunk, line, plan.num_tiles()] {
        put_u32(buf, v);
    }
    for n in [r.chunk, c.chunk] {
        let (gather, tab) = crate::dct::fast_tables(n).unwrap_or_default();
        let fast = crate::dct::fast_tables(n).is_some();
        for v in [n, usize::from(fast), gather.len(), tab.len()] {
            put_u32(buf, v);
        }
        for g in &gather {
            buf.extend_from_slice(&g.to_le_bytes());
        }
        put_f32s(buf, &tab);
        put_f32s(buf, &crate::dct::basis(n));
    }
}
