// The fused compress: one block per tile (DCT) or chunk (no transform) reads its input once,
// transforms it in shared memory, selects its top k, writes the kept positions and values
// and packs the positions into the index stream. Quantization of the kept values follows in
// quant.cu's kernels: its blocks (e.g. 4096 values) span many tiles, so it cannot finish
// inside one tile's block, and it reads only the ~1-3 % of values that were kept.

// DCT path. Tile t keeps k entries (k <= its length) at out[t * k ..]; positions are global
// coefficient positions. fixed != 0 packs chunk-local offsets at `width` bits, otherwise a
// bitmap over all coefficients. `bad` is lowered to the first non-finite coefficient.
// Launch: grid = tiles, block = MERIDIAN_THREADS, words zeroed.
extern "C" __global__ void compress_dct(const float* __restrict__ x, TileGeometry g, DimDev rd,
                                        DimDev cd, u32 k, u32 fixed, u32 width,
                                        u32* __restrict__ out_idx, float* __restrict__ out_val,
                                        u32* __restrict__ words, u32* bad) {
    __shared__ float tile[64 * 65];
    __shared__ float coef[MERIDIAN_MAX_TILE];
    __shared__ SelectShared s;
    const u32 t = blockIdx.x;
    const u32 n = g.rc * g.cc;
    const u32 ld = tile_ld(g);
    load_tile(x, g, t, tile, ld);
    tile_transform(tile, ld, g, rd, cd, false);
    for (u32 o = threadIdx.x; o < n; o += blockDim.x) {
        coef[o] = tile[(o / g.cc) * ld + o % g.cc];
    }
    __syncthreads();
    u32* my_idx = out_idx + (u64)t * k;
    float* my_val = out_val + (u64)t * k;
    const u32 first_bad = block_topk(coef, n, k, t * n, my_idx, my_val, &s);
    if (first_bad < n) {
        if (threadIdx.x == 0) {
            atomicMin(bad, t * n + first_bad);
        }
        return;
    }
    __syncthreads();
    for (u32 e = threadIdx.x; e < k; e += blockDim.x) {
        const u32 i = my_idx[e];
        if (fixed) {
            put_bits(words, ((u64)t * k + e) * width, i - t * n, width);
        } else {
            atomicOr(&words[i >> 5], 1u << (i & 31u));
        }
    }
}

// No transform: chunk c of x keeps k entries (k_last if short) at out[c * k ..], packed as
// in compress_dct. Launch: grid = chunks, block = MERIDIAN_THREADS, words zeroed.
extern "C" __global__ void compress_chunks(const float* __restrict__ x, u32 len, u32 chunk_len,
                                           u32 k, u32 k_last, u32 fixed, u32 width,
                                           u32* __restrict__ out_idx,
                                           float* __restrict__ out_val,
                                           u32* __restrict__ words, u32* bad) {
    __shared__ SelectShared s;
    const u32 c = blockIdx.x;
    const u32 start = c * chunk_len;
    const u32 n = min(chunk_len, len - start);
    const u32 kc = (n < chunk_len) ? k_last : k;
    u32* my_idx = out_idx + (u64)c * k;
    float* my_val = out_val + (u64)c * k;
    const u32 first_bad = block_topk(x + start, n, kc, start, my_idx, my_val, &s);
    if (first_bad < n) {
        if (threadIdx.x == 0) {
            atomicMin(bad, start + first_bad);
        }
        return;
    }
    __syncthreads();
    for (u32 e = threadIdx.x; e < kc; e += blockDim.x) {
        const u32 i = my_idx[e];
        if (fixed) {
            put_bits(words, ((u64)c * k + e) * width, i - start, width);
        } else {
            atomicOr(&words[i >> 5], 1u << (i & 31u));
        }
    }
}
