//! The flash board-configuration record: never panics, and whatever parses re-encodes to a
//! record that parses to the same configuration.
#![no_main]

use picolet_device::board_config::{BoardConfig, SECTOR_SIZE};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(config) = BoardConfig::parse(data) {
        let mut sector = [0xff; SECTOR_SIZE];
        let n = config.encode(&mut sector).expect("a parsed record fits a sector");
        assert_eq!(BoardConfig::parse(&sector[..n]), Ok(config));
    }
});
