//! The `memory_values` grammar: never panics; a valid image lists at most 1024 entries.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(img) = picolet_core::memory::parse_memory_values(data) {
        assert!(usize::from(img.entries) <= picolet_core::memory::REGION_SIZE);
    }
});
