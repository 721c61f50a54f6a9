// Shared definitions for Meridian's CUDA kernels. NVRTC compiles this file in front of
// every kernel source (see kernels/src/cuda/source.rs), so it holds only device helpers:
// no kernels, nothing that needs a system header.
//
// Reproducibility rules every kernel follows (see the `cuda` module doc):
// - Programs are compiled with --fmad=false, and the transforms also spell their
//   arithmetic as __fmul_rn/__fadd_rn, so no multiply-add is ever contracted.
// - Every floating-point sum has one fixed order that does not depend on the launch
//   configuration or on scheduling. Atomics are used only on integers (histograms, bit
//   masks, error positions), where the result does not depend on their order.

typedef unsigned char u8;
typedef unsigned int u32;
typedef unsigned long long u64;

// Threads per block of every kernel that uses the block-wide helpers below.
#define MERIDIAN_THREADS 256
#define MERIDIAN_WARPS (MERIDIAN_THREADS / 32)
// Largest DCT tile (elements) a block holds in shared memory: 64 x 64.
#define MERIDIAN_MAX_TILE 4096
// Smallest non-finite magnitude: magnitude bits at or above it are infinity or NaN.
#define MERIDIAN_INF_BITS 0x7f800000u
// "No error": the value error slots start at; kernels lower it with atomicMin.
#define MERIDIAN_NO_ERROR 0xffffffffu

// Magnitude bits: for a finite float they order exactly like |v| (-0 and +0 both 0).
__device__ __forceinline__ u32 mag_bits(float v) { return __float_as_uint(v) & 0x7fffffffu; }

// Exclusive count of set flags in thread order across the block; `*total` gets the
// block's count. Every thread of the block must call it (it synchronizes).
__device__ __forceinline__ u32 block_exclusive_count(bool flag, u32* warp_totals, u32* total) {
    const u32 lane = threadIdx.x & 31u;
    const u32 warp = threadIdx.x >> 5;
    const u32 ballot = __ballot_sync(0xffffffffu, flag);
    const u32 in_warp = __popc(ballot & ((1u << lane) - 1u));
    if (lane == 0) {
        warp_totals[warp] = __popc(ballot);
    }
    __syncthreads();
    u32 before = 0;
    u32 sum = 0;
    const u32 warps = (blockDim.x + 31u) / 32u;
    for (u32 w = 0; w < warps; ++w) {
        const u32 c = warp_totals[w];
        before += (w < warp) ? c : 0u;
        sum += c;
    }
    __syncthreads();
    *total = sum;
    return before + in_warp;
}

// Shared state of one block's top-k selection.
struct SelectShared {
    u32 hist[256];
    u32 warp_totals[MERIDIAN_WARPS];
    u32 prefix;
    u32 remaining;
    u32 bad;
};

// Selects the k largest magnitudes of x[0..n) (1 <= k <= n) exactly as the CPU top-k does:
// ties go to the lower index, and the output is in increasing position. Writes positions
// (base + local) and values to out_idx/out_val [0..k). The threshold is found by a radix
// select over the 32 magnitude bits (four 8-bit digits, integer histograms only), then one
// ordered pass emits everything above it plus the first few equal to it.
//
// Returns the local position of the first non-finite value, or n when all are finite (then
// nothing is written). Every thread of the block must call it and gets the same result.
__device__ inline u32 block_topk(const float* x, u32 n, u32 k, u32 base, u32* out_idx,
                          float* out_val, SelectShared* s) {
    if (threadIdx.x == 0) {
        s->bad = n;
    }
    __syncthreads();
    for (u32 i = threadIdx.x; i < n; i += blockDim.x) {
        if (mag_bits(x[i]) >= MERIDIAN_INF_BITS) {
            atomicMin(&s->bad, i);
        }
    }
    __syncthreads();
    const u32 bad = s->bad;
    if (bad < n) {
        return bad;
    }
    u32 prefix = 0;
    u32 remaining = k;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (u32 b = threadIdx.x; b < 256u; b += blockDim.x) {
            s->hist[b] = 0;
        }
        __syncthreads();
        for (u32 i = threadIdx.x; i < n; i += blockDim.x) {
            const u32 m = mag_bits(x[i]);
            if (shift == 24 || (m >> (shift + 8)) == prefix) {
                atomicAdd(&s->hist[(m >> shift) & 255u], 1u);
            }
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            u32 above = 0;
            u32 b = 255;
            while (b > 0 && above + s->hist[b] < remaining) {
                above += s->hist[b];
                --b;
            }
            s->prefix = (prefix << 8) | b;
            s->remaining = remaining - above;
        }
        __syncthreads();
        prefix = s->prefix;
        remaining = s->remaining;
        __syncthreads();
    }
    // `prefix` is now the k-th largest magnitude t; `remaining` of the values equal to t
    // are kept, the first ones in index order.
    const u32 t = prefix;
    u32 eq_seen = 0;
    u32 written = 0;
    for (u32 start = 0; start < n && written < k; start += blockDim.x) {
        const u32 i = start + threadIdx.x;
        const bool in = i < n;
        const float v = in ? x[i] : 0.0f;
        const u32 m = mag_bits(v);
        const bool eq = in && m == t;
        u32 total;
        const u32 eq_rank = eq_seen + block_exclusive_count(eq, s->warp_totals, &total);
        eq_seen += total;
        const bool keep = in && (m > t || (eq && eq_rank < remaining));
        const u32 pos = written + block_exclusive_count(keep, s->warp_totals, &total);
        written += total;
        if (keep) {
            out_idx[pos] = base + i;
            out_val[pos] = v;
        }
    }
    return n;
}

// Writes `width` bits of `value` at bit `bit` of an LSB-first stream held as u32 words
// (little-endian, so the words' bytes are the stream's bytes). Bits of different values
// never overlap, so the atomic ORs give the same words in any order.
__device__ __forceinline__ void put_bits(u32* words, u64 bit, u32 value, u32 width) {
    const u64 word = bit >> 5;
    const u32 shift = (u32)(bit & 31u);
    atomicOr(&words[word], value << shift);
    if (shift != 0 && shift + width > 32u) {
        atomicOr(&words[word + 1], value >> (32u - shift));
    }
}

// Reads `width` (1..=32) bits at bit `bit` of an LSB-first byte stream of `nbytes` bytes.
__device__ __forceinline__ u32 get_bits(const u8* bytes, u64 nbytes, u64 bit, u32 width) {
    const u64 first = bit >> 3;
    const u32 shift = (u32)(bit & 7u);
    u64 acc = 0;
    for (u32 b = 0; b < 5u; ++b) {
        const u64 at = first + b;
        if (at < nbytes) {
            acc |= (u64)bytes[at] << (8u * b);
        }
    }
    const u64 mask = (width >= 32u) ? 0xffffffffull : ((1ull << width) - 1ull);
    return (u32)((acc >> shift) & mask);
}
