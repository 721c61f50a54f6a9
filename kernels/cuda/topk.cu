// Per-chunk top-k by magnitude, one block per chunk: the CPU's semantics exactly (ties to
// the lower index, output in increasing position), so index sets are identical.

// Chunk c of x (chunk_len elements, the last one possibly short) keeps k entries (k_last
// for a short last chunk); its output starts at c * k. `bad` receives the smallest
// position of a non-finite value (it must start at MERIDIAN_NO_ERROR). Launch: grid =
// number of chunks, block = MERIDIAN_THREADS.
extern "C" __global__ void topk_chunks(const float* __restrict__ x, u32 len, u32 chunk_len,
                                       u32 k, u32 k_last, u32* __restrict__ out_idx,
                                       float* __restrict__ out_val, u32* bad) {
    __shared__ SelectShared s;
    const u32 c = blockIdx.x;
    const u32 start = c * chunk_len;
    const u32 n = min(chunk_len, len - start);
    const u32 kc = (n < chunk_len) ? k_last : k;
    const u32 first_bad =
        block_topk(x + start, n, kc, start, out_idx + (u64)c * k, out_val + (u64)c * k, &s);
    if (first_bad < n && threadIdx.x == 0) {
        atomicMin(bad, start + first_bad);
    }
}
