//! Hardware bring-up for a Pico W / WH: blinks the onboard LED (wired to the CYW43, so a blink
//! proves the Wi-Fi chip initialised), reports over USB serial the CYW43 firmware version and
//! MAC address, and scans for Wi-Fi networks every 10 s.

#![no_std]
#![no_main]

use embassy_executor::Spawner;
use embassy_time::{Duration, Instant, Timer};
use picolet_device::led::LedState;
use picolet_firmware::{Cyw43Pins, start_cyw43, start_usb_log};

use panic_halt as _;

#[embassy_executor::main]
async fn main(spawner: Spawner) {
    let p = embassy_rp::init(Default::default());
    start_usb_log(spawner, p.USB);
    let pins = Cyw43Pins {
        pwr: p.PIN_23,
        cs: p.PIN_25,
        dio: p.PIN_24,
        clk: p.PIN_29,
        pio: p.PIO0,
        dma: p.DMA_CH0,
    };
    let (_net, mut control) = start_cyw43(spawner, pins).await;

    // Give a serial monitor time to attach before the first report.
    Timer::after(Duration::from_secs(2)).await;
    let version = picolet_device::cyw43_blob::version(&cyw43_setup::FW[..]).unwrap_or("unknown");
    let mac = control.address().await;
    log::info!("test-blink: CYW43439 up, firmware {version}");
    log::info!(
        "test-blink: MAC {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        mac[0],
        mac[1],
        mac[2],
        mac[3],
        mac[4],
        mac[5]
    );

    let mut next_scan = Instant::now();
    loop {
        for step in LedState::BringUp.pattern() {
            control.gpio_set(0, step.on).await;
            Timer::after(Duration::from_millis(u64::from(step.ms))).await;
        }
        if Instant::now() >= next_scan {
            scan(&mut control).await;
            next_scan = Instant::now() + Duration::from_secs(10);
        }
    }
}

async fn scan(control: &mut cyw43::Control<'static>) {
    let mut scanner = control.scan(Default::default()).await;
    let mut count = 0u32;
    while let Some(bss) = scanner.next().await {
        let len = usize::from(bss.ssid_len).min(bss.ssid.len());
        let ssid = core::str::from_utf8(&bss.ssid[..len]).unwrap_or("<non-UTF-8 SSID>");
        log::info!(
            "test-blink: scan: {ssid:32} channel {}",
            bss.chanspec & 0xff
        );
        count += 1;
    }
    log::info!("test-blink: scan done, {count} networks");
}
