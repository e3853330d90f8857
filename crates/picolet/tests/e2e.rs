//! End-to-end tests: the real `picolet` binary against a real kube-apiserver and
//! kube-controller-manager (v1.20.2, Node+RBAC authorization, NodeRestriction), driven with the
//! real kubectl. Each test starts its own throwaway control plane.
//!
//! They are `#[ignore]`d for a plain `cargo test` because they need the control plane binaries;
//! `scripts/test.sh` (the README's test command, and CI) builds those and runs them.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

mod common;

use common::{
    Agent, NODE, enrol, kubectl, kubectl_try, metric, parse_memory, plane, raw_http, ready,
    running_node, wait_for, wait_ready,
};
use testplane::ControlPlane;

/// Creates `pico-config` with `values` and waits until a plain-HTTP agent shows `expect`.
fn configure_direct(plane: &ControlPlane, agent: &Agent, values: &str, expect: &[(usize, u8)]) {
    let literal = format!("--from-literal=memory_values={values}");
    kubectl(plane, &["create", "configmap", "pico-config", &literal]);
    wait_memory(
        plane,
        Via::Direct(agent.port),
        expect,
        Duration::from_secs(10),
    );
}

/// Reads the memory region through the API server's node proxy (kubelet port, HTTPS).
fn memory(plane: &ControlPlane, node: &str) -> Option<Vec<u8>> {
    let (ok, text) = kubectl_try(
        plane,
        &[
            "get",
            "--raw",
            &format!("/api/v1/nodes/{node}/proxy/memory"),
        ],
    );
    if !ok {
        return None;
    }
    parse_memory(&text)
}

/// Reads the memory region straight from a `--kubelet-plain-http` agent's port.
fn memory_direct(port: u16) -> Option<Vec<u8>> {
    let resp = raw_http(port, b"GET /memory HTTP/1.1\r\n\r\n");
    parse_memory(resp.split("\r\n\r\n").nth(1)?)
}

/// Where a test reads the region: through the API server's node proxy (HTTPS kubelet port), or
/// directly from a plain-HTTP kubelet port (the proxy speaks only HTTPS to nodes).
#[derive(Clone, Copy)]
enum Via {
    Proxy,
    Direct(u16),
}

fn wait_memory(
    plane: &ControlPlane,
    via: Via,
    expect: &[(usize, u8)],
    timeout: Duration,
) -> Vec<u8> {
    let mut last = None;
    wait_for("memory region contents", timeout, || {
        last = match via {
            Via::Proxy => memory(plane, NODE),
            Via::Direct(port) => memory_direct(port),
        };
        last.as_ref()
            .is_some_and(|m| expect.iter().all(|&(i, v)| m[i] == v))
    });
    last.unwrap()
}

fn annotation(plane: &ControlPlane, node: &str, key: &str) -> String {
    let path = format!(
        "jsonpath={{.metadata.annotations.{}}}",
        key.replace('.', "\\.").replace('/', "\\/")
    );
    kubectl_try(plane, &["get", "node", node, "-o", &path]).1
}

fn events(plane: &ControlPlane) -> String {
    kubectl(
        plane,
        &[
            "get",
            "events",
            "-A",
            "-o",
            "custom-columns=REASON:.reason,TYPE:.type,OBJ:.involvedObject.name,MSG:.message",
        ],
    )
}

#[test]
#[ignore = "needs the control plane; run by scripts/test.sh"]
fn design_commands_and_configmap_flow_pass_verbatim() {
    let (plane, _creds, _agent) = running_node(&[]);

    // The original design's commands, verbatim.
    let nodes = kubectl(&plane, &["get", "nodes"]);
    let row = nodes
        .lines()
        .find(|l| l.starts_with(NODE))
        .expect("node listed");
    assert!(row.split_whitespace().nth(1) == Some("Ready"), "{nodes}");
    let describe = kubectl(&plane, &["describe", "node", NODE]);
    assert!(
        describe.contains("picolet.dev/no-containers=true:NoSchedule"),
        "{describe}"
    );
    assert!(describe.contains("kubernetes.io/arch=arm"), "{describe}");
    assert!(describe.contains("KubeletReady"), "{describe}");
    let jsonpath = kubectl(
        &plane,
        &[
            "get",
            "nodes",
            NODE,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ],
    );
    assert_eq!(jsonpath, "True");

    // Honest capacity and node info.
    let cap = kubectl(
        &plane,
        &[
            "get",
            "node",
            NODE,
            "-o",
            "jsonpath={.status.capacity.cpu} {.status.capacity.memory} {.status.allocatable.pods} {.status.nodeInfo.kubeletVersion} {.status.daemonEndpoints.kubeletEndpoint.Port}",
        ],
    );
    assert_eq!(
        cap.split_whitespace().collect::<Vec<_>>()[..4],
        ["2", "264Ki", "0", "v0.1.0+picolet"]
    );

    // The Lease: renewed by the node, owned by the Node.
    let lease = common::lease(
        &plane,
        NODE,
        "{.spec.holderIdentity} {.spec.leaseDurationSeconds} {.metadata.ownerReferences[0].kind}",
    );
    assert_eq!(lease, format!("{NODE} 40 Node"));

    // ConfigMap -> memory, create and patch, verbatim.
    kubectl(
        &plane,
        &[
            "create",
            "configmap",
            "pico-config",
            "--from-literal=memory_values=0=0x42,1=0x43,2=0xFF",
        ],
    );
    let m = wait_memory(
        &plane,
        Via::Proxy,
        &[(0, 0x42), (1, 0x43), (2, 0xff)],
        Duration::from_secs(10),
    );
    assert!(m[3..].iter().all(|&b| b == 0));
    kubectl(
        &plane,
        &[
            "patch",
            "configmap",
            "pico-config",
            "--type",
            "merge",
            "-p",
            r#"{"data":{"memory_values":"0=0xAA,1=0xBB,10=0xCC"}}"#,
        ],
    );
    let m = wait_memory(
        &plane,
        Via::Proxy,
        &[(0, 0xaa), (1, 0xbb), (2, 0), (10, 0xcc)],
        Duration::from_secs(10),
    );
    let rv = kubectl(
        &plane,
        &[
            "get",
            "configmap",
            "pico-config",
            "-o",
            "jsonpath={.metadata.resourceVersion}",
        ],
    );
    wait_for("Applied annotation", Duration::from_secs(10), || {
        annotation(&plane, NODE, "picolet.dev/config-applied-resource-version") == rv
    });
    assert_eq!(
        annotation(&plane, NODE, "picolet.dev/config-state"),
        "Applied"
    );
    let crc = annotation(&plane, NODE, "picolet.dev/memory-crc32");
    assert_eq!(crc, format!("0x{:08x}", crc32(&m)));
    wait_for("ConfigApplied event", Duration::from_secs(10), || {
        events(&plane).contains("ConfigApplied")
    });

    // Invalid update: memory unchanged, Event, annotation.
    kubectl(
        &plane,
        &[
            "patch",
            "configmap",
            "pico-config",
            "--type",
            "merge",
            "-p",
            r#"{"data":{"memory_values":"0=0x11,2000=1"}}"#,
        ],
    );
    wait_for("ConfigRejected event", Duration::from_secs(10), || {
        events(&plane).contains("ConfigRejected")
    });
    let ev = events(&plane);
    assert!(
        ev.lines().any(|l| l.contains("ConfigRejected")
            && l.contains("Warning")
            && l.contains("offset 2000")),
        "{ev}"
    );
    wait_for("Rejected annotation", Duration::from_secs(10), || {
        annotation(&plane, NODE, "picolet.dev/config-state") == "Rejected"
    });
    assert_eq!(
        memory(&plane, NODE).unwrap(),
        m,
        "memory unchanged by a rejected update"
    );
    assert_eq!(
        annotation(&plane, NODE, "picolet.dev/config-applied-resource-version"),
        rv
    );

    // Deletion keeps the last applied values and says so.
    kubectl(&plane, &["delete", "configmap", "pico-config"]);
    wait_for("Deleted annotation", Duration::from_secs(10), || {
        annotation(&plane, NODE, "picolet.dev/config-state") == "Deleted"
    });
    assert_eq!(memory(&plane, NODE).unwrap(), m);

    // Kubelet endpoints through the API server's node proxy.
    let metrics = common::via_proxy(&plane, NODE, "/metrics");
    for family in [
        "picolet_heartbeats_total",
        "picolet_api_requests_total",
        "picolet_watch_restarts_total",
        "picolet_config_applies_total",
        "picolet_config_rejects_total",
        "picolet_memory_region_crc32",
        "picolet_uptime_seconds",
    ] {
        assert!(
            metrics.contains(&format!("# TYPE {family} ")),
            "{family} missing:\n{metrics}"
        );
    }
    assert!(
        metrics.contains("picolet_config_rejects_total 1\n"),
        "{metrics}"
    );
    assert!(
        metric(&metrics, "picolet_api_bytes_total{direction=\"sent\"}") > 1000.0,
        "{metrics}"
    );
    assert!(
        metric(&metrics, "picolet_api_bytes_total{direction=\"received\"}") > 1000.0,
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("picolet_memory_region_crc32 {}\n", crc32(&m))),
        "{metrics}"
    );
    let resource = common::via_proxy(&plane, NODE, "/metrics/resource");
    let cpu_line = resource
        .lines()
        .find(|l| l.starts_with("node_cpu_usage_seconds_total "))
        .expect("cpu");
    let fields: Vec<&str> = cpu_line.split_whitespace().collect();
    assert!(
        fields[1].parse::<f64>().unwrap() > 0.0
            && fields[2].parse::<u64>().unwrap() > 1_700_000_000_000,
        "{cpu_line}"
    );
    assert_eq!(common::via_proxy(&plane, NODE, "/healthz"), "ok");
    let pods = common::via_proxy(&plane, NODE, "/pods");
    assert!(
        pods.contains("\"kind\":\"PodList\"") && pods.contains("\"items\":[]"),
        "{pods}"
    );
}

/// CRC-32 (IEEE), as the agent reports it.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
#[ignore = "needs the control plane; run by scripts/test.sh"]
fn stopping_the_agent_makes_the_node_unknown_and_restarting_recovers() {
    let (plane, creds, mut agent) = running_node(&[]);
    let boot1 = kubectl(
        &plane,
        &[
            "get",
            "node",
            NODE,
            "-o",
            "jsonpath={.status.nodeInfo.bootID}",
        ],
    );
    agent.stop();
    wait_for("node NotReady/Unknown", Duration::from_secs(90), || {
        matches!(ready(&plane, NODE).as_str(), "Unknown" | "False")
    });
    let taints = kubectl(
        &plane,
        &["get", "node", NODE, "-o", "jsonpath={.spec.taints[*].key}"],
    );
    assert!(
        taints.contains("node.kubernetes.io/unreachable"),
        "{taints}"
    );
    // A restart adopts the existing Node (no AlreadyExists failure) and becomes Ready again.
    let mut agent = Agent::start(&creds, &[]);
    wait_ready(&plane, NODE);
    let boot2 = kubectl(
        &plane,
        &[
            "get",
            "node",
            NODE,
            "-o",
            "jsonpath={.status.nodeInfo.bootID}",
        ],
    );
    assert_ne!(boot1, boot2, "bootID changes on every boot");
    assert!(agent.alive(), "{}", agent.log());
}

#[test]
#[ignore = "needs the control plane; run by scripts/test.sh"]
fn survives_an_apiserver_restart() {
    let (mut plane, _creds, mut agent) = running_node(&["--kubelet-plain-http"]);
    configure_direct(&plane, &agent, "5=5", &[(5, 5)]);
    plane.stop_apiserver();
    std::thread::sleep(Duration::from_secs(12));
    // Still serving while the API server is gone, and still alive.
    assert!(raw_http(agent.port, b"GET /healthz HTTP/1.1\r\n\r\n").ends_with("\r\n\r\nok"));
    let metrics = raw_http(agent.port, b"GET /metrics HTTP/1.1\r\n\r\n");
    assert!(
        metric(&metrics, "picolet_heartbeats_total{result=\"failure\"}") >= 1.0,
        "{metrics}"
    );
    assert!(agent.alive(), "{}", agent.log());
    plane.start_apiserver().unwrap();
    wait_ready(&plane, NODE);
    kubectl(
        &plane,
        &[
            "patch",
            "configmap",
            "pico-config",
            "--type",
            "merge",
            "-p",
            r#"{"data":{"memory_values":"5=6"}}"#,
        ],
    );
    wait_memory(
        &plane,
        Via::Direct(agent.port),
        &[(5, 6)],
        Duration::from_secs(30),
    );
    let metrics = raw_http(agent.port, b"GET /metrics HTTP/1.1\r\n\r\n");
    assert!(
        metric(&metrics, "picolet_watch_restarts_total") >= 1.0,
        "the watch was re-established:\n{metrics}"
    );
}

#[test]
#[ignore = "needs the control plane; run by scripts/test.sh"]
fn polling_mode_follows_the_configmap() {
    let (plane, _creds, _agent) = running_node(&["--config-mode", "poll"]);
    kubectl(
        &plane,
        &[
            "create",
            "configmap",
            "pico-config",
            "--from-literal=memory_values=100=0x64",
        ],
    );
    wait_memory(&plane, Via::Proxy, &[(100, 0x64)], Duration::from_secs(40));
}

#[test]
#[ignore = "needs the control plane; run by scripts/test.sh"]
fn hostile_configmaps_are_rejected_in_bounded_memory() {
    let (plane, _creds, mut agent) = running_node(&["--kubelet-plain-http"]);
    configure_direct(&plane, &agent, "0=1", &[(0, 1)]);
    let rejects = |n: u32| {
        let m = raw_http(agent.port, b"GET /metrics HTTP/1.1\r\n\r\n");
        m.contains(&format!("picolet_config_rejects_total {n}\n"))
    };
    let dir = plane.dir().to_path_buf();
    // A 900 KB value.
    let big = dir.join("memory_values");
    std::fs::write(&big, "1".repeat(900 * 1024)).unwrap();
    let apply = |file: &Path| {
        let yaml = kubectl(
            &plane,
            &[
                "create",
                "configmap",
                "pico-config",
                &format!("--from-file=memory_values={}", file.display()),
                "--dry-run=client",
                "-o",
                "yaml",
            ],
        );
        let f = dir.join("cm.yaml");
        std::fs::write(&f, yaml).unwrap();
        kubectl(&plane, &["replace", "-f", f.to_str().unwrap()]);
    };
    apply(&big);
    wait_for("megabyte value rejected", Duration::from_secs(15), || {
        rejects(1)
    });
    // Thousands of entries.
    let many: Vec<String> = (0..2000).map(|i| format!("{}=1", i % 1024)).collect();
    std::fs::write(&big, many.join(",")).unwrap();
    apply(&big);
    wait_for(
        "thousands of entries rejected",
        Duration::from_secs(15),
        || rejects(2),
    );
    // Non-UTF-8 bytes: kubectl moves them to binaryData, so memory_values is missing from data.
    std::fs::write(&big, b"0=\xff\xfe").unwrap();
    apply(&big);
    wait_for("non-UTF-8 rejected", Duration::from_secs(15), || rejects(3));
    assert_eq!(
        memory_direct(agent.port).unwrap()[0],
        1,
        "memory unchanged after three hostile updates"
    );
    let ev = events(&plane);
    assert!(ev.contains("over the 16384-byte limit"), "{ev}");
    assert!(ev.contains("is set twice"), "{ev}");
    assert!(ev.contains("has no data.memory_values key"), "{ev}");
    assert!(agent.alive(), "{}", agent.log());
}

#[test]
#[ignore = "needs the control plane; run by scripts/test.sh"]
fn pods_bound_to_the_node_are_failed_honestly() {
    let (plane, _creds, _agent) = running_node(&[]);
    let pod = dir_file(
        &plane,
        "pod.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: nginx\nspec:\n  nodeName: {NODE}\n  containers:\n  - name: nginx\n    image: nginx\n"
        ),
    );
    kubectl(&plane, &["create", "-f", pod.to_str().unwrap()]);
    wait_for("pod Failed", Duration::from_secs(40), || {
        kubectl_try(
            &plane,
            &["get", "pod", "nginx", "-o", "jsonpath={.status.phase}"],
        )
        .1 == "Failed"
    });
    let status = kubectl(
        &plane,
        &[
            "get",
            "pod",
            "nginx",
            "-o",
            "jsonpath={.status.reason}: {.status.message}",
        ],
    );
    assert!(
        status.starts_with("NodeCannotRunContainers: ") && status.contains("cannot run containers"),
        "{status}"
    );
}

fn dir_file(plane: &ControlPlane, name: &str, contents: &str) -> PathBuf {
    let p = plane.dir().join(name);
    std::fs::write(&p, contents).unwrap();
    p
}

#[test]
#[ignore = "needs the control plane; run by scripts/test.sh"]
fn the_node_identity_reads_only_its_own_configmap() {
    let plane = plane();
    let creds = enrol(&plane, NODE);
    kubectl(
        &plane,
        &[
            "create",
            "configmap",
            "pico-config",
            "--from-literal=memory_values=",
        ],
    );
    kubectl(
        &plane,
        &["create", "configmap", "other", "--from-literal=x=y"],
    );
    let as_node = |args: &[&str]| {
        let out = Command::new(testplane::kubectl_path())
            .arg(format!(
                "--kubeconfig={}",
                creds.join("kubeconfig").display()
            ))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (ok, out) = as_node(&["get", "configmap", "pico-config", "-o", "name"]);
    assert!(ok, "{out}");
    let (ok, out) = as_node(&["get", "configmap", "other"]);
    assert!(
        !ok && out.contains("forbidden") && out.contains("system:node:pico-node-1"),
        "{out}"
    );
    let (ok, out) = as_node(&["get", "configmaps"]);
    assert!(!ok && out.contains("forbidden"), "{out}");
    // NodeRestriction: the node cannot touch another node.
    let (ok, out) = as_node(&["label", "node", NODE, "node-role.kubernetes.io/master="]);
    assert!(!ok, "self-set role labels are refused: {out}");
}

#[test]
#[ignore = "needs the control plane; run by scripts/test.sh"]
fn missing_credentials_give_a_clear_error_and_a_retry() {
    let plane = plane();
    let missing = plane.dir().join("no-such-credentials");
    let mut agent = Agent::start(&missing, &[]);
    wait_for("clear error", Duration::from_secs(10), || {
        agent.log().contains("picolet enrol")
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(agent.alive(), "keeps retrying: {}", agent.log());
    // Credentials appear: the agent picks them up on its next retry and registers.
    let creds = enrol(&plane, NODE);
    std::fs::rename(&creds, &missing).unwrap();
    wait_for(
        "node Ready after credentials appear",
        Duration::from_secs(60),
        || ready(&plane, NODE) == "True",
    );
}

#[test]
#[ignore = "needs the control plane; run by scripts/test.sh"]
fn the_kubelet_port_survives_malformed_and_slow_clients() {
    let (plane, _creds, mut agent) = running_node(&["--kubelet-plain-http"]);
    let p = agent.port;
    assert!(raw_http(p, b"\x16\x03\x01garbage\r\n\r\n").starts_with("HTTP/1.1 400 "));
    assert!(
        raw_http(p, b"POST /pods HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
            .starts_with("HTTP/1.1 405 ")
    );
    assert!(raw_http(p, b"GET /exec/x HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404 "));
    let mut huge = b"GET /healthz HTTP/1.1\r\nX: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 20_000));
    assert!(raw_http(p, &huge).starts_with("HTTP/1.1 431 "));
    // 200 idle connections: the agent keeps heartbeating, serves meanwhile, and closes them
    // when their first-byte deadline passes (no longer refusing callers over a cap).
    let idle: Vec<TcpStream> = (0..200)
        .filter_map(|_| TcpStream::connect((common::node_ip(), p)).ok())
        .collect();
    std::thread::sleep(Duration::from_secs(12));
    assert_eq!(ready(&plane, NODE), "True");
    assert!(raw_http(p, b"GET /healthz HTTP/1.1\r\n\r\n").ends_with("ok"));
    drop(idle);
    let m = raw_http(p, b"GET /metrics HTTP/1.1\r\n\r\n");
    let timed_out: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("picolet_kubelet_requests_total{outcome=\"timed_out\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        timed_out >= 200,
        "idle connections were not timed out:\n{m}"
    );
    assert!(agent.alive(), "{}", agent.log());
}

#[test]
#[ignore = "needs the control plane; run by scripts/test.sh"]
fn a_wrong_cluster_ca_is_refused_with_a_clear_error_and_retried() {
    let plane = plane();
    let creds = enrol(&plane, NODE);
    // Replace the pinned CA with one that did not sign the API server's certificate.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    std::fs::write(
        creds.join("ca.crt"),
        params.self_signed(&key).unwrap().pem(),
    )
    .unwrap();
    let mut agent = Agent::start(&creds, &[]);
    wait_for("TLS refusal in the log", Duration::from_secs(20), || {
        agent.log().contains("TLS handshake with kubernetes failed")
    });
    std::thread::sleep(Duration::from_secs(3));
    assert!(agent.alive(), "{}", agent.log());
    let (found, _) = kubectl_try(&plane, &["get", "node", NODE]);
    assert!(
        !found,
        "no Node is registered over an unverified connection"
    );
}

/// A ConfigMap in the shape people write by hand: one entry per line in a YAML block scalar,
/// the line ends with or without a comma.
const BLOCK_SCALAR_CONFIGMAP: &str = "apiVersion: v1
kind: ConfigMap
metadata:
  name: pico-config
  namespace: default
data:
  memory_values: |
    0=0x42,
    1=0X43
    2 = 255
";

fn configmap_rv(plane: &ControlPlane) -> String {
    kubectl(
        plane,
        &[
            "get",
            "configmap",
            "pico-config",
            "-o",
            "jsonpath={.metadata.resourceVersion}",
        ],
    )
}

#[test]
#[ignore = "needs the control plane; run by scripts/test.sh"]
fn a_yaml_block_scalar_is_applied_and_events_show_in_kubectl_describe() {
    let (plane, _creds, _agent) = running_node(&[]);
    let file = dir_file(&plane, "block-scalar.yaml", BLOCK_SCALAR_CONFIGMAP);
    kubectl(&plane, &["apply", "-f", file.to_str().unwrap()]);
    let m = wait_memory(
        &plane,
        Via::Proxy,
        &[(0, 0x42), (1, 0x43), (2, 0xff)],
        Duration::from_secs(10),
    );
    assert!(m[3..].iter().all(|&b| b == 0));
    let rv = configmap_rv(&plane);
    wait_for("Applied annotation", Duration::from_secs(10), || {
        annotation(&plane, NODE, "picolet.dev/config-applied-resource-version") == rv
    });
    let message = annotation(&plane, NODE, "picolet.dev/config-message");
    assert!(message.starts_with("applied 3 values from"), "{message}");

    // kubectl finds a ConfigMap's Events by its uid, a Node's by the node name.
    let mut describe = String::new();
    wait_for(
        "ConfigApplied in kubectl describe configmap",
        Duration::from_secs(10),
        || {
            describe = kubectl(&plane, &["describe", "configmap", "pico-config"]);
            describe.contains("ConfigApplied")
        },
    );
    assert!(
        describe.contains("applied 3 values to node pico-node-1 memory"),
        "{describe}"
    );
    let node = kubectl(&plane, &["describe", "node", NODE]);
    let events = node.split("Events:").nth(1).unwrap_or_default();
    assert!(
        events.contains("Starting") && events.contains("Starting picolet"),
        "{node}"
    );

    // A mistake on the second line: the position counts the text as written, not its JSON.
    let bad = BLOCK_SCALAR_CONFIGMAP.replace("1=0X43", "5000=1");
    let file = dir_file(&plane, "block-scalar-bad.yaml", &bad);
    kubectl(&plane, &["apply", "-f", file.to_str().unwrap()]);
    wait_for(
        "ConfigRejected in kubectl describe configmap",
        Duration::from_secs(10),
        || {
            describe = kubectl(&plane, &["describe", "configmap", "pico-config"]);
            describe.contains("ConfigRejected")
        },
    );
    assert!(describe.contains("offset 5000 at byte 8"), "{describe}");
    assert_eq!(memory(&plane, NODE).unwrap(), m, "memory unchanged");
}

#[test]
#[ignore = "needs the control plane; run by scripts/test.sh"]
fn a_version_is_applied_once_across_removed_and_restored_rbac() {
    let (plane, _creds, _agent) = running_node(&["--config-mode", "poll"]);
    let file = dir_file(&plane, "block-scalar.yaml", BLOCK_SCALAR_CONFIGMAP);
    kubectl(&plane, &["apply", "-f", file.to_str().unwrap()]);
    let rv = configmap_rv(&plane);
    let state = || annotation(&plane, NODE, "picolet.dev/config-state");
    wait_for("Applied", Duration::from_secs(45), || state() == "Applied");
    let applied_message = annotation(&plane, NODE, "picolet.dev/config-message");

    // The node may no longer read its ConfigMap.
    kubectl(
        &plane,
        &["delete", "rolebinding", "picolet-config-reader-pico-node-1"],
    );
    wait_for("Error", Duration::from_secs(45), || state() == "Error");
    let message = annotation(&plane, NODE, "picolet.dev/config-message");
    assert!(
        message.contains(r#"configmaps "pico-config" is forbidden"#) && !message.contains('\\'),
        "the API's message, decoded: {message}"
    );
    assert!(message.len() <= 256, "{message}");

    // Restored, as `picolet enrol` applied it.
    let rbac = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/rbac-pico-node-1.yaml");
    kubectl(&plane, &["apply", "-f", rbac.to_str().unwrap()]);
    wait_for("Applied again", Duration::from_secs(45), || {
        state() == "Applied"
    });
    assert_eq!(
        annotation(&plane, NODE, "picolet.dev/config-message"),
        applied_message
    );
    assert_eq!(
        annotation(&plane, NODE, "picolet.dev/config-applied-resource-version"),
        rv
    );
    // Events are posted after the annotation; give them a moment.
    std::thread::sleep(Duration::from_secs(3));
    let applied = kubectl(
        &plane,
        &[
            "get",
            "events",
            "--field-selector",
            "reason=ConfigApplied",
            "-o",
            "jsonpath={range .items[*]}{.involvedObject.resourceVersion}{\"\\n\"}{end}",
        ],
    );
    let for_rv = applied.lines().filter(|l| *l == rv).count();
    assert_eq!(
        for_rv, 1,
        "one ConfigApplied for resourceVersion {rv}:\n{applied}"
    );
}
