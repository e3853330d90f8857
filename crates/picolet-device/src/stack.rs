//! Stack high-water mark by painting: at boot the unused stack is filled with [`PAINT`]; later,
//! the words at the bottom that still hold it were never used (the stack grows down).

/// The word painted over the stack: cortex-m-rt's `STACK_PAINT_VALUE`, which its reset handler
/// writes over the whole stack before `main` (feature `paint-stack`; the firmware asserts that
/// the two agree).
pub const PAINT: u32 = 0xCCCC_CCCC;

/// Stack the RAM budget keeps free above static RAM: the emulator measured 30,036 bytes at the
/// deepest point (embedded-tls's X.509 parsing during the API server handshake, in the control
/// task), plus a margin. The emulator test fails when a measured mark exceeds it;
/// `firmware-budget` adds it to static RAM.
pub const RESERVE_BYTES: usize = 32 * 1024;

/// How many bytes at the bottom of the stack still hold the paint, reading words bottom-up.
pub fn untouched_bytes(words_from_bottom: impl Iterator<Item = u32>) -> usize {
    words_from_bottom.take_while(|&w| w == PAINT).count() * 4
}

/// The deepest the stack has been, in bytes, given its size and the untouched bytes.
pub fn high_water(stack_size: usize, untouched: usize) -> usize {
    stack_size.saturating_sub(untouched)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_from_the_bottom_up() {
        // 8 words of stack, the top 3 used (overwritten).
        let stack = [PAINT, PAINT, PAINT, PAINT, PAINT, 1, PAINT, 7];
        let untouched = untouched_bytes(stack.iter().copied());
        assert_eq!(untouched, 20);
        assert_eq!(high_water(stack.len() * 4, untouched), 12);
        assert_eq!(untouched_bytes([0u32, PAINT].into_iter()), 0);
        assert_eq!(high_water(16, 64), 0);
    }
}
