// Error feedback, elementwise; each element's arithmetic is the CPU's (kernels/src/feedback.rs).

// buffer[idx[i]] -= val[i] for a selection with distinct indices (validated by the caller).
extern "C" __global__ void subtract_sent(float* __restrict__ buffer, const u32* __restrict__ idx,
                                         const float* __restrict__ val, u32 count) {
    const u32 i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < count) {
        const u32 at = idx[i];
        buffer[at] = __fsub_rn(buffer[at], val[i]);
    }
}

// buffer[i] -= reconstructed[i].
extern "C" __global__ void subtract_dense(float* __restrict__ buffer,
                                          const float* __restrict__ reconstructed, u32 n) {
    const u32 i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        buffer[i] = __fsub_rn(buffer[i], reconstructed[i]);
    }
}

// error[i] = decay * error[i] + update[i], one fused multiply-add as the CPU's mul_add.
extern "C" __global__ void accumulate(float* __restrict__ error, float decay,
                                      const float* __restrict__ update, u32 n) {
    const u32 i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        error[i] = fmaf(decay, error[i], update[i]);
    }
}

// Lowers *bad to the smallest i with x[i] not finite.
extern "C" __global__ void first_non_finite(const float* __restrict__ x, u32 n, u32* bad) {
    const u32 i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n && mag_bits(x[i]) >= MERIDIAN_INF_BITS) {
        atomicMin(bad, i);
    }
}
