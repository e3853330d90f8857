//! `firmware-budget ELF...`: prints each firmware's flash and static RAM use against the
//! RP2040 (2 MiB flash, 264 KiB SRAM) and fails when a budget is exceeded:
//!
//! - flash ≤ 900 KiB, which also keeps at least half of the 2 MiB free for a second (OTA) slot;
//! - static RAM (.data + .bss + .uninit) plus the stack reserve ≤ 192 KiB (about 73 % of the
//!   SRAM; 160 KiB until the kubelet port's TLS server and certificate renewal added 19 KiB of
//!   record buffers, handshake state and certificate copies). The reserve
//!   ([`picolet_device::stack::RESERVE_BYTES`]) is the stack high-water mark measured by running
//!   the firmware in the RP2040 emulator (painted stack, also reported on `/metrics`) plus a
//!   margin; the emulator test fails if the measured mark ever exceeds it, so the two cannot
//!   drift apart.

use std::process::ExitCode;

use object::{Object, ObjectSection};

const FLASH_TOTAL: u64 = 2 * 1024 * 1024;
const RAM_TOTAL: u64 = 264 * 1024;
const FLASH_BUDGET: u64 = 900 * 1024;
const RAM_BUDGET: u64 = 192 * 1024;
/// Stack kept free above .bss (cortex-m-rt puts the stack there), as measured in the emulator.
const STACK_RESERVE: u64 = picolet_device::stack::RESERVE_BYTES as u64;

const FLASH: std::ops::Range<u64> = 0x1000_0000..0x1000_0000 + FLASH_TOTAL;
const RAM: std::ops::Range<u64> = 0x2000_0000..0x2000_0000 + RAM_TOTAL;

/// One allocated section: name, address, size.
struct Section {
    name: String,
    addr: u64,
    size: u64,
}

/// What a firmware image uses.
#[derive(Debug, PartialEq, Eq)]
struct Usage {
    flash: u64,
    static_ram: u64,
}

/// Sums flash (everything placed in flash, plus the flash copy of `.data`) and static RAM.
fn usage(sections: &[Section]) -> Usage {
    let mut u = Usage {
        flash: 0,
        static_ram: 0,
    };
    for s in sections {
        if FLASH.contains(&s.addr) {
            u.flash += s.size;
        } else if RAM.contains(&s.addr) {
            u.static_ram += s.size;
            // .data is initialised from a copy in flash.
            if s.name == ".data" {
                u.flash += s.size;
            }
        }
    }
    u
}

fn read(path: &str) -> Result<Vec<Section>, String> {
    let data = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    let file = object::File::parse(&*data).map_err(|e| format!("{path}: not an ELF: {e}"))?;
    Ok(file
        .sections()
        .filter(|s| s.address() != 0 && s.size() != 0)
        .map(|s| Section {
            name: s.name().unwrap_or("?").to_string(),
            addr: s.address(),
            size: s.size(),
        })
        .collect())
}

fn kib(b: u64) -> f64 {
    b as f64 / 1024.0
}

fn main() -> ExitCode {
    let paths: Vec<String> = std::env::args().skip(1).collect();
    if paths.is_empty() {
        eprintln!("usage: firmware-budget FIRMWARE.elf...");
        return ExitCode::from(2);
    }
    let mut ok = true;
    for path in &paths {
        let sections = match read(path) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("firmware-budget: {e}");
                return ExitCode::from(2);
            }
        };
        let u = usage(&sections);
        let ram = u.static_ram + STACK_RESERVE;
        let flash_ok = u.flash <= FLASH_BUDGET;
        let ram_ok = ram <= RAM_BUDGET;
        println!("{path}");
        println!(
            "  flash       {:7.1} KiB of {:.0} KiB ({:.1} %), budget {:.0} KiB: {}",
            kib(u.flash),
            kib(FLASH_TOTAL),
            100.0 * u.flash as f64 / FLASH_TOTAL as f64,
            kib(FLASH_BUDGET),
            if flash_ok { "ok" } else { "OVER" }
        );
        println!(
            "  static RAM  {:7.1} KiB (.data + .bss + .uninit), + {:.0} KiB stack reserve = {:.1} KiB of {:.0} KiB, budget {:.0} KiB: {}",
            kib(u.static_ram),
            kib(STACK_RESERVE),
            kib(ram),
            kib(RAM_TOTAL),
            kib(RAM_BUDGET),
            if ram_ok { "ok" } else { "OVER" }
        );
        println!("  heap        none (no allocator is linked)");
        ok &= flash_ok && ram_ok;
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(name: &str, addr: u64, size: u64) -> Section {
        Section {
            name: name.into(),
            addr,
            size,
        }
    }

    #[test]
    fn counts_flash_ram_and_the_flash_copy_of_data() {
        let u = usage(&[
            s(".boot2", 0x1000_0000, 256),
            s(".text", 0x1000_0100, 50_000),
            s(".rodata", 0x1000_c450, 200_000),
            s(".data", 0x2000_0000, 100),
            s(".bss", 0x2000_0064, 20_000),
            s(".uninit", 0x2000_4e84, 1024),
        ]);
        assert_eq!(
            u,
            Usage {
                flash: 256 + 50_000 + 200_000 + 100,
                static_ram: 100 + 20_000 + 1024
            }
        );
    }
}
