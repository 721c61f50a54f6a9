// Chunked orthonormal DCT-II and its inverse over tiles, one block per tile, the tile in
// shared memory; the arithmetic is dct.cuh's (the CPU's, bit for bit).

// Shared tile: up to 64 rows of an odd stride of at most 65.
#define MERIDIAN_TILE_SMEM (64 * 65)

// coeffs[t * tile ..] = DCT of tile t of x. Launch: grid = tiles, block = MERIDIAN_THREADS.
extern "C" __global__ void dct_forward_tiles(const float* __restrict__ x, TileGeometry g,
                                             DimDev rd, DimDev cd,
                                             float* __restrict__ coeffs) {
    __shared__ float tile[MERIDIAN_TILE_SMEM];
    const u32 t = blockIdx.x;
    const u32 ld = tile_ld(g);
    load_tile(x, g, t, tile, ld);
    tile_transform(tile, ld, g, rd, cd, false);
    float* dst = coeffs + (u64)t * g.rc * g.cc;
    for (u32 o = threadIdx.x; o < g.rc * g.cc; o += blockDim.x) {
        dst[o] = tile[(o / g.cc) * ld + o % g.cc];
    }
}

// out = inverse DCT of every tile of coeffs, padded positions dropped. Launch as above.
extern "C" __global__ void dct_inverse_tiles(const float* __restrict__ coeffs, TileGeometry g,
                                             DimDev rd, DimDev cd, float* __restrict__ out) {
    __shared__ float tile[MERIDIAN_TILE_SMEM];
    const u32 t = blockIdx.x;
    const u32 ld = tile_ld(g);
    const float* src = coeffs + (u64)t * g.rc * g.cc;
    for (u32 o = threadIdx.x; o < g.rc * g.cc; o += blockDim.x) {
        tile[(o / g.cc) * ld + o % g.cc] = src[o];
    }
    __syncthreads();
    tile_transform(tile, ld, g, rd, cd, true);
    store_tile(out, g, t, tile, ld);
}
