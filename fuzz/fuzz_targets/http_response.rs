//! The HTTP response decoder, fed the input in two pieces: never panics, never loops.
#![no_main]

use picolet_core::http::{Decoded, ResponseDecoder};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut dec = ResponseDecoder::new();
    let mut rest = data;
    for _ in 0..data.len() * 2 + 8 {
        match dec.decode(rest) {
            Err(_) | Ok((_, Decoded::Done)) => return,
            Ok((0, Decoded::NeedMore)) => return,
            Ok((n, _)) => rest = &rest[n..],
        }
    }
    panic!("decoder made no progress");
});
