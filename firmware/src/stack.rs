//! The stack's size and deepest use, for `/metrics` and the working set on `/metrics/resource`.
//!
//! cortex-m-rt paints the whole stack with [`cortex_m_rt::STACK_PAINT_VALUE`] (feature
//! `paint-stack`) in its reset handler, before `main` and before any interrupt can push a frame;
//! the words at the bottom that still hold it were never used (`picolet_device::stack` counts
//! them, and the emulator test reads the same words).

use picolet_device::stack::{PAINT, high_water, untouched_bytes};

// picolet-device counts the words that still hold cortex-m-rt's paint.
const _: () = assert!(PAINT == cortex_m_rt::STACK_PAINT_VALUE);

/// The stack region cortex-m-rt sets up: from the end of static RAM (`_stack_end`, bottom) to
/// the end of RAM (`_stack_start`, top).
fn bounds() -> (usize, usize) {
    unsafe extern "C" {
        static _stack_end: u32;
        static _stack_start: u32;
    }
    // Only the addresses are taken (no read), which is safe; the linker defines both symbols.
    (
        core::ptr::addr_of!(_stack_end) as usize,
        core::ptr::addr_of!(_stack_start) as usize,
    )
}

/// (stack size, deepest use so far), in bytes.
pub fn stack_use() -> (usize, usize) {
    let (bottom, top) = bounds();
    // SAFETY: word-aligned reads inside the stack region; the values are only compared with the
    // paint word.
    let words = (bottom..top)
        .step_by(4)
        .map(|a| unsafe { core::ptr::read_volatile(a as *const u32) });
    let untouched = untouched_bytes(words);
    (top - bottom, high_water(top - bottom, untouched))
}

/// Static RAM: everything below the stack.
pub fn static_ram() -> usize {
    bounds().0 - 0x2000_0000
}
