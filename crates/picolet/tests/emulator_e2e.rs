//! The real firmware binary against the real control plane: the generic `picolet-serial` ELF
//! (built for thumbv6m with no configuration compiled in) runs in the rp2040js RP2040 emulator
//! (`emulator/run.mjs`) with the board configuration UF2 that `picolet board-config` made from
//! this test's enrolment, its UART bridged by `picolet link` to a throwaway kube-apiserver.
//!
//! It proves that the ARM binary boots, does mutual TLS, becomes a Ready node, follows its
//! ConfigMap into the 1 KB region (read from emulated SRAM and over the kubelet port), and that
//! the node goes NotReady when the emulator stops. It prints the figures the README quotes
//! (`scripts/emulator.sh` runs it alone): TLS handshake time, cycles per heartbeat,
//! ConfigMap-to-memory latency, stack high-water mark, peak RAM and the longest stretch with
//! interrupts masked.
//!
//! `#[ignore]`d for a plain `cargo test`: it needs the control plane, Node.js with the emulator's
//! npm packages, and the firmware toolchain; `scripts/test.sh` provides them all.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use picolet_device::led::{LedState, Step};
use serde_json::{Value, json};
use testplane::{ControlPlane, KubectlProxy};

mod common;

use common::{
    client_cert, enrol, free_port, https_get, kubectl, kubectl_try, metric, other_ca, parse_memory,
    plane, wait_for,
};

const NODE: &str = "pico-emu-1";
/// The plain Pico's LED.
const LED_PIN: u32 = 25;
/// The longest the firmware may keep interrupts masked, in device microseconds (see the test).
const MASKED_MAX_US: f64 = 500.0;

/// One emulated board at a time: rp2040js needs a core of its own to keep emulated time near
/// the chip's pace (CI machines have two), and the tests measure timing.
fn one_board_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Builds the generic `picolet-serial` (no configuration compiled in: each board's comes from
/// its flash configuration sector) once per test run, and returns the ELF's path.
fn generic_firmware() -> PathBuf {
    static ELF: OnceLock<PathBuf> = OnceLock::new();
    ELF.get_or_init(|| {
        let out = Command::new(repo().join("scripts/firmware-cargo.sh"))
            .args(["build", "--release", "--bin", "picolet-serial"])
            .current_dir(repo().join("firmware"))
            .env("PICOLET_FIRMWARE_CONFIG", "none")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "firmware build failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // A copy: the firmware target directory is shared with `scripts/firmware.sh`.
        let elf =
            std::env::temp_dir().join(format!("picolet-serial-generic-{}.elf", std::process::id()));
        std::fs::copy(
            repo().join("firmware/target/thumbv6m-none-eabi/release/picolet-serial"),
            &elf,
        )
        .unwrap();
        elf
    })
    .clone()
}

/// `picolet board-config` for the enrolled board, reaching the API server through the link.
fn board_config_uf2(plane: &ControlPlane, creds: &Path) -> PathBuf {
    let uf2 = plane.dir().join("board-config.uf2");
    let out = Command::new(env!("CARGO_BIN_EXE_picolet"))
        .args([
            "board-config",
            "--api-server",
            "10.42.0.1:6443",
            "--credentials",
        ])
        .arg(creds)
        .arg("--out")
        .arg(&uf2)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "board-config failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    uf2
}

/// Whether the latest level changes of a pin (two cycles' worth) follow an LED pattern
/// (cyclically, within 20 ms per step; the still-open last interval is left out).
fn follows_pattern(edges: &[Value], pattern: &[Step]) -> bool {
    let recent = &edges[edges.len().saturating_sub(pattern.len() * 2 + 2)..];
    let observed: Vec<(bool, f64)> = recent
        .windows(2)
        .map(|w| {
            let ms = (w[1]["nanos"].as_f64().unwrap() - w[0]["nanos"].as_f64().unwrap()) / 1e6;
            (w[0]["high"].as_bool().unwrap(), ms)
        })
        .skip(1)
        .collect();
    if observed.len() < pattern.len() {
        return false;
    }
    (0..pattern.len()).any(|start| {
        observed.iter().enumerate().all(|(i, &(high, ms))| {
            let step = pattern[(start + i) % pattern.len()];
            step.on == high && (ms - f64::from(step.ms)).abs() <= 20.0
        })
    })
}

/// The emulator harness: commands on its stdin, JSON lines back.
struct Emulator {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<Value>,
}

impl Emulator {
    /// Starts the ELF in the emulator, with UF2 images written to flash first; returns it with
    /// the loopback port of its UART.
    fn start(elf: &Path, uf2: &[&Path]) -> (Emulator, u16) {
        let mut cmd = Command::new("node");
        cmd.arg(repo().join("emulator/run.mjs"))
            .arg("--elf")
            .arg(elf);
        for image in uf2 {
            cmd.arg("--flash-uf2").arg(image);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("node runs (scripts/install-deps.sh installs it)");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && tx.send(v).is_err()
                {
                    break;
                }
            }
        });
        let mut emu = Emulator {
            child,
            stdin,
            lines,
        };
        let first = emu.next(Duration::from_secs(20));
        assert_eq!(first["event"], "listening", "emulator said {first}");
        let port = first["uartPort"].as_u64().unwrap() as u16;
        (emu, port)
    }

    fn next(&mut self, timeout: Duration) -> Value {
        let v = self
            .lines
            .recv_timeout(timeout)
            .unwrap_or_else(|e| panic!("emulator silent: {e}"));
        assert_ne!(v["event"], "fault", "firmware fault in the emulator: {v}");
        v
    }

    /// Sends a command and returns its reply.
    fn ask(&mut self, cmd: Value) -> Value {
        writeln!(self.stdin, "{cmd}").unwrap();
        loop {
            let v = self.next(Duration::from_secs(20));
            if v.get("reply").is_some() {
                return v;
            }
        }
    }

    /// The 1 KB memory region as it is in emulated SRAM, and the emulated time (ns) then.
    fn region_at(&mut self) -> Option<(Vec<u8>, f64)> {
        let r = self.ask(json!({"cmd": "region"}));
        let hex = r["hex"].as_str()?;
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        Some((bytes, r["nanos"].as_f64()?))
    }

    fn region(&mut self) -> Option<Vec<u8>> {
        self.region_at().map(|(bytes, _)| bytes)
    }

    fn stats(&mut self) -> Value {
        self.ask(json!({"cmd": "stats"}))
    }

    /// The last level changes of an output pin.
    fn edges(&mut self, pin: u32) -> Vec<Value> {
        let r = self.ask(json!({"cmd": "edges", "pin": pin}));
        r["edges"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A background process killed on drop.
struct Background(Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ready(plane: &ControlPlane) -> String {
    let jsonpath = "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}";
    kubectl_try(plane, &["get", "nodes", NODE, "-o", jsonpath]).1
}

/// `kubectl patch` of the ConfigMap's `memory_values`.
fn patch_values(plane: &ControlPlane, values: &str) {
    let patch = format!(r#"{{"data":{{"memory_values":"{values}"}}}}"#);
    kubectl(
        plane,
        &[
            "patch",
            "configmap",
            "pico-config",
            "--type=merge",
            "-p",
            &patch,
        ],
    );
}

/// The board's kubelet port over TLS (its own server), verified as `NODE` by the cluster CA,
/// with a client certificate the plane's CA issued (in `system:masters`, so the board's
/// SubjectAccessReviews allow it).
struct KubeletClient {
    port: u16,
    ca: String,
    cert: (String, String),
}

impl KubeletClient {
    fn get(&self, path: &str) -> String {
        https_get(self.port, &self.ca, NODE, Some(&self.cert), path)
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
#[ignore = "needs the control plane, Node.js and the firmware toolchain; run by scripts/test.sh"]
fn the_firmware_binary_in_the_emulator_is_a_node_of_the_real_control_plane() {
    let _board = one_board_at_a_time();
    let plane = plane();
    let creds = enrol(&plane, NODE);
    let elf = generic_firmware();
    let config = board_config_uf2(&plane, &creds);

    let booted = Instant::now();
    let (mut emu, uart_port) = Emulator::start(&elf, &[&config]);
    let kubelet_port = free_port();
    let api = plane.server().trim_start_matches("https://").to_string();
    let start_link = || {
        Background(
            Command::new(env!("CARGO_BIN_EXE_picolet"))
                .args(["link", "--serial-tcp", &format!("127.0.0.1:{uart_port}")])
                .args(["--api-server", &api])
                .args([
                    "--kubelet-listen",
                    &format!("{}:{kubelet_port}", common::node_ip()),
                ])
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let link = start_link();

    // Boot, PPP, two TLS handshakes, registration: Ready.
    wait_for("the emulated node Ready", Duration::from_secs(120), || {
        ready(&plane) == "True"
    });
    let boot_to_ready = booted.elapsed();
    // The board asks for a kubelet-serving certificate for its own key; approve it, as an
    // administrator would (`picolet approve` checks it is the node's own name and address).
    let approve = Command::new(env!("CARGO_BIN_EXE_picolet"))
        .args([
            "approve",
            "--node-name",
            NODE,
            "--wait",
            "120",
            "--kubeconfig",
        ])
        .arg(plane.admin_kubeconfig())
        .output()
        .unwrap();
    assert!(
        approve.status.success(),
        "{}{}",
        String::from_utf8_lossy(&approve.stdout),
        String::from_utf8_lossy(&approve.stderr)
    );
    let ca = std::fs::read_to_string(plane.dir().join("ca.crt")).unwrap();
    let ca_key = std::fs::read_to_string(plane.dir().join("ca.key")).unwrap();
    let kubelet = KubeletClient {
        port: kubelet_port,
        cert: client_cert(
            &ca,
            &ca_key,
            "picolet-emulator-test",
            "system:masters",
            false,
        ),
        ca,
    };
    wait_for(
        "the board's kubelet port serving its issued certificate",
        Duration::from_secs(120),
        || {
            https_get(kubelet_port, &kubelet.ca, NODE, None, "/healthz")
                .is_ok_and(|r| r.ends_with("ok"))
        },
    );
    // One authorized request: the board's TLS server handshake (ECDHE, its signature, two
    // verifications of the caller's certificate) plus a SubjectAccessReview, in device time.
    let t0 = emu.stats()["nanos"].as_f64().unwrap();
    let first = kubelet.get("/metrics");
    let kubelet_request_ms = (emu.stats()["nanos"].as_f64().unwrap() - t0) / 1e6;
    // The first API handshake, alone on the CPU (the watch connects after registration).
    let handshake_s = metric(&first, "picolet_api_tls_handshake_seconds");
    // Anonymous callers get /healthz only; strangers' certificates fail the handshake.
    let anon = https_get(kubelet_port, &kubelet.ca, NODE, None, "/memory").unwrap();
    assert!(anon.starts_with("HTTP/1.1 401 "), "{anon}");
    let (other, other_key) = other_ca();
    let stranger = client_cert(
        &other,
        &other_key,
        "system:kube-apiserver",
        "system:masters",
        false,
    );
    assert!(https_get(kubelet_port, &kubelet.ca, NODE, Some(&stranger), "/memory").is_err());
    assert!(handshake_s > 0.0);
    // A service-account token, as metrics-server presents it: the board has the API server
    // review the token (its ~1 KiB JWT fits the board's request head), then authorizes the
    // account's user for nodes/metrics.
    kubectl(&plane, &["create", "serviceaccount", "scraper"]);
    common::grant_service_account(&plane, "scraper", "nodes/metrics");
    let token = kubectl(&plane, &["create", "token", "scraper"]);
    let bearer = format!("Bearer {}", token.trim());
    let auth = [("Authorization", bearer.as_str())];
    let scraped = common::https_request(
        kubelet_port,
        &kubelet.ca,
        NODE,
        None,
        &auth,
        "/metrics/resource",
    )
    .unwrap();
    assert!(
        scraped.starts_with("HTTP/1.1 200 OK") && scraped.contains("node_cpu_usage_seconds_total"),
        "{scraped}"
    );
    let proxy = common::https_request(kubelet_port, &kubelet.ca, NODE, None, &auth, "/memory");
    assert!(
        proxy.unwrap().starts_with("HTTP/1.1 403 "),
        "nodes/proxy not granted"
    );
    let node: Value =
        serde_json::from_str(&kubectl(&plane, &["get", "node", NODE, "-o", "json"])).unwrap();
    assert_eq!(node["metadata"]["labels"]["kubernetes.io/arch"], "arm");
    assert_eq!(
        node["metadata"]["labels"]["node.kubernetes.io/instance-type"],
        "raspberry-pi-pico"
    );
    assert!(
        node["status"]["nodeInfo"]["osImage"]
            .as_str()
            .unwrap()
            .contains("PPP link"),
        "{}",
        node["status"]["nodeInfo"]
    );
    assert_eq!(node["status"]["addresses"][0]["address"], "10.42.0.2");

    // ConfigMap -> the region in emulated SRAM, and the same bytes over the kubelet port.
    kubectl(
        &plane,
        &[
            "create",
            "configmap",
            "pico-config",
            "--from-literal=memory_values=0=0x42,1=0x43,2=0xFF",
        ],
    );
    let mut sram = None;
    wait_for(
        "the ConfigMap in emulated SRAM",
        Duration::from_secs(30),
        || {
            sram = emu.region();
            sram.as_ref()
                .is_some_and(|m| m[..4] == [0x42, 0x43, 0xff, 0])
        },
    );
    let page = kubelet.get("/memory");
    let served = parse_memory(page.split_once('\n').unwrap().1).expect("a memory dump");
    assert_eq!(
        Some(served),
        sram,
        "kubelet /memory and emulated SRAM agree"
    );

    // Invalid values change nothing, in SRAM either.
    patch_values(&plane, "0=0x11,1024=0x22");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(emu.region(), sram, "a rejected update left SRAM as it was");

    // ConfigMap-to-memory latency: PATCH written -> byte in emulated SRAM, in device time (the
    // harness runs emulated time at the chip's pace) and in wall time (slower: rp2040js runs at
    // about half the chip's speed).
    let proxy = KubectlProxy::start(&plane).unwrap();
    let (mut device_ms, mut wall_ms) = (Vec::new(), Vec::new());
    for i in 0..10u8 {
        let value = 0x60 + i;
        let emu_start = emu.stats()["nanos"].as_f64().unwrap();
        let started = Instant::now();
        proxy.patch_configmap(
            "pico-config",
            &format!(r#"{{"data":{{"memory_values":"7=0x{value:02x}"}}}}"#),
        );
        let mut seen_at = 0.0;
        wait_for(
            "an update in emulated SRAM",
            Duration::from_secs(30),
            || {
                emu.region_at().is_some_and(|(m, at)| {
                    seen_at = at;
                    m[7] == value
                })
            },
        );
        wall_ms.push(started.elapsed().as_secs_f64() * 1e3);
        device_ms.push((seen_at - emu_start) / 1e6);
        std::thread::sleep(Duration::from_millis(300));
    }

    // Steady state: busy cycles per 10 s Lease period.
    let lease_puts = |_port| {
        let page = kubelet.get("/metrics");
        metric(
            &page,
            "picolet_api_requests_total{verb=\"PUT\",code=\"200\"}",
        )
    };
    // The cycle counts are taken inside the two kubelet requests that read the counters, so
    // that their TLS handshakes (about 3 s of CPU each) stay out of the window.
    let puts0 = lease_puts(kubelet_port);
    let s0 = emu.stats();
    std::thread::sleep(Duration::from_secs(40));
    let s1 = emu.stats();
    let puts1 = lease_puts(kubelet_port);
    let busy = s1["busyCycles"].as_f64().unwrap() - s0["busyCycles"].as_f64().unwrap();
    let heartbeats = puts1 - puts0;
    assert!(
        heartbeats >= 3.0,
        "Lease renewed every 10 s ({heartbeats} in 40 s)"
    );
    let window_s = (s1["nanos"].as_f64().unwrap() - s0["nanos"].as_f64().unwrap()) / 1e9;

    // After a quiet steady state, the LED shows Ready. (Quiet: a TLS handshake on the kubelet
    // port keeps the CPU for about a second of P-256 arithmetic, which delays the LED task.)
    std::thread::sleep(Duration::from_secs(7));
    let led = emu.edges(LED_PIN);
    assert!(
        follows_pattern(&led, LedState::Ready.pattern()),
        "the LED shows Ready: {led:?}"
    );

    // The host end of the link restarts (all its TCP state gone): the board negotiates a new PPP
    // session, reconnects, and follows the ConfigMap again at once, not after the watch's
    // 6-minute silence timeout.
    drop(link);
    let _link = start_link();
    patch_values(&plane, "7=0x99");
    wait_for(
        "the update after a link restart",
        Duration::from_secs(60),
        || emu.region().is_some_and(|m| m[7] == 0x99),
    );
    wait_for(
        "Ready after a link restart",
        Duration::from_secs(30),
        || ready(&plane) == "True",
    );

    // The firmware's own view of its memory agrees with the emulator's.
    let metrics = kubelet.get("/metrics");
    for outcome in ["unauthenticated", "tls_failure", "served"] {
        assert!(
            metric(
                &metrics,
                &format!("picolet_kubelet_requests_total{{outcome=\"{outcome}\"}}")
            ) >= 1.0,
            "{outcome}"
        );
    }
    let stats = emu.stats();
    let stack_high = stats["stackHighWaterBytes"].as_f64().unwrap();
    let static_ram = stats["staticRamBytes"].as_f64().unwrap();
    assert_eq!(
        metric(&metrics, "picolet_device_static_ram_bytes"),
        static_ram
    );
    let reported_high = metric(&metrics, "picolet_device_stack_high_water_bytes");
    assert!(
        reported_high > 0.0 && reported_high <= stack_high,
        "firmware reports {reported_high} B of stack, emulator saw {stack_high} B"
    );
    let deepest = emu.ask(json!({"cmd": "deepest"}));
    assert!(
        stack_high <= picolet_device::stack::RESERVE_BYTES as f64,
        "measured stack {stack_high} B exceeds the budget's reserve ({} B): raise it in \
         picolet_device::stack::RESERVE_BYTES and check the RAM budget; deepest point: {deepest}",
        picolet_device::stack::RESERVE_BYTES
    );
    // Device CPU time (the executor's busy time, on /metrics/resource) against the emulator's
    // count of every executed cycle (which also covers interrupt handlers).
    let resource = kubelet.get("/metrics/resource");
    let device_cpu = resource
        .lines()
        .find_map(|l| l.strip_prefix("node_cpu_usage_seconds_total "))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .expect("node_cpu_usage_seconds_total on /metrics/resource");
    let emulated_cpu = emu.stats()["busyCycles"].as_f64().unwrap() / 125e6;
    assert!(
        device_cpu > 0.5 * emulated_cpu && device_cpu <= emulated_cpu * 1.02,
        "device CPU {device_cpu} s vs {emulated_cpu} s of executed cycles"
    );

    println!("\nEmulated RP2040 (rp2040js, Cortex-M0+ at 125 MHz), picolet-serial firmware:");
    println!(
        "  boot to Ready (wall clock):            {:.1} s",
        boot_to_ready.as_secs_f64()
    );
    println!(
        "  TLS handshake with the API server:     {:.0} ms device time (at most {:.0} M cycles)",
        handshake_s * 1e3,
        handshake_s * 125.0
    );
    println!(
        "  kubelet-port request over TLS:         {kubelet_request_ms:.0} ms device time \
         (server handshake with client certificate, authorization, /metrics)"
    );
    println!(
        "  busy cycles per heartbeat (10 s):      {:.2} M ({:.0} Leases in {window_s:.0} s, \
         {:.2} % CPU)",
        busy / heartbeats / 1e6,
        heartbeats,
        busy / (window_s * 125e6) * 100.0
    );
    println!(
        "  ConfigMap PATCH -> emulated SRAM:      median {:.0} ms device time, max {:.0} ms \
         (wall: median {:.0} ms; 10 updates)",
        median(device_ms.clone()),
        device_ms.iter().cloned().fold(0.0, f64::max),
        median(wall_ms)
    );
    println!(
        "  CPU since boot, device vs emulator:    {device_cpu:.2} s (executor busy time) vs \
         {emulated_cpu:.2} s (all executed cycles)"
    );
    println!(
        "  stack high-water mark:                 {stack_high:.0} B (reserve {} B)",
        picolet_device::stack::RESERVE_BYTES
    );
    println!(
        "  peak RAM (static + stack):             {:.0} B = {:.1} KiB of 264 KiB",
        static_ram + stack_high,
        (static_ram + stack_high) / 1024.0
    );
    let masked_us = stats["maskedMaxNanos"].as_f64().unwrap() / 1e3;
    println!(
        "  longest with interrupts masked:        {masked_us:.0} µs device time (from {} to {})",
        stats["maskedMaxFrom"], stats["maskedMaxTo"]
    );
    // A real board must not mask interrupts for long: the UART's 32-byte receive FIFO fills in
    // 2.8 ms at 115200 baud (PPP frames are lost after that), and USB and the CYW43's DMA want
    // far less. Heavy work (key generation, CSR signing, /metrics) runs outside any critical
    // section; what remains are short sections in embassy and the agent's signals.
    assert!(
        masked_us < MASKED_MAX_US,
        "interrupts masked for {masked_us:.0} µs (bound {MASKED_MAX_US} µs), from {} to {}",
        stats["maskedMaxFrom"],
        stats["maskedMaxTo"]
    );

    // Stopping the board (the emulator) makes the node NotReady.
    drop(emu);
    wait_for(
        "the node NotReady (Unknown)",
        Duration::from_secs(90),
        || ready(&plane) == "Unknown",
    );
}

#[test]
#[ignore = "needs Node.js and the firmware toolchain; run by scripts/test.sh"]
fn a_generic_firmware_without_configuration_waits_showing_the_error_pattern() {
    let _board = one_board_at_a_time();
    let (mut emu, _) = Emulator::start(&generic_firmware(), &[]);
    std::thread::sleep(Duration::from_secs(6));
    let led = emu.edges(LED_PIN);
    assert!(
        follows_pattern(&led, LedState::Error.pattern()),
        "the LED shows the error pattern: {led:?}"
    );
    let stats = emu.stats();
    assert_eq!(
        stats["uartTxBytes"], 0,
        "no link is started without a configuration"
    );
    // Still running, not reset by the watchdog (a fault would have ended the harness).
    assert!(stats["nanos"].as_f64().unwrap() > 5e9);
}

/// The generic firmware with a board configuration in the emulator, linked to the plane.
fn board(plane: &ControlPlane, config: &Path) -> (Emulator, Background) {
    let (emu, uart_port) = Emulator::start(&generic_firmware(), &[config]);
    let api = plane.server().trim_start_matches("https://").to_string();
    let link = Background(
        Command::new(env!("CARGO_BIN_EXE_picolet"))
            .args(["link", "--serial-tcp", &format!("127.0.0.1:{uart_port}")])
            .args(["--api-server", &api])
            .args([
                "--kubelet-listen",
                &format!("{}:{}", common::node_ip(), free_port()),
            ])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    (emu, link)
}

/// The first CSR whose name starts with `prefix` (and, with `issued`, carries a certificate).
fn find_csr(plane: &ControlPlane, prefix: &str, issued: bool) -> Option<Value> {
    let list: Value = serde_json::from_str(&kubectl(plane, &["get", "csr", "-o", "json"])).unwrap();
    list["items"]
        .as_array()?
        .iter()
        .find(|c| {
            c["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with(prefix))
                && (!issued || c["status"]["certificate"].is_string())
        })
        .cloned()
}

/// The public key (uncompressed point) in a certificate or CSR given as PEM text.
fn public_key_of(pem: &[u8]) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    if let Ok(cert) = rustls_pki_types::CertificateDer::from_pem_slice(pem) {
        let (_, c) = x509_parser::parse_x509_certificate(&cert).unwrap();
        return c.public_key().subject_public_key.data.to_vec();
    }
    let csr = rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(pem).unwrap();
    let (_, r) = <x509_parser::certification_request::X509CertificationRequest as
        x509_parser::prelude::FromDer<'_, _>>::from_der(csr.as_ref())
    .unwrap();
    r.certification_request_info
        .subject_pki
        .subject_public_key
        .data
        .to_vec()
}

#[test]
#[ignore = "needs the control plane, Node.js and the firmware toolchain; run by scripts/test.sh"]
fn the_board_renews_its_client_certificate_with_its_own_key_and_stays_ready() {
    let _board = one_board_at_a_time();
    use base64::Engine;
    // Certificates usable for 5 minutes after issuance and due for renewal (70-80 % of
    // notBefore..notAfter) 2-3 minutes after it: the signer backdates notBefore by 5 minutes,
    // and before v1.22 notAfter too (10m certificates), since then not for short-lived ones
    // (5m certificates).
    // Every renewal reconnects both TLS connections: two handshakes, about 7 s of device CPU,
    // which the emulator (about half a real RP2040's speed) stretches to some 15 s of wall time
    // between two Leases. Kubernetes' own 40 s grace period, not the tests' shorter one, is
    // what the board must stay within. (With 7m30s certificates the board renewed every
    // 15-60 s, spent most of its time in handshakes and, on a slower machine, missed the grace
    // period: in the emulator's wall time, not on a board.)
    let plane = ControlPlane::start(testplane::Options {
        cluster_signing_duration: Some(
            if testplane::server_minor().unwrap() < 22 {
                "10m"
            } else {
                "5m"
            }
            .into(),
        ),
        node_monitor_grace_period_s: 40,
        ..testplane::Options::default()
    })
    .unwrap();
    let creds = enrol(&plane, NODE);
    let enrolled_pem = std::fs::read(creds.join("client.crt")).unwrap();
    let enrolled_key = public_key_of(&enrolled_pem);
    let expires = {
        use rustls_pki_types::pem::PemObject;
        let der = rustls_pki_types::CertificateDer::from_pem_slice(&enrolled_pem).unwrap();
        let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
        c.validity().not_after.timestamp()
    };
    let config = board_config_uf2(&plane, &creds);
    let (_emu, _link) = board(&plane, &config);
    wait_for("the emulated node Ready", Duration::from_secs(120), || {
        ready(&plane) == "True"
    });
    // The board's renewal: a CSR from system:node:NODE, auto-approved, issued, for a key the
    // board made (not the enrolled one).
    let mut renewal: Option<Value> = None;
    wait_for(
        "the board's client certificate renewal issued",
        Duration::from_secs(240),
        || {
            renewal = find_csr(&plane, &format!("picolet-{NODE}-client-"), true);
            renewal.is_some()
        },
    );
    let csr = renewal.unwrap();
    assert_eq!(csr["spec"]["username"], format!("system:node:{NODE}"));
    assert_eq!(csr["status"]["conditions"][0]["reason"], "AutoApproved");
    let b64 = base64::engine::general_purpose::STANDARD;
    let request = b64
        .decode(csr["spec"]["request"].as_str().unwrap())
        .unwrap();
    let issued = b64
        .decode(csr["status"]["certificate"].as_str().unwrap())
        .unwrap();
    assert_ne!(
        public_key_of(&request),
        enrolled_key,
        "a key made on the board"
    );
    assert_eq!(public_key_of(&issued), public_key_of(&request));
    // The board also asks for its serving certificate (left pending here); one request at a
    // time, so it may follow the renewal.
    wait_for(
        "the board's serving certificate request",
        Duration::from_secs(60),
        || find_csr(&plane, &format!("picolet-{NODE}-serving-"), false).is_some(),
    );

    // Past the enrolled certificate's expiry the board is still Ready, heartbeating with the
    // renewed one.
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    };
    std::thread::sleep(Duration::from_secs((expires - now() + 5).max(0) as u64));
    wait_for(
        "Ready, with a Lease renewed after the enrolled certificate expired",
        Duration::from_secs(60),
        || ready(&plane) == "True" && common::lease_renewed_at(&plane, NODE) > expires,
    );
}

#[test]
#[ignore = "needs the control plane, Node.js and the firmware toolchain; run by scripts/test.sh"]
fn a_board_joins_with_a_bootstrap_token_and_its_own_key() {
    let _board = one_board_at_a_time();
    // `picolet token` (no certificate, no key) → `picolet board-config` → the generic firmware:
    // the board makes its key, joins as system:bootstrap:ID, and becomes a Ready node.
    let plane = plane();
    let dir = plane.dir().join("join");
    common::token(&plane, NODE, &dir, 10);
    assert!(!dir.join("client.key").exists());
    let token = std::fs::read_to_string(dir.join("bootstrap-token")).unwrap();
    let config = board_config_uf2(&plane, &dir);
    let (_emu, _link) = board(&plane, &config);
    wait_for("the joined board Ready", Duration::from_secs(150), || {
        ready(&plane) == "True"
    });
    let join = find_csr(&plane, &format!("picolet-{NODE}-bootstrap-"), false)
        .expect("the board's bootstrap CSR");
    assert_eq!(
        join["spec"]["username"],
        format!("system:bootstrap:{}", &token[..6])
    );
    assert_eq!(join["status"]["conditions"][0]["reason"], "AutoApproved");
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let request = b64
        .decode(join["spec"]["request"].as_str().unwrap())
        .unwrap();
    let issued = b64
        .decode(join["status"]["certificate"].as_str().unwrap())
        .unwrap();
    assert_eq!(public_key_of(&issued), public_key_of(&request));
}
