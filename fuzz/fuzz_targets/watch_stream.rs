//! A whole agent reading a hostile watch stream: never panics, and the memory region changes
//! only when a config was applied.
#![no_main]

use picolet_core::agent::{Agent, ConfigMode, WatchLines};
use picolet_core::http::ResponseHead;
use picolet_core::memory::REGION_SIZE;

fn agent(region: &mut [u8; REGION_SIZE]) -> Agent<'_> {
    let mut cfg = picolet_core::fixtures::config(ConfigMode::Watch);
    cfg.status_report_interval_ms = 10_000;
    Agent::new(cfg, region, 0).expect("valid config")
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut region = [0u8; REGION_SIZE];
    let mut a = agent(&mut region);
    let mut buf = [0u8; 8192];
    // Register and list, so that a watch is due.
    let ok = |s| ResponseHead { status: s, content_length: None, chunked: false, close: false, date: None };
    for _ in 0..8 {
        if a.poll_request(0, &mut buf).ok().flatten().is_some() {
            let body = br#"{"metadata":{"uid":"u","resourceVersion":"1"},"items":[]}"#;
            a.on_response(0, &ok(201), body, body.len());
        }
    }
    let _ = a.poll_watch_request(0, &mut buf);
    let mut lines = Box::new(WatchLines::new());
    let applies = a.metrics().config_applies;
    let mut rest = data;
    while !rest.is_empty() {
        let (n, open) = a.on_watch_bytes(1, &mut lines, rest);
        if !open || n == 0 {
            break;
        }
        rest = &rest[n..];
    }
    if a.metrics().config_applies == applies {
        assert!(a.region().iter().all(|&b| b == 0), "memory changed without an applied config");
    }
});
