//! `bench`: prints picolet's figures against the real control plane. Not a test: it asserts
//! nothing about speed, it measures and prints.
//!
//! - API requests and bytes per node per minute in steady state;
//! - ConfigMap change to memory-applied latency (median, p99), with watch and with polling;
//! - host agent RSS and CPU per node.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use testplane::{ControlPlane, KubectlProxy, Options};

#[derive(Parser)]
#[command(about = "Measure picolet against a real kube-apiserver and print the figures")]
struct Args {
    /// The picolet binary to measure.
    #[arg(long, default_value = "target/release/picolet")]
    picolet: PathBuf,
    /// Virtual Picos running at once.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Length of the steady-state window: 10 minutes holds one end of each 10-minute watch.
    #[arg(long, default_value_t = 600)]
    steady_seconds: u64,
    /// ConfigMap updates timed with the watch.
    #[arg(long, default_value_t = 50)]
    watch_samples: usize,
    /// ConfigMap updates timed with polling (each takes 30 s).
    #[arg(long, default_value_t = 10)]
    poll_samples: usize,
}

struct Node {
    name: String,
    child: Child,
    port: u16,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    testplane::free_port().expect("a free port on 127.0.0.1")
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out.split_once("\r\n\r\n")?.1.to_string())
}

/// Sums every sample of a metric family (all label sets) in a Prometheus page.
fn sum_metric(page: &str, family: &str) -> f64 {
    page.lines()
        .filter(|l| {
            l.starts_with(family) && matches!(l.as_bytes().get(family.len()), Some(b' ' | b'{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn metric_with(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn proc_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn kubectl(plane: &ControlPlane, args: &[&str]) {
    let out = plane.kubectl(args).expect("kubectl runs");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn memory_byte(port: u16, offset: usize) -> Option<u8> {
    let body = http_get(port, "/memory")?;
    let line = body.lines().nth(1 + offset / 16)?;
    let hex = line
        .split_once(':')?
        .1
        .split_whitespace()
        .nth(offset % 16)?;
    u8::from_str_radix(hex, 16).ok()
}

/// Delays before polled updates: evenly spread over the polling period (stratified), in a
/// shuffled order, so that few samples still cover every phase of the poll cycle.
fn stratified_delays(samples: usize, period: Duration) -> Vec<Duration> {
    let mut d: Vec<Duration> = (0..samples)
        .map(|i| period.mul_f64((i as f64 + 0.5) / samples as f64))
        .collect();
    let mut state = 0x5eed_u64;
    for i in (1..d.len()).rev() {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        d.swap(i, (state >> 33) as usize % (i + 1));
    }
    d
}

/// Times `samples` ConfigMap updates, from writing the PATCH to the byte showing up in the
/// region. `spread`: wait part of it before each update (see [`stratified_delays`]), so that
/// updates do not line up with the polling period.
fn latencies(
    proxy: &KubectlProxy,
    node: &Node,
    samples: usize,
    spread: Option<Duration>,
    timeout: Duration,
) -> Vec<f64> {
    let cm = format!("config-{}", node.name);
    let delays = spread
        .map(|p| stratified_delays(samples, p))
        .unwrap_or_default();
    let mut out = vec![];
    for i in 0..samples {
        let delay = delays.get(i).copied().unwrap_or_default();
        std::thread::sleep(delay);
        let value = (i % 200 + 1) as u8;
        let patch = format!(r#"{{"data":{{"memory_values":"7={value}"}}}}"#);
        let t0 = Instant::now();
        proxy.patch_configmap(&cm, &patch);
        loop {
            if memory_byte(node.port, 7) == Some(value) {
                let ms = t0.elapsed().as_secs_f64() * 1000.0;
                if spread.is_some() {
                    eprintln!(
                        "  update {i}: waited {:.1} s, applied after {:.1} s",
                        delay.as_secs_f64(),
                        ms / 1000.0
                    );
                }
                out.push(ms);
                break;
            }
            if t0.elapsed() > timeout {
                eprintln!("bench: update {i} not applied within {timeout:?}");
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    out.sort_by(f64::total_cmp);
    out
}

fn start_node(args: &Args, plane: &ControlPlane, i: usize, mode: &str) -> Node {
    let name = format!("bench-node-{i}");
    let creds = plane.dir().join(&name);
    let cm = format!("config-{name}");
    let out = Command::new(&args.picolet)
        .args(["enrol", "--node-name", &name, "--config-map", &cm, "--out"])
        .arg(&creds)
        .arg("--kubeconfig")
        .arg(plane.admin_kubeconfig())
        .output()
        .expect("picolet enrol runs");
    assert!(
        out.status.success(),
        "enrol: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    kubectl(
        plane,
        &[
            "create",
            "configmap",
            &cm,
            "--from-literal=memory_values=7=0",
        ],
    );
    let port = free_port();
    let log = std::fs::File::create(plane.dir().join(format!("{name}.log"))).unwrap();
    let child = Command::new(&args.picolet)
        .args([
            "run",
            "--kubelet-plain-http",
            "--config-map",
            &cm,
            "--config-mode",
            mode,
        ])
        .args(["--kubelet-port", &port.to_string(), "--credentials"])
        .arg(&creds)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("picolet run starts");
    Node { name, child, port }
}

fn wait_ready(plane: &ControlPlane, name: &str) {
    kubectl(
        plane,
        &[
            "wait",
            "--for=condition=Ready",
            &format!("node/{name}"),
            "--timeout=60s",
        ],
    );
}

fn main() {
    let args = Args::parse();
    if !Path::new(&args.picolet).exists() {
        eprintln!(
            "bench: {} not found; build with `cargo build --release -p picolet`",
            args.picolet.display()
        );
        std::process::exit(1);
    }
    let plane = ControlPlane::start(Options::default()).unwrap_or_else(|e| {
        eprintln!("bench: {e}");
        std::process::exit(1)
    });
    let nodes: Vec<Node> = (1..=args.nodes.max(1))
        .map(|i| start_node(&args, &plane, i, "watch"))
        .collect();
    for n in &nodes {
        wait_ready(&plane, &n.name);
    }
    println!(
        "picolet benchmark: {} virtual Picos against kube-apiserver v1.20.2 on 127.0.0.1",
        nodes.len()
    );
    // Let registration and the first list/watch settle before measuring steady state.
    std::thread::sleep(Duration::from_secs(15));
    let snap = |n: &Node| {
        let page = http_get(n.port, "/metrics").unwrap_or_default();
        (
            sum_metric(&page, "picolet_api_requests_total"),
            metric_with(&page, "picolet_api_bytes_total{direction=\"sent\"}"),
            metric_with(&page, "picolet_api_bytes_total{direction=\"received\"}"),
            // The agent's own CLOCK_PROCESS_CPUTIME_ID reading (nanosecond resolution).
            metric_with(&page, "process_cpu_seconds_total"),
        )
    };
    let before: Vec<_> = nodes.iter().map(snap).collect();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(args.steady_seconds));
    let minutes = t0.elapsed().as_secs_f64() / 60.0;
    let after: Vec<_> = nodes.iter().map(snap).collect();
    let n = nodes.len() as f64;
    let per_min = |f: fn(&(f64, f64, f64, f64)) -> f64| {
        before
            .iter()
            .zip(&after)
            .map(|(b, a)| f(a) - f(b))
            .sum::<f64>()
            / n
            / minutes
    };
    let rss: Vec<u64> = nodes.iter().map(|x| proc_rss_kib(x.child.id())).collect();
    println!("\nsteady state over {:.1} min, per node:", minutes);
    println!("  API requests per minute        {:8.1}", per_min(|s| s.0));
    println!(
        "  API bytes sent per minute      {:8.0}  (HTTP, before TLS)",
        per_min(|s| s.1)
    );
    println!(
        "  API bytes received per minute  {:8.0}  (HTTP, before TLS)",
        per_min(|s| s.2)
    );
    println!(
        "  CPU                            {:8.3} % of one core",
        per_min(|s| s.3) / 60.0 * 100.0
    );
    println!(
        "  RSS                            {:8.0} KiB (mean of {}; min {}, max {})",
        rss.iter().sum::<u64>() as f64 / n,
        rss.len(),
        rss.iter().min().unwrap(),
        rss.iter().max().unwrap()
    );

    let proxy = KubectlProxy::start(&plane).unwrap_or_else(|e| panic!("kubectl proxy: {e}"));
    let watch = latencies(
        &proxy,
        &nodes[0],
        args.watch_samples,
        None,
        Duration::from_secs(10),
    );
    if !watch.is_empty() {
        println!(
            "\nConfigMap PATCH written -> memory applied, watch ({} updates):",
            watch.len()
        );
        println!(
            "  median {:8.1} ms   p99 {:8.1} ms   max {:8.1} ms",
            percentile(&watch, 0.5),
            percentile(&watch, 0.99),
            watch[watch.len() - 1]
        );
    }
    drop(nodes);
    let poller = start_node(&args, &plane, 99, "poll");
    wait_ready(&plane, &poller.name);
    std::thread::sleep(Duration::from_secs(2));
    let poll = latencies(
        &proxy,
        &poller,
        args.poll_samples,
        Some(Duration::from_secs(30)),
        Duration::from_secs(40),
    );
    if !poll.is_empty() {
        println!(
            "\nConfigMap PATCH written -> memory applied, polling every 30 s ({} updates at spread phases):",
            poll.len()
        );
        println!(
            "  median {:8.1} ms   p99 {:8.1} ms   max {:8.1} ms",
            percentile(&poll, 0.5),
            percentile(&poll, 0.99),
            poll[poll.len() - 1]
        );
    }
}
