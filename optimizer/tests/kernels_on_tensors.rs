//! The kernels working in place on LibTorch memory (through the optimizer's views), checked
//! against tch's own ops.

use meridian_kernels::dct::DctPlan;
use meridian_kernels::pipeline::{Compressor, CompressorConfig};
use meridian_optimizer::view::{with_f32, with_f32_mut};
use tch::{Device, Kind, Tensor};

/// Orthonormal DCT-II basis as a tch matrix: C[k, n] = s_k·cos(π(2n+1)k / 2N).
fn dct_basis(n: i64) -> Tensor {
    let k = Tensor::arange(n, (Kind::Double, Device::Cpu)).unsqueeze(1);
    let i = Tensor::arange(n, (Kind::Double, Device::Cpu)).unsqueeze(0);
    let c = ((i * 2.0 + 1.0) * &k * std::f64::consts::PI / (2.0 * n as f64)).cos()
        * (2.0 / n as f64).sqrt();
    let first = Tensor::ones([1, n], (Kind::Double, Device::Cpu)) * (1.0 / n as f64).sqrt();
    Tensor::cat(&[first, c.narrow(0, 1, n - 1)], 0)
}

/// DeMo's formulation with tensor ops: tiles Y = C·X·Cᵀ, laid out tile-major.
fn dct2d_reference(x: &Tensor, chunk: i64) -> Tensor {
    let (r, c) = (x.size()[0], x.size()[1]);
    let basis = dct_basis(chunk);
    let tiles =
        x.to_kind(Kind::Double).reshape([r / chunk, chunk, c / chunk, chunk]).permute([0, 2, 1, 3]);
    basis.matmul(&tiles).matmul(&basis.transpose(0, 1)).reshape([-1]).to_kind(Kind::Float)
}

#[test]
fn dct_on_tensor_memory_matches_tch_matrix_products() {
    tch::manual_seed(1);
    let x = Tensor::randn([128, 192], (Kind::Float, Device::Cpu));
    let plan = DctPlan::new_2d(128, 192, 64).unwrap();
    let mut coeffs = vec![0.0f32; plan.coeff_len()];
    with_f32("x", &x, |s| plan.forward(s, &mut coeffs)).unwrap().unwrap();
    let reference = dct2d_reference(&x, 64);
    let ours = Tensor::from_slice(&coeffs);
    let rel = f64::try_from((&ours - &reference).norm() / reference.norm()).unwrap();
    assert!(rel < 1e-5, "relative difference {rel}");
}

#[test]
fn compress_then_error_feedback_in_place_leaves_exactly_the_unsent_part() {
    tch::manual_seed(2);
    let mut x = Tensor::randn([64, 4096], (Kind::Float, Device::Cpu));
    let original = x.copy();
    let mut c = Compressor::new(CompressorConfig::sparseloco(), &[64, 4096]).unwrap();
    let sent = with_f32("x", &x, |s| c.compress(s)).unwrap().unwrap();
    // What a receiver decodes is exactly what the sender subtracts.
    assert_eq!(c.decode_sparse(&sent.bytes).unwrap(), sent.sent);
    with_f32_mut("x", &mut x, |s| c.subtract_sent(s, &sent.sent)).unwrap().unwrap();
    let received = Tensor::from_slice(&c.decompress(&sent.bytes).unwrap()).reshape([64, 4096]);
    // residual + received reconstructs the original (up to f32 rounding of one subtraction).
    let rebuilt = &x + &received;
    let max_err = f64::try_from((&rebuilt - &original).abs().max()).unwrap();
    assert!(max_err < 1e-6, "max error {max_err}");
    // The sent positions changed, the others did not.
    let changed = i64::try_from(x.ne_tensor(&original).sum(Kind::Int64)).unwrap();
    assert!(changed > 0 && changed as usize <= sent.sent.len());
}
