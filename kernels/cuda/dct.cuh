// The chunked DCT of kernels/src/dct.rs, operation for operation, so that the GPU produces
// the CPU's bits. Every line (a chunk of a row or a column of a tile) is transformed by
// either the O(n log n) factorization (`FastDct` in dct.rs; power-of-two chunks from 4 to
// 64 here) or the dense product with the basis, chosen per dimension exactly as the CPU
// chooses; the two dimensions of a tile run in the CPU's order for that combination. The
// CPU vectorizes across lines only (one line per lane, never a reduction across lanes), so
// its per-line arithmetic is the scalar sequence written here. All arithmetic is spelled
// as rounded multiplies and adds (__fmul_rn, __fadd_rn, __fsub_rn), never contracted.
//
// The tables (gather permutation, twiddles, post-processing constants, bases) are the
// CPU's own f32 values, computed on the host and passed in (see DimDev).
//
// Only per-thread code and the block-level tile loops live here, with no warp intrinsic or
// atomic, so that this file also compiles as plain C++ for the host-side bit-exactness
// test (kernels/src/cuda/tests.rs).

// Longest line a thread transforms (its work arrays live in registers / local memory).
#define MERIDIAN_MAX_LINE 64

// One dimension's transform as the kernels take it.
struct DimDev {
    // Fast path: FFT input value r is point gather[r] of the line (n entries).
    const u32* gather;
    // Fast path: [s0, mid.re, mid.im, tw4 (6 per), tw2 (2 per), last_tw (2 per),
    // pairs (6 per)], in dct.rs's order.
    const float* tab;
    // Dense path: the basis C, n x n row-major.
    const float* c;
    // Points per line.
    u32 n;
    // Nonzero when the CPU takes the fast path for this length.
    u32 fast;
};

struct Cx {
    float re;
    float im;
};

__device__ __forceinline__ Cx cx(float re, float im) {
    Cx z;
    z.re = re;
    z.im = im;
    return z;
}
__device__ __forceinline__ Cx cx_add(Cx a, Cx b) {
    return cx(__fadd_rn(a.re, b.re), __fadd_rn(a.im, b.im));
}
__device__ __forceinline__ Cx cx_sub(Cx a, Cx b) {
    return cx(__fsub_rn(a.re, b.re), __fsub_rn(a.im, b.im));
}
// c0*a + c1*b, in that order.
__device__ __forceinline__ float dot2(float c0, float a, float c1, float b) {
    return __fadd_rn(__fmul_rn(c0, a), __fmul_rn(c1, b));
}
// c0*a - c1*b, in that order.
__device__ __forceinline__ float cross2(float c0, float a, float c1, float b) {
    return __fsub_rn(__fmul_rn(c0, a), __fmul_rn(c1, b));
}
// w*x for a constant w = (wr, wi).
__device__ __forceinline__ Cx cx_mul(float wr, float wi, Cx x) {
    return cx(cross2(wr, x.re, wi, x.im), dot2(wr, x.im, wi, x.re));
}
// conj(w)*x.
__device__ __forceinline__ Cx cx_mul_conj(float wr, float wi, Cx x) {
    return cx(dot2(wr, x.re, wi, x.im), cross2(wr, x.im, wi, x.re));
}
__device__ __forceinline__ Cx wget(const float* w, u32 p) { return cx(w[2 * p], w[2 * p + 1]); }
__device__ __forceinline__ void wset(float* w, u32 p, Cx z) {
    w[2 * p] = z.re;
    w[2 * p + 1] = z.im;
}

__device__ __forceinline__ void radix4(Cx* y) {
    const Cx a0 = cx_add(y[0], y[1]);
    const Cx a1 = cx_sub(y[0], y[1]);
    const Cx p = cx_add(y[2], y[3]);
    const Cx q = cx_sub(y[2], y[3]);
    y[0] = cx_add(a0, p);
    y[1] = cx(__fadd_rn(a1.re, q.im), __fsub_rn(a1.im, q.re));
    y[2] = cx_sub(a0, p);
    y[3] = cx(__fsub_rn(a1.re, q.im), __fadd_rn(a1.im, q.re));
}

__device__ __forceinline__ void radix4_transposed(Cx* z) {
    const Cx a0 = cx_add(z[0], z[2]);
    const Cx p = cx_sub(z[0], z[2]);
    const Cx a1 = cx_add(z[1], z[3]);
    const Cx d = cx_sub(z[1], z[3]);
    const Cx q = cx(-d.im, d.re);
    z[0] = cx_add(a0, a1);
    z[1] = cx_sub(a0, a1);
    z[2] = cx_add(p, q);
    z[3] = cx_sub(p, q);
}

// Half-span of the first middle stage (FastDct::first_span).
__device__ __forceinline__ u32 first_span(u32 m) { return m <= 2 ? 1u : (m == 4 ? 2u : 4u); }

// Offsets into DimDev::tab.
struct FastLayout {
    u32 tw4;
    u32 tw2;
    u32 last_tw;
    u32 pairs;
};

__device__ __forceinline__ FastLayout fast_layout(u32 n) {
    const u32 h_last = n / 4;
    u32 n4 = 0;
    u32 n2 = 0;
    for (u32 h = first_span(n / 2); h < h_last;) {
        if (4 * h <= h_last) {
            n4 += h;
            h *= 4;
        } else {
            n2 += h;
            h *= 2;
        }
    }
    FastLayout l;
    l.tw4 = 3;
    l.tw2 = 3 + 6 * n4;
    l.last_tw = l.tw2 + 2 * n2;
    l.pairs = l.last_tw + 2 * h_last;
    return l;
}

// post_pair of dct.rs: X[k], X[n-k], X[m-k], X[m+k] from A = Z[k], B = Z[m-k].
__device__ __forceinline__ void post_pair(u32 n, u32 k, const float* c, Cx a, Cx b, float* line,
                                          u32 stride) {
    const u32 m = n / 2;
    const float ck = c[0], sk = c[1], ck2 = c[2], sk2 = c[3], wr = c[4], wi = c[5];
    const Cx s = cx(__fadd_rn(a.re, b.re), __fsub_rn(a.im, b.im));
    const Cx d = cx(__fsub_rn(a.re, b.re), __fadd_rn(a.im, b.im));
    const Cx t = cx(dot2(wr, d.im, wi, d.re), cross2(wi, d.im, wr, d.re));
    const Cx p = cx_add(s, t);
    const Cx p2 = cx(__fsub_rn(s.re, t.re), __fsub_rn(t.im, s.im));
    line[k * stride] = dot2(ck, p.re, sk, p.im);
    line[(n - k) * stride] = cross2(sk, p.re, ck, p.im);
    line[(m - k) * stride] = dot2(ck2, p2.re, sk2, p2.im);
    line[(m + k) * stride] = cross2(sk2, p2.re, ck2, p2.im);
}

// post_pair_transposed of dct.rs: (A, B) from the four coefficients of pair k.
__device__ __forceinline__ void post_pair_transposed(u32 n, u32 k, const float* c,
                                                     const float* line, u32 stride, Cx* a,
                                                     Cx* b) {
    const u32 m = n / 2;
    const float ck = c[0], sk = c[1], ck2 = c[2], sk2 = c[3], wr = c[4], wi = c[5];
    const float xk = line[k * stride], xnk = line[(n - k) * stride];
    const float xk2 = line[(m - k) * stride], xnk2 = line[(m + k) * stride];
    const Cx p = cx(dot2(ck, xk, sk, xnk), cross2(sk, xk, ck, xnk));
    const Cx p2 = cx(dot2(ck2, xk2, sk2, xnk2), cross2(sk2, xk2, ck2, xnk2));
    const Cx s = cx(__fadd_rn(p.re, p2.re), __fsub_rn(p.im, p2.im));
    const Cx t = cx(__fsub_rn(p.re, p2.re), __fadd_rn(p.im, p2.im));
    const Cx d = cx(cross2(wi, t.re, wr, t.im), dot2(wr, t.re, wi, t.im));
    *a = cx(__fadd_rn(s.re, d.re), __fadd_rn(s.im, d.im));
    *b = cx(__fsub_rn(s.re, d.re), __fsub_rn(d.im, s.im));
}

// FastDct::forward_block for one line of d.n points at line[i * stride], in place.
__device__ __noinline__ void fast_line_forward(const DimDev& d, float* line, u32 stride) {
    const u32 n = d.n;
    const u32 m = n / 2;
    const u32 h = m / 2;
    const u32* g = d.gather;
    const float* tab = d.tab;
    const FastLayout lay = fast_layout(n);
    float w[MERIDIAN_MAX_LINE];
    // First pass: gather, and the stages below first_span.
    if (m == 2) {
        for (u32 p = 0; p < 2; ++p) {
            wset(w, p, cx(line[g[2 * p] * stride], line[g[2 * p + 1] * stride]));
        }
    } else if (m == 4) {
        for (u32 p = 0; p < m; p += 2) {
            const Cx a = cx(line[g[2 * p] * stride], line[g[2 * p + 1] * stride]);
            const Cx b = cx(line[g[2 * p + 2] * stride], line[g[2 * p + 3] * stride]);
            wset(w, p, cx_add(a, b));
            wset(w, p + 1, cx_sub(a, b));
        }
    } else {
        for (u32 p = 0; p < m; p += 4) {
            Cx y[4];
            for (u32 i = 0; i < 4; ++i) {
                y[i] = cx(line[g[2 * (p + i)] * stride], line[g[2 * (p + i) + 1] * stride]);
            }
            radix4(y);
            for (u32 i = 0; i < 4; ++i) {
                wset(w, p + i, y[i]);
            }
        }
    }
    // Middle passes.
    u32 o4 = 0;
    u32 o2 = 0;
    for (u32 hs = first_span(m); hs < h;) {
        if (4 * hs <= h) {
            for (u32 g0 = 0; g0 < m; g0 += 4 * hs) {
                for (u32 j = 0; j < hs; ++j) {
                    Cx y[4];
                    for (u32 i = 0; i < 4; ++i) {
                        y[i] = wget(w, g0 + j + i * hs);
                    }
                    if (j != 0) {
                        const float* t = tab + lay.tw4 + 6 * (o4 + j);
                        y[1] = cx_mul(t[0], t[1], y[1]);
                        y[2] = cx_mul(t[2], t[3], y[2]);
                        y[3] = cx_mul(t[4], t[5], y[3]);
                    }
                    radix4(y);
                    for (u32 i = 0; i < 4; ++i) {
                        wset(w, g0 + j + i * hs, y[i]);
                    }
                }
            }
            o4 += hs;
            hs *= 4;
        } else {
            for (u32 g0 = 0; g0 < m; g0 += 2 * hs) {
                for (u32 j = 0; j < hs; ++j) {
                    const Cx a = wget(w, g0 + j);
                    Cx b = wget(w, g0 + j + hs);
                    if (j != 0) {
                        const float* t = tab + lay.tw2 + 2 * (o2 + j);
                        b = cx_mul(t[0], t[1], b);
                    }
                    wset(w, g0 + j, cx_add(a, b));
                    wset(w, g0 + j + hs, cx_sub(a, b));
                }
            }
            o2 += hs;
            hs *= 2;
        }
    }
    // Last pass and post-processing, straight into the line.
    const float s0 = tab[0];
    const float mc = tab[1];
    const float ms = tab[2];
    {
        const Cx a = wget(w, 0);
        const Cx b = wget(w, h);
        const Cx z0 = cx_add(a, b);
        const Cx zh = cx_sub(a, b);
        line[0] = __fmul_rn(s0, __fadd_rn(z0.re, z0.im));
        line[m * stride] = __fmul_rn(s0, __fsub_rn(z0.re, z0.im));
        line[h * stride] = cross2(mc, zh.re, ms, zh.im);
        line[(n - h) * stride] = dot2(ms, zh.re, mc, zh.im);
    }
    if (h < 2) {
        return;
    }
    const float* tw = tab + lay.last_tw;
    const float* pairs = tab + lay.pairs;
    {
        const u32 j = h / 2;
        const Cx a = wget(w, j);
        const Cx b = wget(w, j + h);
        const Cx zj = cx(__fadd_rn(a.re, b.im), __fsub_rn(a.im, b.re));
        const Cx zjh = cx(__fsub_rn(a.re, b.im), __fadd_rn(a.im, b.re));
        post_pair(n, j, pairs + 6 * (j - 1), zj, zjh, line, stride);
    }
    for (u32 j = 1; j < h / 2; ++j) {
        const u32 jj = h - j;
        const Cx a = wget(w, j);
        const Cx b = cx_mul(tw[2 * j], tw[2 * j + 1], wget(w, j + h));
        const Cx c = wget(w, jj);
        const Cx e = cx_mul(tw[2 * jj], tw[2 * jj + 1], wget(w, jj + h));
        const Cx zj = cx_add(a, b);
        const Cx zjh = cx_sub(a, b);
        const Cx zjj = cx_add(c, e);
        const Cx zjjh = cx_sub(c, e);
        post_pair(n, j, pairs + 6 * (j - 1), zj, zjjh, line, stride);
        post_pair(n, jj, pairs + 6 * (jj - 1), zjj, zjh, line, stride);
    }
}

// FastDct::inverse_block for one line, in place.
__device__ __noinline__ void fast_line_inverse(const DimDev& d, float* line, u32 stride) {
    const u32 n = d.n;
    const u32 m = n / 2;
    const u32 h = m / 2;
    const u32* g = d.gather;
    const float* tab = d.tab;
    const FastLayout lay = fast_layout(n);
    float w[MERIDIAN_MAX_LINE];
    // Transposed last pass: coefficients to work.
    {
        const float s0 = tab[0];
        const float mc = tab[1];
        const float ms = tab[2];
        const float x0 = line[0], xm = line[m * stride];
        const float xh = line[h * stride], xnh = line[(n - h) * stride];
        const Cx z0 = cx(__fmul_rn(s0, __fadd_rn(x0, xm)), __fmul_rn(s0, __fsub_rn(x0, xm)));
        const Cx zh = cx(dot2(mc, xh, ms, xnh), cross2(mc, xnh, ms, xh));
        wset(w, 0, cx_add(z0, zh));
        wset(w, h, cx_sub(z0, zh));
    }
    if (h >= 2) {
        const float* tw = tab + lay.last_tw;
        const float* pairs = tab + lay.pairs;
        {
            const u32 j = h / 2;
            Cx zj, zjh;
            post_pair_transposed(n, j, pairs + 6 * (j - 1), line, stride, &zj, &zjh);
            const Cx d2 = cx_sub(zj, zjh);
            wset(w, j, cx_add(zj, zjh));
            wset(w, j + h, cx(-d2.im, d2.re));
        }
        for (u32 j = 1; j < h / 2; ++j) {
            const u32 jj = h - j;
            Cx zj, zjjh, zjj, zjh;
            post_pair_transposed(n, j, pairs + 6 * (j - 1), line, stride, &zj, &zjjh);
            post_pair_transposed(n, jj, pairs + 6 * (jj - 1), line, stride, &zjj, &zjh);
            wset(w, j, cx_add(zj, zjh));
            wset(w, j + h, cx_mul_conj(tw[2 * j], tw[2 * j + 1], cx_sub(zj, zjh)));
            wset(w, jj, cx_add(zjj, zjjh));
            wset(w, jj + h, cx_mul_conj(tw[2 * jj], tw[2 * jj + 1], cx_sub(zjj, zjjh)));
        }
    }
    // Middle passes transposed, in reverse order: walk the forward list, then undo it.
    u32 spans[8];
    u32 kinds[8];
    u32 offs[8];
    u32 count = 0;
    {
        u32 o4 = 0;
        u32 o2 = 0;
        for (u32 hs = first_span(m); hs < h && count < 8; ++count) {
            spans[count] = hs;
            if (4 * hs <= h) {
                kinds[count] = 4;
                offs[count] = o4;
                o4 += hs;
                hs *= 4;
            } else {
                kinds[count] = 2;
                offs[count] = o2;
                o2 += hs;
                hs *= 2;
            }
        }
    }
    for (u32 s = count; s-- > 0;) {
        const u32 hs = spans[s];
        if (kinds[s] == 4) {
            for (u32 g0 = 0; g0 < m; g0 += 4 * hs) {
                for (u32 j = 0; j < hs; ++j) {
                    Cx y[4];
                    for (u32 i = 0; i < 4; ++i) {
                        y[i] = wget(w, g0 + j + i * hs);
                    }
                    radix4_transposed(y);
                    if (j != 0) {
                        const float* t = tab + lay.tw4 + 6 * (offs[s] + j);
                        y[1] = cx_mul_conj(t[0], t[1], y[1]);
                        y[2] = cx_mul_conj(t[2], t[3], y[2]);
                        y[3] = cx_mul_conj(t[4], t[5], y[3]);
                    }
                    for (u32 i = 0; i < 4; ++i) {
                        wset(w, g0 + j + i * hs, y[i]);
                    }
                }
            }
        } else {
            for (u32 g0 = 0; g0 < m; g0 += 2 * hs) {
                for (u32 j = 0; j < hs; ++j) {
                    const Cx a = wget(w, g0 + j);
                    const Cx b = wget(w, g0 + j + hs);
                    const Cx dd = cx_sub(a, b);
                    wset(w, g0 + j, cx_add(a, b));
                    if (j == 0) {
                        wset(w, g0 + j + hs, dd);
                    } else {
                        const float* t = tab + lay.tw2 + 2 * (offs[s] + j);
                        wset(w, g0 + j + hs, cx_mul_conj(t[0], t[1], dd));
                    }
                }
            }
        }
    }
    // First pass transposed: butterflies, then scatter to the line's points.
    if (m == 2) {
        for (u32 p = 0; p < 2; ++p) {
            const Cx z = wget(w, p);
            line[g[2 * p] * stride] = z.re;
            line[g[2 * p + 1] * stride] = z.im;
        }
    } else if (m == 4) {
        for (u32 p = 0; p < m; p += 2) {
            const Cx a = wget(w, p);
            const Cx b = wget(w, p + 1);
            const Cx s = cx_add(a, b);
            const Cx t = cx_sub(a, b);
            line[g[2 * p] * stride] = s.re;
            line[g[2 * p + 1] * stride] = s.im;
            line[g[2 * p + 2] * stride] = t.re;
            line[g[2 * p + 3] * stride] = t.im;
        }
    } else {
        for (u32 p = 0; p < m; p += 4) {
            Cx z[4];
            for (u32 i = 0; i < 4; ++i) {
                z[i] = wget(w, p + i);
            }
            radix4_transposed(z);
            for (u32 i = 0; i < 4; ++i) {
                line[g[2 * (p + i)] * stride] = z[i].re;
                line[g[2 * (p + i) + 1] * stride] = z[i].im;
            }
        }
    }
}

// The dense path for one line, in place: forward y[k] = sum_l x[l] * C[k][l], inverse
// x[k] = sum_l y[l] * C[l][k], each sum from +0.0 in increasing l (dct.rs's matmul).
__device__ __noinline__ void matrix_line(const DimDev& d, float* line, u32 stride, bool inverse) {
    const u32 n = d.n;
    float x[MERIDIAN_MAX_LINE];
    for (u32 l = 0; l < n; ++l) {
        x[l] = line[l * stride];
    }
    for (u32 k = 0; k < n; ++k) {
        float acc = 0.0f;
        for (u32 l = 0; l < n; ++l) {
            const float b = inverse ? __ldg(&d.c[l * n + k]) : __ldg(&d.c[k * n + l]);
            acc = __fadd_rn(acc, __fmul_rn(x[l], b));
        }
        line[k * stride] = acc;
    }
}

__device__ __forceinline__ void line_transform(const DimDev& d, float* line, u32 stride,
                                               bool inverse) {
    if (d.fast) {
        if (inverse) {
            fast_line_inverse(d, line, stride);
        } else {
            fast_line_forward(d, line, stride);
        }
    } else {
        matrix_line(d, line, stride, inverse);
    }
}

// Geometry of a chunked DCT: input rows x cols row-major, tiles of rc x cc over the
// zero-padded grid, coefficients tile-major. `line` is 1 when the plan is a line along
// the columns (rows == 1: only the column dimension is transformed), 2 along the rows
// (cols == 1), 0 for a 2-D plan (DctPlan::line in dct.rs).
struct TileGeometry {
    u32 rows;
    u32 cols;
    u32 rc;
    u32 cc;
    u32 tiles_per_row;
    u32 line;
};

// Row stride of a tile in shared memory: odd, so that threads walking different rows of
// one column hit different banks.
__device__ __forceinline__ u32 tile_ld(TileGeometry g) { return g.cc | 1u; }

// Transforms the tile in shared memory (row stride ld) in place, the dimensions in the
// CPU's order: both fast -> the row dimension on every column first, then the column
// dimension on every row; otherwise the column dimension on every row first. The same
// order holds in both directions. One thread per line; every thread of the block calls it.
__device__ inline void tile_transform(float* tile, u32 ld, TileGeometry g, const DimDev& rd,
                               const DimDev& cd, bool inverse) {
    if (g.line == 1) {
        if (threadIdx.x == 0) {
            line_transform(cd, tile, 1, inverse);
        }
        __syncthreads();
        return;
    }
    if (g.line == 2) {
        if (threadIdx.x == 0) {
            line_transform(rd, tile, ld, inverse);
        }
        __syncthreads();
        return;
    }
    const bool columns_first = rd.fast && cd.fast;
    for (u32 pass = 0; pass < 2; ++pass) {
        const bool columns = (pass == 0) == columns_first;
        const u32 lines = columns ? g.cc : g.rc;
        for (u32 i = threadIdx.x; i < lines; i += blockDim.x) {
            if (columns) {
                line_transform(rd, tile + i, ld, inverse);
            } else {
                line_transform(cd, tile + i * ld, 1, inverse);
            }
        }
        __syncthreads();
    }
}

// Loads tile t of the input into shared `tile` (row stride ld), zeros where padded.
__device__ inline void load_tile(const float* x, TileGeometry g, u32 t, float* tile, u32 ld) {
    const u32 ti = t / g.tiles_per_row;
    const u32 tj = t - ti * g.tiles_per_row;
    const u32 n = g.rc * g.cc;
    for (u32 o = threadIdx.x; o < n; o += blockDim.x) {
        const u32 lr = o / g.cc;
        const u32 lc = o - lr * g.cc;
        const u32 r = ti * g.rc + lr;
        const u32 c = tj * g.cc + lc;
        tile[lr * ld + lc] = (r < g.rows && c < g.cols) ? x[(u64)r * g.cols + c] : 0.0f;
    }
    __syncthreads();
}

// Stores shared `tile` (row stride ld) as tile t of the output, dropping padded positions.
__device__ inline void store_tile(float* out, TileGeometry g, u32 t, const float* tile, u32 ld) {
    const u32 ti = t / g.tiles_per_row;
    const u32 tj = t - ti * g.tiles_per_row;
    const u32 n = g.rc * g.cc;
    for (u32 o = threadIdx.x; o < n; o += blockDim.x) {
        const u32 lr = o / g.cc;
        const u32 lc = o - lr * g.cc;
        const u32 r = ti * g.rc + lr;
        const u32 c = tj * g.cc + lc;
        if (r < g.rows && c < g.cols) {
            out[(u64)r * g.cols + c] = tile[lr * ld + lc];
        }
    }
}
