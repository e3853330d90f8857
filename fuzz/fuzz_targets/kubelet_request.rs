//! Kubelet-port request heads, and the small header parsers: never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = picolet_core::kubelet::parse_request(data);
    let _ = picolet_core::time::parse_http_date(data);
    let _ = picolet_core::objects::scan_resource_version(data);
    let _ = picolet_core::objects::scan_field(data, "uid");
});
