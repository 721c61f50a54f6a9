// Canonical scatter-mean (kernels/src/aggregate.rs): every coordinate's sum starts at +0.0
// and adds the contributions in ascending worker id, then is divided once. The host
// launches scatter_add once per contribution in that order on one stream; within one
// contribution the indices are distinct, so no two threads touch the same coordinate and
// no atomics are needed. The result is bit-identical to the CPU, run after run.

// out[idx[i]] += val[i]; counts[idx[i]] += 1 (counts may be null).
extern "C" __global__ void scatter_add(const u32* __restrict__ idx, const float* __restrict__ val,
                                       u32 count, float* __restrict__ out, u32* __restrict__ counts) {
    const u32 i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < count) {
        const u32 at = idx[i];
        out[at] = __fadd_rn(out[at], val[i]);
        if (counts != 0) {
            counts[at] += 1u;
        }
    }
}

// Divides each coordinate by its contributor count (counts != null) or by `workers`, only
// when the divisor exceeds 1 (as the CPU does), and lowers *bad to the first non-finite
// result (a sum that overflowed).
extern "C" __global__ void mean_finish(float* __restrict__ out, const u32* __restrict__ counts,
                                       u32 workers, u32 len, u32* bad) {
    const u32 i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= len) {
        return;
    }
    const u32 d = (counts != 0) ? counts[i] : workers;
    float v = out[i];
    if (d > 1u) {
        v = __fdiv_rn(v, (float)d);
        out[i] = v;
    }
    if (mag_bits(v) >= MERIDIAN_INF_BITS) {
        atomicMin(bad, i);
    }
}
