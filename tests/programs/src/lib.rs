//! Misbehaviours shared by Skiff's test guests (`misbehave`, the command,
//! and `skiff-test-http`, the HTTP guest): each never returns normally.
#![forbid(unsafe_code)]

use std::hint::black_box;

/// Burns CPU forever; `black_box` keeps the optimiser from proving the loop
/// pointless.
pub fn spin() -> ! {
    let mut counter = 0u64;
    loop {
        counter = black_box(counter.wrapping_add(1));
    }
}

/// Allocates 1 MiB at a time, writing to every page so the memory is really
/// committed, until the allocator fails (which aborts, trapping the guest).
pub fn exhaust_memory() -> ! {
    const CHUNK: usize = 1 << 20;
    const PAGE: usize = 4096;
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut chunk = vec![0u8; CHUNK];
        for (i, byte) in chunk.iter_mut().step_by(PAGE).enumerate() {
            *byte = i as u8 | 1;
        }
        chunks.push(black_box(chunk));
    }
}

/// Recurses until the stack overflows. The call is not in tail position
/// (`depth` is used after it returns, through `black_box`), so every level
/// keeps a frame.
pub fn recurse(depth: u64) -> u64 {
    if black_box(depth) == u64::MAX {
        return depth;
    }
    let below = recurse(black_box(depth + 1));
    black_box(below ^ depth)
}
