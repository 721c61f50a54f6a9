// Chunked orthonormal DCT-II and its inverse over 2-D tiles (1-D: one-row tiles), one
// block per tile, the tile in shared memory. Same chunking and tile-major coefficient
// layout as kernels/src/dct.rs; the arithmetic order is documented in prelude.cuh.

// coeffs[t * tile + ...] = DCT of tile t of x. Launch: grid = number of tiles,
// block = MERIDIAN_THREADS.
extern "C" __global__ void dct_forward_tiles(const float* __restrict__ x, TileGeometry g,
                                             const float* __restrict__ cr,
                                             const float* __restrict__ cct,
                                             float* __restrict__ coeffs) {
    __shared__ float tile[MERIDIAN_MAX_TILE];
    __shared__ float tmp[MERIDIAN_MAX_TILE];
    const u32 t = blockIdx.x;
    const u32 n = g.rc * g.cc;
    load_tile(x, g, t, tile);
    tile_dct_forward(tile, tmp, tile, g.rc, g.cc, cr, cct);
    float* dst = coeffs + (u64)t * n;
    for (u32 o = threadIdx.x; o < n; o += blockDim.x) {
        dst[o] = tile[o];
    }
}

// out = inverse DCT of every tile of coeffs, padded positions dropped. Launch as above.
extern "C" __global__ void dct_inverse_tiles(const float* __restrict__ coeffs, TileGeometry g,
                                             const float* __restrict__ crt,
                                             const float* __restrict__ ccm,
                                             float* __restrict__ out) {
    __shared__ float tile[MERIDIAN_MAX_TILE];
    __shared__ float tmp[MERIDIAN_MAX_TILE];
    const u32 t = blockIdx.x;
    const u32 n = g.rc * g.cc;
    const float* src = coeffs + (u64)t * n;
    for (u32 o = threadIdx.x; o < n; o += blockDim.x) {
        tile[o] = src[o];
    }
    __syncthreads();
    tile_dct_inverse(tile, tmp, tile, g.rc, g.cc, crt, ccm);
    store_tile(out, g, t, tile);
}
