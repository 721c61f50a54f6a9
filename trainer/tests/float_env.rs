//! Flush-to-zero reaches LibTorch's worker threads when set before they start. A test
//! binary of its own, so that no earlier test has started LibTorch's thread pool.

#[test]
fn subnormals_become_zero_on_every_libtorch_thread() {
    let tiny = || tch::Tensor::full([1 << 22], 1e-39, (tch::Kind::Float, tch::Device::Cpu));
    if !meridian_trainer::float_env::flush_denormals() {
        println!("skipped: flush-to-zero is only set on x86-64");
        return;
    }
    // Two threads: LibTorch splits this element-wise product between them.
    tch::set_num_threads(2);
    let max = (tiny() * 1.0).abs().max().double_value(&[]);
    assert_eq!(max, 0.0, "every element flushed, whichever thread computed it");
    let nonzero = (tiny() * 1.0).count_nonzero(None::<i64>).int64_value(&[]);
    assert_eq!(nonzero, 0);
}
