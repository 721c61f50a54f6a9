// Blockwise quantization and dequantization (kernels/src/quant): absmax at 8/4/2 bits, sign
// with a mean-magnitude scale at 1 bit, the 2^b-entry codebook, and sign plus Lloyd-Max
// magnitude levels (one thread per sign, the CPU's passes in its order). One CUDA block per
// quantization block. Statistics whose value depends on summation order (sums, means,
// variances, bin means) are accumulated by one thread in element order in double, exactly
// as on the CPU; order-free ones (max |x|) are reduced in parallel, min and max in element
// order by the same thread (the first of equal extremes, so a zero's sign, is kept). Codes are
// computed per element with the CPU's double-precision formulas, so codes and parameters
// are bit-identical to the CPU's.

#define SCHEME_ABSMAX 0u
#define SCHEME_CODEBOOK 1u
#define SCHEME_SIGN_LLOYD 2u
// kernels/src/quant/sign_lloyd.rs: MAX_ITERATIONS, and the most magnitude levels per sign.
#define SIGN_LLOYD_MAX_ITERATIONS 16u
#define SIGN_LLOYD_MAX_LEVELS 128u

// The (i+1)-th output of SplitMix64 seeded with `seed`: element i's draw in kernels/src/rng.rs.
__device__ __forceinline__ u64 splitmix_at(u64 seed, u64 i) {
    u64 z = seed + (i + 1ull) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

__device__ __forceinline__ double unit_draw(u64 seed, u64 i) {
    return (double)((float)(splitmix_at(seed, i) >> 40) * (1.0f / 16777216.0f));
}

// `v` raised to `floor`, `v` itself when they compare equal (either zero): the CPU's at_least.
__device__ __forceinline__ double at_least(double v, double floor) { return v < floor ? floor : v; }

// `v` lowered to `ceiling`, `v` itself when they compare equal: the CPU's at_most.
__device__ __forceinline__ double at_most(double v, double ceiling) {
    return v > ceiling ? ceiling : v;
}

// Whether x has the sign `negative` (-0 counts as non-negative): sign_lloyd.rs's on_side.
__device__ __forceinline__ bool on_side(float x, bool negative) { return (x < 0.0f) == negative; }

// Number of the sorted thresholds t[0..n) that are <= a: sign_lloyd.rs's cell_of.
__device__ __forceinline__ u32 cell_of(const double* t, u32 n, double a) {
    u32 lo = 0;
    u32 hi = n;
    while (lo < hi) {
        const u32 mid = (lo + hi) / 2u;
        if (t[mid] <= a) {
            lo = mid + 1u;
        } else {
            hi = mid;
        }
    }
    return lo;
}

// sign_lloyd.rs's fit_side, step for step: fits one sign's m magnitude levels of
// x[0..len) into levels[0..m) and writes the codes of that sign's values.
__device__ void fit_side(const float* x, u32 len, bool negative, u32 m, u8* code,
                         double* levels) {
    double thresholds[SIGN_LLOYD_MAX_LEVELS];
    double sums[SIGN_LLOYD_MAX_LEVELS];
    u32 counts[SIGN_LLOYD_MAX_LEVELS];
    double mn = 0.0;
    double mx = 0.0;
    bool any = false;
    for (u32 i = 0; i < len; ++i) {
        if (!on_side(x[i], negative)) continue;
        const double a = (double)fabsf(x[i]);
        if (!any || a < mn) mn = a;
        if (!any || a > mx) mx = a;
        any = true;
    }
    // 1. Split every cell at its mean, log2(m) times.
    u32 cells = 1;
    while (cells < m) {
        for (u32 j = 0; j < cells; ++j) {
            sums[j] = 0.0;
            counts[j] = 0;
        }
        for (u32 i = 0; i < len; ++i) {
            if (!on_side(x[i], negative)) continue;
            const double a = (double)fabsf(x[i]);
            const u32 j = cell_of(thresholds, cells - 1u, a);
            sums[j] += a;
            counts[j] += 1u;
        }
        for (u32 jj = cells; jj-- > 0;) {
            const double lower = jj == 0 ? 0.0 : thresholds[jj - 1u];
            double split = lower;
            if (counts[jj] > 0) {
                split = at_least(sums[jj] / (double)counts[jj], lower);
                if (jj + 1u < cells) split = at_most(split, thresholds[jj]);
            }
            if (jj + 1u < cells) thresholds[2u * jj + 1u] = thresholds[jj];
            thresholds[2u * jj] = split;
        }
        cells *= 2u;
    }
    // 2. Lloyd-Max: assign, average, move the thresholds to the midpoints.
    for (u32 it = 0; it < SIGN_LLOYD_MAX_ITERATIONS; ++it) {
        for (u32 j = 0; j < m; ++j) {
            sums[j] = 0.0;
            counts[j] = 0;
        }
        bool changed = false;
        for (u32 i = 0; i < len; ++i) {
            if (!on_side(x[i], negative)) continue;
            const double a = (double)fabsf(x[i]);
            const u32 j = cell_of(thresholds, m - 1u, a);
            sums[j] += a;
            counts[j] += 1u;
            const u8 c = (u8)(negative ? m - 1u - j : m + j);
            changed = changed || code[i] != c;
            code[i] = c;
        }
        if (it > 0 && !changed) break;
        for (u32 j = 0; j < m; ++j) {
            const double lower = j == 0 ? 0.0 : thresholds[j - 1u];
            double level = lower;
            if (counts[j] > 0) {
                level = at_least(sums[j] / (double)counts[j], lower);
                if (j + 1u < m) level = at_most(level, thresholds[j]);
            }
            levels[j] = level;
        }
        for (u32 j = 0; j + 1u < m; ++j) {
            thresholds[j] = (levels[j] + levels[j + 1u]) / 2.0;
        }
    }
    // 3. Inside the data's range.
    if (any) {
        for (u32 j = 0; j < m; ++j) levels[j] = at_most(at_least(levels[j], mn), mx);
    }
}

// Quantizes vals[0..n) in blocks of `block`. Writes per block its parameters (1 scale, or
// 2^bits codebook entries) to params, one code per value (unpacked) to codes, and the
// value each code decodes to into deq. Launch: grid = ceil(n / block), block =
// MERIDIAN_THREADS.
extern "C" __global__ void quantize_blocks(const float* __restrict__ vals, u32 n, u32 block,
                                           u32 bits, u32 scheme, float clip_sigmas,
                                           u32 stochastic, u64 seed, float* __restrict__ params,
                                           u8* __restrict__ codes, float* __restrict__ deq) {
    __shared__ u32 s_absmax;
    __shared__ u32 s_min_key;
    __shared__ u32 s_max_key;
    __shared__ float s_scale;
    __shared__ double s_lo;
    __shared__ double s_w;
    __shared__ u32 s_degenerate;
    __shared__ float s_entries[256];
    const u64 start = (u64)blockIdx.x * block;
    const u32 len = (u32)min((u64)block, (u64)n - start);
    const float* x = vals + start;
    u8* code = codes + start;
    float* out = deq + start;
    const u32 levels = 1u << bits;

    if (scheme == SCHEME_ABSMAX) {
        if (threadIdx.x == 0) {
            s_absmax = 0;
        }
        __syncthreads();
        for (u32 i = threadIdx.x; i < len; i += blockDim.x) {
            atomicMax(&s_absmax, mag_bits(x[i]));
        }
        __syncthreads();
        const float absmax = __uint_as_float(s_absmax);
        if (bits == 1u) {
            if (threadIdx.x == 0) {
                float scale = absmax;
                if (!stochastic) {
                    double sum = 0.0;
                    for (u32 i = 0; i < len; ++i) {
                        sum += (double)fabsf(x[i]);
                    }
                    scale = (float)(sum / (double)len);
                }
                s_scale = scale;
                params[blockIdx.x] = scale;
            }
            __syncthreads();
            const float scale = s_scale;
            for (u32 i = threadIdx.x; i < len; i += blockDim.x) {
                bool positive;
                if (stochastic) {
                    const double u = unit_draw(seed, start + i);
                    positive = scale == 0.0f ||
                               u < ((double)x[i] / (double)scale + 1.0) / 2.0;
                } else {
                    positive = x[i] >= 0.0f;
                }
                code[i] = positive ? 1 : 0;
                out[i] = positive ? scale : -scale;
            }
            return;
        }
        const float h = (float)(levels - 1u) / 2.0f;
        if (threadIdx.x == 0) {
            float s = (float)((double)absmax / (double)h);
            while (s > 0.0f && mag_bits(__fmul_rn(s, h)) >= MERIDIAN_INF_BITS) {
                s = __uint_as_float(__float_as_uint(s) - 1u);
            }
            s_scale = s;
            params[blockIdx.x] = s;
        }
        __syncthreads();
        const float s = s_scale;
        const double top = (double)(levels - 1u);
        for (u32 i = threadIdx.x; i < len; i += blockDim.x) {
            u32 q;
            if (s == 0.0f) {
                q = 1u << (bits - 1u);
            } else {
                const double t = (double)x[i] / (double)s + (double)h;
                double r;
                if (stochastic) {
                    const double lower = floor(t);
                    const double u = unit_draw(seed, start + i);
                    r = (u < t - lower) ? lower + 1.0 : lower;
                } else {
                    r = round(t);
                }
                q = (u32)fmin(fmax(r, 0.0), top);
            }
            code[i] = (u8)q;
            out[i] = __fmul_rn(__fsub_rn((float)q, h), s);
        }
        return;
    }

    if (scheme == SCHEME_SIGN_LLOYD) {
        __shared__ double s_levels[2][SIGN_LLOYD_MAX_LEVELS];
        const u32 m = levels >> 1;
        // One thread per sign; each writes only the codes of its sign's values.
        for (u32 side = threadIdx.x; side < 2u; side += blockDim.x) {
            fit_side(x, len, side == 0u, m, code, s_levels[side]);
        }
        __syncthreads();
        float* entries_out = params + (u64)blockIdx.x * levels;
        for (u32 j = threadIdx.x; j < levels; j += blockDim.x) {
            const float e = j < m ? (float)(-s_levels[0][m - 1u - j]) : (float)s_levels[1][j - m];
            s_entries[j] = e;
            entries_out[j] = e;
        }
        __syncthreads();
        for (u32 i = threadIdx.x; i < len; i += blockDim.x) {
            out[i] = s_entries[code[i]];
        }
        return;
    }

    // Codebook.
    if (threadIdx.x == 0) {
        double sum = 0.0;
        float mn = x[0];
        float mx = x[0];
        for (u32 i = 0; i < len; ++i) {
            sum += (double)x[i];
            // Plain comparisons: fminf/fmaxf may return either zero of min(+0, -0); the
            // first of equal extremes wins, as on the CPU.
            if (x[i] < mn) mn = x[i];
            if (x[i] > mx) mx = x[i];
        }
        const double count = (double)len;
        const double mean = sum / count;
        double var = 0.0;
        for (u32 i = 0; i < len; ++i) {
            const double d = (double)x[i] - mean;
            var += d * d;
        }
        var = var / count;
        const double sd = sqrt(var);
        const double c = (double)clip_sigmas;
        s_lo = mean - c * sd;
        s_w = 2.0 * c * sd / (double)levels;
        s_degenerate = !(sd > 0.0 && s_w > 0.0);
        s_min_key = __float_as_uint(mn);
        s_max_key = __float_as_uint(mx);
    }
    __syncthreads();
    const float mn = __uint_as_float(s_min_key);
    const float mx = __uint_as_float(s_max_key);
    float* entries_out = params + (u64)blockIdx.x * levels;
    if (s_degenerate) {
        for (u32 j = threadIdx.x; j < levels; j += blockDim.x) {
            entries_out[j] = mn;
        }
        for (u32 i = threadIdx.x; i < len; i += blockDim.x) {
            code[i] = 0;
            out[i] = mn;
        }
        return;
    }
    const double lo = s_lo;
    const double w = s_w;
    const double last = (double)(levels - 1u);
    for (u32 i = threadIdx.x; i < len; i += blockDim.x) {
        const double t = ((double)x[i] - lo) / w;
        const u32 j = (t < 1.0) ? 0u : (t >= last) ? levels - 1u : (u32)t;
        code[i] = (u8)j;
    }
    __syncthreads();
    // One thread per bin sums its members in element order, as the CPU's single pass does.
    for (u32 j = threadIdx.x; j < levels; j += blockDim.x) {
        double sum = 0.0;
        u64 count = 0;
        for (u32 i = 0; i < len; ++i) {
            if (code[i] == j) {
                sum += (double)x[i];
                ++count;
            }
        }
        const double left = lo + (double)j * w;
        const double right = lo + (double)(j + 1u) * w;
        double entry;
        if (count > 0) {
            entry = at_most(at_least(at_most(at_least(sum / (double)count, left), right),
                                     (double)mn),
                            (double)mx);
        } else {
            entry = at_most(at_least(lo + ((double)j + 0.5) * w, (double)mn), (double)mx);
        }
        const float e = (float)entry;
        s_entries[j] = e;
        entries_out[j] = e;
    }
    __syncthreads();
    for (u32 i = threadIdx.x; i < len; i += blockDim.x) {
        out[i] = s_entries[code[i]];
    }
}

// Packs one-per-byte codes into ceil(n * bits / 8) bytes, first code in the low bits.
// Launch: one thread per output byte.
extern "C" __global__ void pack_codes(const u8* __restrict__ codes, u32 n, u32 bits,
                                      u8* __restrict__ packed) {
    const u32 per = 8u / bits;
    const u32 byte = blockIdx.x * blockDim.x + threadIdx.x;
    const u64 first = (u64)byte * per;
    if (first >= n) {
        return;
    }
    const u32 mask = (1u << bits) - 1u;
    u32 acc = 0;
    for (u32 j = 0; j < per && first + j < n; ++j) {
        acc |= ((u32)codes[first + j] & mask) << (j * bits);
    }
    packed[byte] = (u8)acc;
}

// Decodes n packed codes with their block parameters (a validated payload) into out.
// Launch: one thread per value.
extern "C" __global__ void dequantize(const u8* __restrict__ packed, const float* __restrict__ params,
                                      u32 n, u32 block, u32 bits, u32 scheme,
                                      float* __restrict__ out) {
    const u32 i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) {
        return;
    }
    const u32 per = 8u / bits;
    const u32 code = ((u32)packed[i / per] >> ((i % per) * bits)) & ((1u << bits) - 1u);
    const u32 b = i / block;
    if (scheme == SCHEME_CODEBOOK || scheme == SCHEME_SIGN_LLOYD) {
        out[i] = params[(u64)b * (1u << bits) + code];
    } else if (bits == 1u) {
        out[i] = code ? params[b] : -params[b];
    } else {
        const float h = (float)((1u << bits) - 1u) / 2.0f;
        out[i] = __fmul_rn(__fsub_rn((float)code, h), params[b]);
    }
}
