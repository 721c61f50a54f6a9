// Index packing (kernels/src/pack.rs, chunked encoding): the fixed form (chunk-local offsets
// at a fixed bit width, LSB-first) and the bitmap form, both written as u32 words whose
// bytes are the stream (the host zeroes the words first and keeps the first bytes).

// Fixed form: entry e (chunk e / k) stores idx[e] - chunk start at bit e * width.
// Launch: one thread per entry.
extern "C" __global__ void pack_fixed(const u32* __restrict__ idx, u32 total_k, u32 k,
                                      u32 chunk_len, u32 width, u32* __restrict__ words) {
    const u32 e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e < total_k) {
        const u32 chunk = e / k;
        put_bits(words, (u64)e * width, idx[e] - chunk * chunk_len, width);
    }
}

// Bitmap form: bit idx[e] set for every entry. Launch: one thread per entry.
extern "C" __global__ void pack_bitmap(const u32* __restrict__ idx, u32 count,
                                       u32* __restrict__ words) {
    const u32 e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e < count) {
        const u32 i = idx[e];
        atomicOr(&words[i >> 5], 1u << (i & 31u));
    }
}

// Decodes the fixed form (the bytes after the tag) back to global indices, and lowers *bad
// to the first entry whose offset is not below its chunk's length or not above the previous
// offset of its chunk (the CPU decoder's rejections). Padding is checked by the host.
// Launch: one thread per entry.
extern "C" __global__ void unpack_fixed(const u8* __restrict__ bytes, u64 nbytes, u32 total_k,
                                        u32 k, u32 chunk_len, u32 len, u32 width,
                                        u32* __restrict__ idx, u32* bad) {
    const u32 e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= total_k) {
        return;
    }
    const u32 chunk = e / k;
    const u32 start = chunk * chunk_len;
    const u32 this_len = min(chunk_len, len - start);
    const u32 off = get_bits(bytes, nbytes, (u64)e * width, width);
    bool ok = off < this_len;
    if (e > chunk * k) {
        ok = ok && off > get_bits(bytes, nbytes, (u64)(e - 1u) * width, width);
    }
    if (!ok) {
        atomicMin(bad, e);
    }
    idx[e] = start + off;
}
