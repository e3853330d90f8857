//! What the firmwares share: board wiring (interrupt bindings, bringing up the CYW43439 — the
//! Wi-Fi chip, and the LED on its GPIO 0 — and the USB CDC serial log) and the link-independent
//! node in [`node`], and its stack figures in [`stack`].

#![no_std]

pub mod certs;
pub mod cpu;
pub mod node;
pub mod stack;

use cyw43_pio::{DEFAULT_CLOCK_DIVIDER, PioSpi};
use embassy_executor::Spawner;
use embassy_rp::gpio::{Level, Output};
use embassy_rp::peripherals::{DMA_CH0, PIN_23, PIN_24, PIN_25, PIN_29, PIO0, USB};
use embassy_rp::pio::{self, Common, Pio};
use embassy_rp::{Peri, bind_interrupts, dma, usb};
use static_cell::StaticCell;

bind_interrupts!(pub struct Irqs {
    PIO0_IRQ_0 => pio::InterruptHandler<PIO0>;
    DMA_IRQ_0 => dma::InterruptHandler<DMA_CH0>;
    USBCTRL_IRQ => usb::InterruptHandler<USB>;
});

/// The pins and blocks wired to the CYW43439 on a Pico W.
pub struct Cyw43Pins {
    /// WL_ON: the chip's power.
    pub pwr: Peri<'static, PIN_23>,
    /// SPI chip select.
    pub cs: Peri<'static, PIN_25>,
    /// SPI data (shared in/out).
    pub dio: Peri<'static, PIN_24>,
    /// SPI clock.
    pub clk: Peri<'static, PIN_29>,
    /// The PIO block that runs the SPI.
    pub pio: Peri<'static, PIO0>,
    /// The DMA channel feeding it.
    pub dma: Peri<'static, DMA_CH0>,
}

type Cyw43Spi = PioSpi<'static, PIO0, 0>;

#[embassy_executor::task]
async fn cyw43_task(runner: cyw43::Runner<'static, cyw43::SpiBus<Output<'static>, Cyw43Spi>>) -> ! {
    runner.run().await
}

#[embassy_executor::task]
async fn usb_log_task(driver: usb::Driver<'static, USB>) {
    embassy_usb_logger::run!(1024, log::LevelFilter::Info, driver);
}

/// Starts the USB CDC serial log (`log` at info level; 115200 baud is nominal on USB).
pub fn start_usb_log(spawner: Spawner, usb: Peri<'static, USB>) {
    // Spawning fails only if the task already runs: a wiring error at boot, not a runtime one.
    spawner.spawn(usb_log_task(usb::Driver::new(usb, Irqs)).unwrap());
}

/// Powers up the CYW43439, loads its firmware, NVRAM and CLM (from `cyw43-setup`), starts its
/// runner, and returns the network device and the control handle (Wi-Fi, LED, RSSI).
pub async fn start_cyw43(
    spawner: Spawner,
    pins: Cyw43Pins,
) -> (cyw43::NetDriver<'static>, cyw43::Control<'static>) {
    let pwr = Output::new(pins.pwr, Level::Low);
    let cs = Output::new(pins.cs, Level::High);
    let pio = Pio::new(pins.pio, Irqs);
    // The PIO block must outlive the SPI that runs on it (dropping `Common` releases it).
    static PIO_COMMON: StaticCell<Common<'static, PIO0>> = StaticCell::new();
    let common = PIO_COMMON.init(pio.common);
    let dma = dma::Channel::new(pins.dma, Irqs);
    let spi = PioSpi::new(
        common,
        pio.sm0,
        DEFAULT_CLOCK_DIVIDER,
        pio.irq0,
        cs,
        pins.dio,
        pins.clk,
        dma,
    );
    // Not a ConstStaticCell: cyw43::State is not Sync. It is small (about 1 KiB).
    static STATE: StaticCell<cyw43::State> = StaticCell::new();
    let (net, mut control, runner) = cyw43::new(
        STATE.init(cyw43::State::new()),
        pwr,
        spi,
        &cyw43_setup::FW,
        &cyw43_setup::NVRAM,
    )
    .await;
    spawner.spawn(cyw43_task(runner).unwrap());
    control.init(cyw43_setup::CLM).await;
    control
        .set_power_management(cyw43::PowerManagementMode::PowerSave)
        .await;
    (net, control)
}
