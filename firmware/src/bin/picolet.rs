//! The picolet node agent on a Pico W: joins Wi-Fi, becomes a node of the cluster over mutual
//! TLS (embedded-tls, pinned CA, server name checked), follows its ConfigMap into the 1 KB memory
//! region, and serves the kubelet endpoints on :10250 (plain HTTP for now).
//!
//! The node itself is `picolet_firmware::node` (shared with `picolet-serial`); this file is the
//! Wi-Fi link: the CYW43439, its supervisor (join with backoff, DHCP, RSSI), the LED and the
//! watchdog. Settings come from the flash configuration sector (`picolet board-config`) or else
//! from `config_local.toml` at build time (see the README).

#![no_std]
#![no_main]

use embassy_executor::Spawner;
use embassy_net::StackResources;
use embassy_rp::clocks::RoscRng;
use embassy_rp::watchdog::Watchdog;
use embassy_time::{Duration, Instant, Timer};
use picolet_device::led::LedState;
use picolet_firmware::node::{self, Link, NodeSettings};
use picolet_firmware::{Cyw43Pins, start_cyw43, start_usb_log};
use static_cell::{ConstStaticCell, StaticCell};

use panic_halt as _;

mod config {
    include!(concat!(env!("OUT_DIR"), "/config.rs"));
}

const INSTANCE_TYPE: &str = "raspberry-pi-pico-w";
const OS_IMAGE: &str = concat!(
    "picolet ",
    env!("CARGO_PKG_VERSION"),
    " (Raspberry Pi Pico W)"
);

#[embassy_executor::task]
async fn net_task(mut runner: embassy_net::Runner<'static, cyw43::NetDriver<'static>>) -> ! {
    runner.run().await
}

#[embassy_executor::main]
async fn main(spawner: Spawner) {
    let p = embassy_rp::init(Default::default());
    let mut watchdog = Watchdog::new(p.WATCHDOG);
    watchdog.start(Duration::from_secs(8));
    start_usb_log(spawner, p.USB);
    let pins = Cyw43Pins {
        pwr: p.PIN_23,
        cs: p.PIN_25,
        dio: p.PIN_24,
        clk: p.PIN_29,
        pio: p.PIO0,
        dma: p.DMA_CH0,
    };
    let (net_device, mut control) = start_cyw43(spawner, pins).await;
    watchdog.feed(Duration::from_secs(8));
    let board = node::load_board_config(config::BUILT_IN).filter(|b| {
        if b.wifi_ssid.is_empty() {
            log::error!("config: no Wi-Fi network (wifi_ssid) for this Wi-Fi firmware");
        }
        !b.wifi_ssid.is_empty()
    });
    let Some(board) = board else {
        // Nothing to join: show the error pattern, and keep the watchdog fed (a reboot would
        // not help; flashing a configuration does).
        loop {
            for step in LedState::Error.pattern() {
                control.gpio_set(0, step.on).await;
                watchdog.feed(Duration::from_secs(8));
                Timer::after(Duration::from_millis(u64::from(step.ms))).await;
            }
        }
    };
    static SETTINGS: StaticCell<NodeSettings> = StaticCell::new();
    let settings: &'static NodeSettings = SETTINGS.init(NodeSettings {
        board,
        instance_type: INSTANCE_TYPE,
        os_image: OS_IMAGE,
    });

    let seed = rand_core::RngCore::next_u64(&mut RoscRng);
    static RESOURCES: ConstStaticCell<StackResources<5>> =
        ConstStaticCell::new(StackResources::new());
    let (stack, net_runner) = embassy_net::new(
        net_device,
        embassy_net::Config::dhcpv4(Default::default()),
        RESOURCES.take(),
        seed,
    );
    spawner.spawn(net_task(net_runner).unwrap());
    node::start(spawner, stack, settings, Link::Wifi);
    let (ssid, password) = (settings.board.wifi_ssid, settings.board.wifi_password);

    // Supervisor: keeps Wi-Fi joined (with backoff), follows DHCP address changes, reads the
    // RSSI, shows the state on the LED, and feeds the watchdog while the control task makes
    // progress.
    let mut address: Option<embassy_net::Ipv4Address> = None;
    let mut join_backoff_s = 1u64;
    let mut rssi_at = Instant::now();
    loop {
        if !stack.is_link_up() {
            watchdog.feed(Duration::from_secs(8));
            let options = cyw43::JoinOptions::new(password.as_bytes());
            match control.join(ssid, options).await {
                Ok(()) => {
                    node::note_link_up();
                    join_backoff_s = 1;
                    log::info!("wifi: joined {ssid}");
                }
                Err(e) => {
                    log::warn!("wifi: join failed: {e:?}; retrying in {join_backoff_s} s");
                    for _ in 0..join_backoff_s {
                        watchdog.feed(Duration::from_secs(8));
                        Timer::after(Duration::from_secs(1)).await;
                    }
                    join_backoff_s = (join_backoff_s * 2).min(30);
                }
            }
        }
        let now_address = stack.config_v4().map(|c| c.address.address());
        if now_address != address {
            if let Some(a) = now_address {
                node::set_address(a);
            }
            address = now_address;
        }
        if stack.is_link_up() && rssi_at.elapsed() > Duration::from_secs(10) {
            node::note_rssi(control.get_rssi().await);
            rssi_at = Instant::now();
        }
        for step in node::led_state(stack.is_link_up()).pattern() {
            control.gpio_set(0, step.on).await;
            Timer::after(Duration::from_millis(u64::from(step.ms))).await;
        }
        if node::control_alive() {
            watchdog.feed(Duration::from_secs(8));
        }
    }
}
