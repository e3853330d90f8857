//! Hardware bring-up for a Pico W / WH: blinks the onboard LED (wired to the CYW43, so a blink
//! proves the Wi-Fi chip initialised), reports over USB serial the CYW43 firmware version and
//! MAC address, and scans for Wi-Fi networks every 10 s.

#![no_std]
#![no_main]

use cyw43_pio::{DEFAULT_CLOCK_DIVIDER, PioSpi};
use embassy_executor::Spawner;
use embassy_rp::bind_interrupts;
use embassy_rp::dma;
use embassy_rp::gpio::{Level, Output};
use embassy_rp::peripherals::{DMA_CH0, PIO0, USB};
use embassy_rp::pio::{self, Pio};
use embassy_rp::usb;
use embassy_time::{Duration, Instant, Timer};
use picolet_device::led::LedState;
use static_cell::StaticCell;

use panic_halt as _;

bind_interrupts!(struct Irqs {
    PIO0_IRQ_0 => pio::InterruptHandler<PIO0>;
    DMA_IRQ_0 => dma::InterruptHandler<DMA_CH0>;
    USBCTRL_IRQ => usb::InterruptHandler<USB>;
});

type Cyw43Spi = PioSpi<'static, PIO0, 0>;

#[embassy_executor::task]
async fn cyw43_task(runner: cyw43::Runner<'static, cyw43::SpiBus<Output<'static>, Cyw43Spi>>) -> ! {
    runner.run().await
}

#[embassy_executor::task]
async fn usb_log_task(driver: usb::Driver<'static, USB>) {
    embassy_usb_logger::run!(1024, log::LevelFilter::Info, driver);
}

#[embassy_executor::main]
async fn main(spawner: Spawner) {
    let p = embassy_rp::init(Default::default());
    spawner.spawn(usb_log_task(usb::Driver::new(p.USB, Irqs)).unwrap());

    let pwr = Output::new(p.PIN_23, Level::Low);
    let cs = Output::new(p.PIN_25, Level::High);
    let mut pio = Pio::new(p.PIO0, Irqs);
    let dma = dma::Channel::new(p.DMA_CH0, Irqs);
    let spi = PioSpi::new(
        &mut pio.common,
        pio.sm0,
        DEFAULT_CLOCK_DIVIDER,
        pio.irq0,
        cs,
        p.PIN_24,
        p.PIN_29,
        dma,
    );

    static STATE: StaticCell<cyw43::State> = StaticCell::new();
    let state = STATE.init(cyw43::State::new());
    let (_net, mut control, runner) =
        cyw43::new(state, pwr, spi, &cyw43_setup::FW, &cyw43_setup::NVRAM).await;
    spawner.spawn(cyw43_task(runner).unwrap());
    control.init(cyw43_setup::CLM).await;
    control
        .set_power_management(cyw43::PowerManagementMode::PowerSave)
        .await;

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
