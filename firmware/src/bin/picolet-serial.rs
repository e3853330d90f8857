//! The picolet node agent on any Pico, reaching the cluster over PPP on a serial line instead of
//! Wi-Fi: UART0 (GP0 = TX, GP1 = RX, 115200 8N1) wired to a host that runs `picolet link` (or
//! `pppd`). Everything above the link — TLS, the agent, the kubelet port, the memory region — is
//! `picolet_firmware::node`, the same code as the Wi-Fi firmware. The RP2040 emulator test runs
//! this binary, since the emulator has no CYW43.
//!
//! The LED is the plain Pico's GP25. Settings come from the flash configuration sector
//! (`picolet board-config`) or else from `config_local.toml` at build time (Wi-Fi values are not
//! needed); `api_server` is the address the host answers on over PPP (10.42.0.1:6443 with
//! `picolet link`).

#![no_std]
#![no_main]

use embassy_executor::Spawner;
use embassy_futures::select::{Either, select};
use embassy_net::{Ipv4Cidr, Stack, StackResources, StaticConfigV4};
use embassy_rp::bind_interrupts;
use embassy_rp::clocks::RoscRng;
use embassy_rp::gpio::{Level, Output};
use embassy_rp::peripherals::UART0;
use embassy_rp::uart::{BufferedInterruptHandler, BufferedUart};
use embassy_rp::watchdog::Watchdog;
use embassy_time::{Duration, Timer};
use picolet_device::led::LedState;
use picolet_firmware::node::{self, Link, NodeSettings};
use picolet_firmware::start_usb_log;
use static_cell::{ConstStaticCell, StaticCell};

use panic_halt as _;

mod config {
    include!(concat!(env!("OUT_DIR"), "/config.rs"));
}

bind_interrupts!(struct UartIrqs {
    UART0_IRQ => BufferedInterruptHandler<UART0>;
});

/// The serial line's speed: what a Raspberry Pi's or a USB adapter's UART does without tuning.
const BAUD: u32 = 115_200;

const INSTANCE_TYPE: &str = "raspberry-pi-pico";
const OS_IMAGE: &str = concat!(
    "picolet ",
    env!("CARGO_PKG_VERSION"),
    " (Raspberry Pi Pico, PPP link)"
);

#[embassy_executor::task]
async fn net_task(mut runner: embassy_net::Runner<'static, embassy_net_ppp::Device<'static>>) -> ! {
    runner.run().await
}

/// Runs PPP over the UART. IPCP's result becomes the stack's address. A session that ends (the
/// host went away, LCP terminated) starts over after a second; so does one not up within 5 s:
/// ppproto never resends its Configure-Request, so a board that booted before its host (its
/// first request lost on the line) would otherwise wait forever.
#[embassy_executor::task]
async fn ppp_task(
    mut runner: embassy_net_ppp::Runner<'static>,
    mut uart: BufferedUart,
    stack: Stack<'static>,
) -> ! {
    loop {
        let config = embassy_net_ppp::Config {
            username: b"picolet",
            password: b"",
        };
        let session = runner.run(&mut uart, config, |ipv4| {
            let Some(address) = ipv4.address else {
                log::warn!("ppp: the host gave no address");
                return;
            };
            stack.set_config_v4(embassy_net::ConfigV4::Static(StaticConfigV4 {
                address: Ipv4Cidr::new(address, 32),
                gateway: ipv4.peer_address,
                dns_servers: heapless::Vec::new(),
            }));
            node::note_link_up();
            node::set_address(address);
        });
        let stalled = async {
            Timer::after(Duration::from_secs(5)).await;
            if stack.is_link_up() {
                core::future::pending::<()>().await;
            }
        };
        match select(session, stalled).await {
            Either::First(result) => {
                log::warn!("ppp: session ended: {result:?}");
                Timer::after(Duration::from_secs(1)).await;
            }
            Either::Second(()) => log::info!("ppp: no session after 5 s; starting over"),
        }
    }
}

#[embassy_executor::main]
async fn main(spawner: Spawner) {
    let p = embassy_rp::init(Default::default());
    let mut watchdog = Watchdog::new(p.WATCHDOG);
    watchdog.start(Duration::from_secs(8));
    start_usb_log(spawner, p.USB);
    let mut led = Output::new(p.PIN_25, Level::Low);
    let Some(board) = node::load_board_config(config::BUILT_IN) else {
        // Nothing to join: show the error pattern, and keep the watchdog fed (a reboot would
        // not help; flashing a configuration does).
        loop {
            for step in LedState::Error.pattern() {
                led.set_level(if step.on { Level::High } else { Level::Low });
                watchdog.feed(Duration::from_secs(8));
                Timer::after(Duration::from_millis(u64::from(step.ms))).await;
            }
        }
    };
    static SETTINGS: StaticCell<NodeSettings> = StaticCell::new();
    let settings = SETTINGS.init(NodeSettings {
        board,
        instance_type: INSTANCE_TYPE,
        os_image: OS_IMAGE,
    });

    static TX_BUF: ConstStaticCell<[u8; 1024]> = ConstStaticCell::new([0; 1024]);
    static RX_BUF: ConstStaticCell<[u8; 1024]> = ConstStaticCell::new([0; 1024]);
    let mut uart_config = embassy_rp::uart::Config::default();
    uart_config.baudrate = BAUD;
    let uart = BufferedUart::new(
        p.UART0,
        p.PIN_0,
        p.PIN_1,
        UartIrqs,
        TX_BUF.take(),
        RX_BUF.take(),
        uart_config,
    );

    // Two packets each way: the serial line, not buffering, is the bottleneck.
    static PPP_STATE: ConstStaticCell<embassy_net_ppp::State<2, 2>> =
        ConstStaticCell::new(embassy_net_ppp::State::new());
    let (device, ppp_runner) = embassy_net_ppp::new(PPP_STATE.take());
    let seed = rand_core::RngCore::next_u64(&mut RoscRng);
    static RESOURCES: ConstStaticCell<StackResources<5>> =
        ConstStaticCell::new(StackResources::new());
    let (stack, net_runner) = embassy_net::new(
        device,
        embassy_net::Config::default(),
        RESOURCES.take(),
        seed,
    );
    spawner.spawn(net_task(net_runner).unwrap());
    spawner.spawn(ppp_task(ppp_runner, uart, stack).unwrap());
    node::start(spawner, stack, settings, Link::Ppp);

    // Supervisor: the LED shows the state; the watchdog is fed while the control task makes
    // progress. PPP itself reconnects in `ppp_task`.
    loop {
        for step in node::led_state(stack.is_link_up()).pattern() {
            led.set_level(if step.on { Level::High } else { Level::Low });
            Timer::after(Duration::from_millis(u64::from(step.ms))).await;
        }
        if node::control_alive() {
            watchdog.feed(Duration::from_secs(8));
        }
    }
}
