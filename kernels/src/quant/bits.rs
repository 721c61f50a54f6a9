//! Packing of b-bit codes (b ∈ {1, 2, 4, 8}) into bytes.
//!
//! Layout: codes are stored little-endian within each byte, the first code in the least
//! significant bits, so byte `i` holds codes `i·(8/b) .. (i+1)·(8/b)`. Unused high bits of
//! the last byte are zero; decoders reject anything else so that every payload has exactly
//! one encoding. Because 8 is a multiple of every supported width, a code never straddles
//! two bytes and both directions work a whole byte at a time.

use super::Bits;
use crate::error::{check_len, malformed, Result};

/// Bytes needed to hold `n` codes of width `bits`.
pub(super) fn packed_len(n: usize, bits: Bits) -> usize {
    let per_byte = per_byte(bits);
    n / per_byte + usize::from(n % per_byte != 0)
}

/// Codes that fit in one byte.
fn per_byte(bits: Bits) -> usize {
    8 / bits.count() as usize
}

fn mask(bits: Bits) -> u8 {
    // Width 8 would overflow `1 << 8` in u8 arithmetic.
    (((1u16 << bits.count()) - 1) & 0xff) as u8
}

/// Packs one-code-per-byte `buf` into `packed_len(buf.len(), bits)` bytes in place, then
/// truncates. Lets a quantizer write codes straight into its output vector without a
/// scratch buffer: byte `i` is built only from positions `≥ i`, so a forward pass never
/// overwrites a code it still has to read. Bits above the width are masked off.
pub(super) fn pack_in_place(buf: &mut Vec<u8>, bits: Bits) {
    if bits == Bits::B8 {
        return;
    }
    let n = buf.len();
    let k = per_byte(bits);
    let width = bits.count();
    let m = mask(bits);
    let full = n / k;
    for i in 0..full {
        let mut byte = 0u8;
        for (j, &code) in buf[i * k..i * k + k].iter().enumerate() {
            byte |= (code & m) << (j as u32 * width);
        }
        buf[i] = byte;
    }
    if full * k < n {
        let mut byte = 0u8;
        for (j, &code) in buf[full * k..].iter().enumerate() {
            byte |= (code & m) << (j as u32 * width);
        }
        buf[full] = byte;
    }
    buf.truncate(packed_len(n, bits));
}

/// Appends the packed form of `codes` (one code per byte, high bits ignored) to `out`.
#[cfg(test)]
pub(super) fn pack_into(codes: &[u8], bits: Bits, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(codes);
    let mut tail = out.split_off(start);
    pack_in_place(&mut tail, bits);
    out.extend_from_slice(&tail);
}

/// Unpacks `out.len()` codes from `packed`, which must be exactly
/// `packed_len(out.len(), bits)` bytes with zero padding.
#[cfg(test)]
pub(super) fn unpack_into(packed: &[u8], bits: Bits, out: &mut [u8]) -> Result<()> {
    check_packed("packed codes", packed, bits, out.len())?;
    let n = out.len();
    for (slot, code) in out.iter_mut().zip(Codes::new(packed, bits, n)) {
        *slot = code;
    }
    Ok(())
}

/// Checks that `packed` holds exactly `n` codes of width `bits` and that its padding bits
/// are zero.
pub(super) fn check_packed(what: &'static str, packed: &[u8], bits: Bits, n: usize) -> Result<()> {
    check_len(what, packed_len(n, bits), packed.len())?;
    let used = n % per_byte(bits);
    if used != 0 {
        let last = packed[packed.len() - 1];
        if last >> (used as u32 * bits.count()) != 0 {
            return Err(malformed(what, "nonzero padding bits in the last byte"));
        }
    }
    Ok(())
}

/// Iterator over the first `n` codes of a packed buffer (fewer if the buffer is short),
/// loading one byte per `8 / b` codes.
#[derive(Debug, Clone)]
pub(super) struct Codes<'a> {
    bytes: std::slice::Iter<'a, u8>,
    current: u8,
    left_in_byte: usize,
    remaining: usize,
    width: u32,
    mask: u8,
    per_byte: usize,
}

impl<'a> Codes<'a> {
    pub(super) fn new(packed: &'a [u8], bits: Bits, n: usize) -> Self {
        Self {
            bytes: packed.iter(),
            current: 0,
            left_in_byte: 0,
            remaining: n,
            width: bits.count(),
            mask: mask(bits),
            per_byte: per_byte(bits),
        }
    }
}

impl Iterator for Codes<'_> {
    type Item = u8;

    #[inline]
    fn next(&mut self) -> Option<u8> {
        if self.remaining == 0 {
            return None;
        }
        if self.left_in_byte == 0 {
            self.current = *self.bytes.next()?;
            self.left_in_byte = self.per_byte;
        }
        let code = self.current & self.mask;
        // Shifting a u8 by 8 is an overflow; for width 8 the byte is consumed whole anyway.
        self.current = self.current.checked_shr(self.width).unwrap_or(0);
        self.left_in_byte -= 1;
        self.remaining -= 1;
        Some(code)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let available = self.bytes.len() * self.per_byte + self.left_in_byte;
        let n = self.remaining.min(available);
        (n, Some(n))
    }
}

impl ExactSizeIterator for Codes<'_> {}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALL: [Bits; 4] = [Bits::B1, Bits::B2, Bits::B4, Bits::B8];

    #[test]
    fn packed_len_rounds_up() {
        assert_eq!(packed_len(0, Bits::B1), 0);
        assert_eq!(packed_len(1, Bits::B1), 1);
        assert_eq!(packed_len(8, Bits::B1), 1);
        assert_eq!(packed_len(9, Bits::B1), 2);
        assert_eq!(packed_len(5, Bits::B2), 2);
        assert_eq!(packed_len(3, Bits::B4), 2);
        assert_eq!(packed_len(3, Bits::B8), 3);
    }

    #[test]
    fn layout_is_little_endian_within_bytes() {
        let mut out = Vec::new();
        pack_into(&[1, 0, 1, 1, 0, 0, 0, 1, 1], Bits::B1, &mut out);
        assert_eq!(out, vec![0b1000_1101, 0b0000_0001]);
        out.clear();
        pack_into(&[3, 0, 2, 1, 2], Bits::B2, &mut out);
        assert_eq!(out, vec![0b01_10_00_11, 0b10]);
        out.clear();
        pack_into(&[0xA, 0x5, 0xF], Bits::B4, &mut out);
        assert_eq!(out, vec![0x5A, 0x0F]);
    }

    #[test]
    fn nonzero_padding_and_wrong_length_are_rejected() {
        let mut out = [0u8; 3];
        assert!(unpack_into(&[0b1000_0000], Bits::B2, &mut out).is_err());
        assert!(unpack_into(&[0b0010_0000], Bits::B2, &mut out).is_ok());
        assert!(unpack_into(&[0, 0], Bits::B2, &mut out).is_err());
        assert!(unpack_into(&[], Bits::B2, &mut out).is_err());
    }

    #[test]
    fn short_buffer_ends_the_iterator_early() {
        let codes: Vec<u8> = Codes::new(&[0xff], Bits::B4, 5).collect();
        assert_eq!(codes, vec![0xf, 0xf]);
    }

    proptest! {
        #[test]
        fn round_trip_every_width(raw in proptest::collection::vec(any::<u8>(), 0..70), w in 0usize..4) {
            let bits = ALL[w];
            let m = mask(bits);
            let codes: Vec<u8> = raw.iter().map(|c| c & m).collect();
            let mut packed = vec![0xAB];
            pack_into(&codes, bits, &mut packed);
            prop_assert_eq!(packed[0], 0xAB);
            prop_assert_eq!(packed.len() - 1, packed_len(codes.len(), bits));
            let mut back = vec![0u8; codes.len()];
            unpack_into(&packed[1..], bits, &mut back).unwrap();
            prop_assert_eq!(&back, &codes);
            let it = Codes::new(&packed[1..], bits, codes.len());
            prop_assert_eq!(it.len(), codes.len());
            // High bits beyond the width are ignored when packing.
            let mut from_raw = Vec::new();
            pack_into(&raw, bits, &mut from_raw);
            prop_assert_eq!(&from_raw[..], &packed[1..]);
        }
    }
}
