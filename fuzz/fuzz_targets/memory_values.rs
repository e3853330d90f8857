//! The `memory_values` grammar, on decoded text and on JSON-escaped text (as ConfigMap values
//! arrive): never panics; a valid image lists at most 1024 entries; text without escapes
//! parses the same both ways.
#![no_main]

use picolet_core::memory::{REGION_SIZE, parse_memory_values, parse_memory_values_json};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let plain = parse_memory_values(data);
    if let Ok(img) = &plain {
        assert!(usize::from(img.entries) <= REGION_SIZE);
    }
    if let Ok(text) = core::str::from_utf8(data) {
        let json = parse_memory_values_json(text);
        if let Ok(img) = &json {
            assert!(usize::from(img.entries) <= REGION_SIZE);
        }
        if !text.contains('\\') {
            assert_eq!(json, plain);
        }
    }
});
