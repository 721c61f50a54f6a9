//! Decoding hostile input allocates according to the limit, not to what the input claims:
//! an oversized length prefix or a zip bomb is refused before any large buffer exists.
//!
//! A counting global allocator records, per thread, the largest single allocation made while
//! a test measures (tests run on their own threads, so they do not see each other's).

// Helpers outside #[test] functions unwrap too: a failure here is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use meridian_comm::ids::{JoinSecret, RunId};
use meridian_comm::node::MAX_JOIN_FRAME;
use meridian_comm::wire::{FrameCodec, FrameKind, WireError, DEFAULT_MAX_FRAME};

struct Counting;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: the thread-local may be gone while a thread shuts down.
    let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(size)));
}

// SAFETY: forwards to the system allocator unchanged; only records sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The largest single allocation `f` makes on this thread.
fn largest_allocation(f: impl FnOnce()) -> usize {
    LARGEST.with(|largest| largest.set(0));
    f();
    LARGEST.with(Cell::get)
}

const SECRET: JoinSecret = JoinSecret([3; 32]);
const RUN: RunId = RunId([4; 16]);

#[test]
fn an_oversized_prefix_allocates_nothing_of_its_size() {
    let codec = FrameCodec::new(&SECRET, RUN, 1024);
    let mut bytes = u32::MAX.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"MRDN and then some");
    let largest = largest_allocation(|| {
        assert!(matches!(codec.decode(&bytes), Err(WireError::TooLarge { .. })));
        let mut reader = codec.reader();
        reader.push(&bytes);
        assert!(matches!(reader.next_frame(), Some(Err(WireError::TooLarge { .. }))));
    });
    assert!(largest < 1024, "largest allocation {largest} bytes");
}

#[test]
fn a_zip_bomb_allocates_nothing_of_its_size() {
    // A peer with the secret (or a generous limit) sends 64 MiB of zeros, compressed.
    let generous = FrameCodec::new(&SECRET, RUN, 64 << 20);
    let bomb = generous.encode(FrameKind::Payload, 0, 0, &vec![0; 64 << 20], true).unwrap();
    assert!(bomb.len() < 64 << 10);
    let strict = FrameCodec::new(&SECRET, RUN, 1 << 20);
    let largest = largest_allocation(|| {
        let err = strict.decode(&bomb).unwrap_err();
        assert_eq!(err, WireError::DecompressedTooLarge { size: 64 << 20, max: 1 << 20 });
    });
    assert!(largest < 1 << 20, "largest allocation {largest} bytes");
}

#[test]
fn a_frame_read_in_small_chunks_allocates_about_its_size_once() {
    let codec = FrameCodec::new(&SECRET, RUN, 4 << 20);
    let body: Vec<u8> = (0..3u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
    let bytes = codec.encode(FrameKind::State, 1, 2, &body, false).unwrap();
    let largest = largest_allocation(|| {
        let mut reader = codec.reader();
        for piece in bytes.chunks(1500) {
            reader.push(piece);
            if let Some(frame) = reader.next_frame() {
                assert_eq!(frame.unwrap().body.len(), body.len());
            }
        }
    });
    // The frame's own buffer, never a doubled one.
    assert_eq!(largest, bytes.len());
}

#[test]
fn a_first_frame_over_the_join_limit_allocates_nothing_of_its_size() {
    // What a coordinator reads before a connection joined: its codec's limit, lowered to
    // the largest valid join. A stranger announces 512 MiB, well within the member limit.
    let member = FrameCodec::new(&SECRET, RUN, DEFAULT_MAX_FRAME);
    let first = member.with_max_frame(MAX_JOIN_FRAME);
    assert_eq!(first.max_frame(), MAX_JOIN_FRAME);
    let mut bytes = (512u32 << 20).to_le_bytes().to_vec();
    bytes.extend_from_slice(b"MRDN");
    let largest = largest_allocation(|| {
        let mut reader = first.reader();
        // The prefix alone, as it may arrive: refused before the rest is waited for.
        reader.push(&bytes[..4]);
        let err = reader.next_frame().expect("refused at the prefix").unwrap_err();
        assert_eq!(err, WireError::TooLarge { len: 512 << 20, max: MAX_JOIN_FRAME });
    });
    assert!(largest < 1024, "largest allocation {largest} bytes");
    // The member codec would have waited for (and reserved) the announced size.
    let mut reader = member.reader();
    reader.push(&bytes);
    assert!(reader.next_frame().is_none());
}
