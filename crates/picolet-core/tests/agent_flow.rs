//! Drives the sans-IO agent against a scripted API server: every request it writes is parsed
//! and checked, every response is hand-made. No network, no cluster.

use picolet_core::agent::{Agent, ConfigMode, ConfigState, WatchLines};
use picolet_core::http::ResponseHead;
use picolet_core::memory::REGION_SIZE;
use picolet_core::time::{Duration, Millis, UnixMillis, UnixSeconds};

use picolet_core::fixtures::{FACTS, config};

/// The instant `ms` milliseconds after boot.
fn at(ms: u64) -> Millis {
    Millis::from_ms(ms)
}

/// `n` milliseconds.
fn ms(n: u64) -> Duration {
    Duration::from_ms(n)
}

/// The Unix time `secs` seconds after the epoch, as the clock is given it.
fn unix_s(secs: u64) -> UnixMillis {
    UnixSeconds::from_secs(secs).into()
}

/// A request as the fake server sees it.
#[derive(Debug)]
struct Req {
    method: String,
    path: String,
    body: serde_json::Value,
}

fn parse(bytes: &[u8]) -> Req {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut r = httparse::Request::new(&mut headers);
    let n = match r.parse(bytes).expect("agent wrote valid HTTP") {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => panic!("incomplete request"),
    };
    let len: usize = r
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
        .unwrap_or(0);
    assert_eq!(bytes.len(), n + len, "Content-Length matches the body");
    let body = if len > 0 {
        serde_json::from_slice(&bytes[n..]).expect("body is JSON")
    } else {
        serde_json::Value::Null
    };
    Req {
        method: r.method.unwrap().into(),
        path: r.path.unwrap().into(),
        body,
    }
}

const DATE: UnixSeconds = UnixSeconds::from_secs(1_795_707_601); // Thu, 26 Nov 2026 15:40:01 GMT

fn head(status: u16) -> ResponseHead {
    ResponseHead {
        status,
        content_length: None,
        chunked: false,
        close: false,
        date: Some(DATE),
    }
}

struct Harness {
    agent: Agent<'static>,
    now: Millis,
    buf: Vec<u8>,
}

impl Harness {
    fn new(mode: ConfigMode) -> Self {
        let region: &'static mut [u8; REGION_SIZE] = Box::leak(Box::new([0u8; REGION_SIZE]));
        Self {
            agent: Agent::new(config(mode), region, Millis::ZERO).unwrap(),
            now: Millis::ZERO,
            buf: vec![0; 32 * 1024],
        }
    }

    fn next(&mut self) -> Option<Req> {
        self.agent
            .poll_request(self.now, &mut self.buf)
            .unwrap()
            .map(|n| parse(&self.buf[..n]))
    }

    fn expect(&mut self, method: &str, path_prefix: &str) -> Req {
        let r = self.next().unwrap_or_else(|| {
            panic!(
                "expected {method} {path_prefix}, nothing due at {}",
                self.now.as_ms()
            )
        });
        assert_eq!(
            (
                r.method.as_str(),
                &r.path[..path_prefix.len().min(r.path.len())]
            ),
            (method, path_prefix),
            "{r:?}"
        );
        r
    }

    fn reply(&mut self, status: u16, body: &str) {
        self.agent
            .on_response(self.now, &head(status), body.as_bytes(), body.len());
    }

    /// Answers every request that is due with success, returning what was asked.
    fn drain(&mut self) -> Vec<Req> {
        let mut seen = vec![];
        while let Some(r) = self.next() {
            let body = match (r.method.as_str(), r.path.as_str()) {
                ("GET", p) if p.contains("/configmaps") => {
                    r#"{"metadata":{"resourceVersion":"1"},"items":[]}"#.into()
                }
                ("GET", p) if p.contains("/pods") => {
                    r#"{"metadata":{"resourceVersion":"1"},"items":[]}"#.into()
                }
                _ => r#"{"metadata":{"resourceVersion":"5","uid":"node-uid-1"}}"#.to_string(),
            };
            self.reply(if r.method == "POST" { 201 } else { 200 }, &body);
            seen.push(r);
        }
        seen
    }

    fn register(&mut self) {
        self.expect("POST", "/api/v1/nodes");
        self.reply(
            201,
            r#"{"metadata":{"name":"pico-node-1","uid":"node-uid-1","resourceVersion":"3"}}"#,
        );
        self.expect(
            "GET",
            "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/pico-node-1",
        );
        self.reply(404, r#"{"kind":"Status","code":404}"#);
        let lease = self.expect(
            "POST",
            "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
        );
        assert_eq!(
            lease.body["metadata"]["ownerReferences"][0]["uid"],
            "node-uid-1"
        );
        self.reply(201, r#"{"metadata":{"resourceVersion":"10"}}"#);
        let status = self.expect("PATCH", "/api/v1/nodes/pico-node-1/status");
        assert_eq!(status.body["status"]["conditions"][0]["type"], "Ready");
        self.reply(200, "{}");
    }

    fn watch(&mut self, lines: &mut WatchLines, bytes: &[u8]) -> bool {
        let mut rest = bytes;
        loop {
            let (n, open) = self.agent.on_watch_bytes(self.now, lines, rest);
            rest = &rest[n..];
            if !open || rest.is_empty() || n == 0 {
                return open;
            }
        }
    }
}

#[test]
fn registers_a_complete_honest_node() {
    let mut h = Harness::new(ConfigMode::Watch);
    h.agent.sync_clock(Millis::ZERO, DATE.into());
    h.agent.set_internal_ip("127.0.0.1");
    let node = h.expect("POST", "/api/v1/nodes").body;
    let labels = &node["metadata"]["labels"];
    assert_eq!(labels["kubernetes.io/hostname"], "pico-node-1");
    assert_eq!(labels["kubernetes.io/arch"], "arm");
    assert_eq!(labels["kubernetes.io/os"], "none");
    assert_eq!(
        labels["node.kubernetes.io/instance-type"],
        "raspberry-pi-pico-w"
    );
    assert_eq!(node["spec"]["taints"][0]["effect"], "NoSchedule");
    let st = &node["status"];
    assert_eq!(st["capacity"]["cpu"], "2");
    assert_eq!(st["capacity"]["memory"], "264Ki");
    assert_eq!(st["allocatable"]["pods"], "0");
    assert_eq!(st["daemonEndpoints"]["kubeletEndpoint"]["Port"], 10250);
    assert_eq!(st["addresses"][0]["type"], "InternalIP");
    assert_eq!(st["addresses"][0]["address"], "127.0.0.1");
    assert_eq!(st["nodeInfo"]["kubeletVersion"], "v0.1.0+picolet");
    assert_eq!(st["nodeInfo"]["bootID"], FACTS.boot_id);
    let conds = st["conditions"].as_array().unwrap();
    let types: Vec<_> = conds.iter().map(|c| c["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"]
    );
    assert_eq!(conds[0]["lastHeartbeatTime"], "2026-11-26T15:40:01Z");
    assert_eq!(
        node["metadata"]["annotations"]["picolet.dev/config-state"],
        "Pending"
    );
}

#[test]
fn adopts_an_existing_node_instead_of_failing() {
    let mut h = Harness::new(ConfigMode::Watch);
    h.expect("POST", "/api/v1/nodes");
    h.reply(
        409,
        r#"{"kind":"Status","reason":"AlreadyExists","code":409}"#,
    );
    h.expect("GET", "/api/v1/nodes/pico-node-1");
    h.reply(
        200,
        r#"{"metadata":{"name":"pico-node-1","uid":"old-uid","resourceVersion":"99"}}"#,
    );
    let patch = h.expect("PATCH", "/api/v1/nodes/pico-node-1");
    assert!(!patch.path.ends_with("/status"));
    assert_eq!(
        patch.body["metadata"]["labels"]["kubernetes.io/arch"],
        "arm"
    );
    h.reply(200, "{}");
    assert!(h.agent.registered());
    h.expect(
        "GET",
        "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/pico-node-1",
    );
    h.reply(404, "{}");
    let lease = h.expect("POST", "/apis/coordination.k8s.io/");
    assert_eq!(
        lease.body["metadata"]["ownerReferences"][0]["uid"],
        "old-uid"
    );
}

#[test]
fn renews_the_lease_every_10s_by_put_and_regets_on_conflict() {
    let mut h = Harness::new(ConfigMode::Watch);
    h.register();
    h.drain();
    assert!(h.next().is_none());
    h.now = at(9_999);
    assert!(h.next().is_none(), "nothing before 10 s");
    h.now = at(10_000);
    let put = h.expect(
        "PUT",
        "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/pico-node-1",
    );
    assert_eq!(put.body["metadata"]["resourceVersion"], "10");
    assert_eq!(put.body["spec"]["holderIdentity"], "pico-node-1");
    assert_eq!(put.body["spec"]["leaseDurationSeconds"], 40);
    assert_eq!(put.body["spec"]["renewTime"], "2026-11-26T15:40:11.500000Z");
    h.reply(409, r#"{"code":409}"#);
    h.now += ms(100);
    h.expect(
        "GET",
        "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/pico-node-1",
    );
    h.reply(200, r#"{"metadata":{"resourceVersion":"12"}}"#);
    let put = h.expect("PUT", "/apis/coordination.k8s.io/");
    assert_eq!(put.body["metadata"]["resourceVersion"], "12");
    h.reply(200, r#"{"metadata":{"resourceVersion":"13"}}"#);
    assert_eq!(h.agent.metrics().heartbeats_ok, 2);
    assert_eq!(h.agent.metrics().heartbeats_failed, 1);
}

#[test]
fn patches_status_on_change_or_at_the_interval_only() {
    let mut h = Harness::new(ConfigMode::Poll);
    h.register();
    let mut patches = 0;
    for t in 1..=31 {
        h.now = at(t * 10_000);
        patches += h
            .drain()
            .iter()
            .filter(|r| r.path.ends_with("/status"))
            .count();
    }
    assert_eq!(patches, 1, "one PATCH in 310 s with a 300 s interval");
    h.agent.set_internal_ip("10.0.0.7");
    h.now += ms(1);
    let reqs = h.drain();
    let st = reqs
        .iter()
        .find(|r| r.path.ends_with("/status"))
        .expect("IP change makes a PATCH due");
    assert_eq!(st.body["status"]["addresses"][0]["address"], "10.0.0.7");
}

#[test]
fn reposts_status_after_a_heartbeat_gap_the_controller_may_have_noticed() {
    let mut h = Harness::new(ConfigMode::Poll);
    h.register();
    h.drain();
    // The link is down for 40 s: every request fails.
    for t in 1..=4 {
        h.now = at(t * 10_000);
        while h.next().is_some() {
            h.agent.on_transport_error(h.now);
            h.now += ms(100);
        }
    }
    // Back: the first renewal after the gap brings a status PATCH with it, though nothing in
    // the status changed (the controller may have set Ready to Unknown meanwhile).
    h.now = at(50_000);
    let reqs = h.drain();
    let lease = reqs
        .iter()
        .position(|r| r.method == "PUT")
        .expect("a renewal");
    let status = reqs
        .iter()
        .position(|r| r.path.ends_with("/status"))
        .expect("status posted again after the gap");
    assert!(lease < status);
    // Once more with the next renewal (the controller may have marked the node Unknown just
    // after the first post), then not again while heartbeats are regular.
    h.now = at(60_000);
    assert!(h.drain().iter().any(|r| r.path.ends_with("/status")));
    for t in 7..=20 {
        h.now = at(t * 10_000);
        assert!(!h.drain().iter().any(|r| r.path.ends_with("/status")));
    }
}

#[test]
fn a_heartbeat_gap_is_also_measured_by_the_servers_clock() {
    // A device clock that runs slow (a stalled or emulated board) sees 10 s between renewals
    // while the server saw 30 s: the status is posted again all the same.
    let mut h = Harness::new(ConfigMode::Poll);
    h.register();
    h.drain();
    let mut server_s = DATE.as_secs();
    let mut statuses = 0;
    for t in 1..=3 {
        h.now = at(t * 10_000);
        server_s += if t == 2 { 30 } else { 10 };
        while let Some(r) = h.next() {
            statuses += usize::from(r.path.ends_with("/status") && t >= 2);
            let head = ResponseHead {
                date: Some(UnixSeconds::from_secs(server_s)),
                ..head(200)
            };
            let body = r#"{"metadata":{"resourceVersion":"7"},"items":[]}"#;
            h.agent
                .on_response(h.now, &head, body.as_bytes(), body.len());
        }
    }
    assert!(
        statuses >= 1,
        "status re-posted after a 30 s gap on the server's clock"
    );
}

#[test]
fn retries_with_capped_exponential_backoff() {
    let mut h = Harness::new(ConfigMode::Watch);
    let mut times = vec![];
    for _ in 0..10 {
        h.now = h.agent.next_wakeup(h.now);
        h.expect("POST", "/api/v1/nodes");
        times.push(h.now);
        h.agent.on_transport_error(h.now);
    }
    let gaps: Vec<u64> = times.windows(2).map(|w| (w[1] - w[0]).as_ms()).collect();
    assert_eq!(gaps, [100, 200, 400, 800, 1600, 3200, 6400, 7000, 7000]);
}

const CM_LIST: &str = r#"{"kind":"ConfigMapList","metadata":{"resourceVersion":"40"},"items":[{"metadata":{"name":"pico-config","namespace":"default","resourceVersion":"39","managedFields":[{"manager":"kubectl"}]},"data":{"memory_values":"0=0x42,1=0x43,2=0xFF"}}]}"#;

fn list_config(h: &mut Harness, body: &str) {
    for _ in 0..10 {
        let r = h.next().expect("a request is due");
        if r.path.contains("/configmaps") {
            assert!(
                r.path
                    .ends_with("?fieldSelector=metadata.name%3Dpico-config"),
                "{}",
                r.path
            );
            h.reply(200, body);
            return;
        }
        h.reply(
            if r.method == "POST" { 201 } else { 200 },
            r#"{"metadata":{"resourceVersion":"2"},"items":[]}"#,
        );
    }
    panic!("no ConfigMap list");
}

#[test]
fn applies_a_valid_config_and_reports_it() {
    let mut h = Harness::new(ConfigMode::Watch);
    h.register();
    list_config(&mut h, CM_LIST);
    assert_eq!(&h.agent.region()[..4], &[0x42, 0x43, 0xff, 0]);
    let reqs = h.drain();
    let ann = reqs
        .iter()
        .find(|r| r.method == "PATCH" && r.path == "/api/v1/nodes/pico-node-1")
        .expect("annotation patch");
    let a = &ann.body["metadata"]["annotations"];
    assert_eq!(a["picolet.dev/config-state"], "Applied");
    assert_eq!(a["picolet.dev/config-applied-resource-version"], "39");
    let crc = picolet_core::memory::checksum(h.agent.region());
    assert_eq!(a["picolet.dev/memory-crc32"], format!("0x{crc:08x}"));
    let ev = reqs
        .iter()
        .find(|r| r.body["reason"] == "ConfigApplied")
        .expect("event");
    assert_eq!(ev.path, "/api/v1/namespaces/default/events");
    assert_eq!(ev.body["involvedObject"]["kind"], "ConfigMap");
    assert_eq!(ev.body["type"], "Normal");
}

#[test]
fn rejects_an_invalid_config_leaving_memory_unchanged() {
    let mut h = Harness::new(ConfigMode::Watch);
    h.register();
    list_config(&mut h, CM_LIST);
    h.drain();
    let before = *h.agent.region();
    let mut lines = WatchLines::new();
    h.now += ms(1);
    let n = h
        .agent
        .poll_watch_request(h.now, &mut h.buf)
        .unwrap()
        .expect("watch due");
    let w = parse(&h.buf[..n]);
    assert!(
        w.path
            .contains("watch=1&resourceVersion=40&allowWatchBookmarks=true"),
        "{}",
        w.path
    );
    let ev = br#"{"type":"MODIFIED","object":{"metadata":{"name":"pico-config","resourceVersion":"41"},"data":{"memory_values":"0=0x11,5000=1"}}}"#;
    let mut wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    wire.extend_from_slice(format!("{:x}\r\n", ev.len() + 1).as_bytes());
    wire.extend_from_slice(ev);
    wire.extend_from_slice(b"\n\r\n");
    assert!(h.watch(&mut lines, &wire));
    assert_eq!(*h.agent.region(), before, "memory unchanged");
    let (state, applied, msg) = h.agent.config_state();
    assert_eq!((state, applied), (ConfigState::Rejected, "39"));
    assert!(msg.contains("offset 5000"), "{msg}");
    let reqs = h.drain();
    let ev = reqs
        .iter()
        .find(|r| r.body["reason"] == "ConfigRejected")
        .expect("event");
    assert_eq!(ev.body["type"], "Warning");
    let ann = reqs
        .iter()
        .find(|r| r.path == "/api/v1/nodes/pico-node-1")
        .expect("annotation patch");
    assert_eq!(
        ann.body["metadata"]["annotations"]["picolet.dev/config-state"],
        "Rejected"
    );
}

#[test]
fn watch_handles_oversized_events_gone_and_deletion() {
    let mut h = Harness::new(ConfigMode::Watch);
    h.register();
    list_config(&mut h, CM_LIST);
    h.drain();
    let mut lines = WatchLines::new();
    h.agent
        .poll_watch_request(h.now, &mut h.buf)
        .unwrap()
        .unwrap();
    let mut wire = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
    // A megabyte ConfigMap: rejected from its prefix, in bounded memory.
    wire.extend_from_slice(br#"{"type":"MODIFIED","object":{"metadata":{"name":"pico-config","resourceVersion":"50"},"data":{"memory_values":""#);
    wire.extend(std::iter::repeat_n(b'1', 1 << 20));
    wire.extend_from_slice(b"\"}}}\n");
    wire.extend_from_slice(
        br#"{"type":"BOOKMARK","object":{"metadata":{"resourceVersion":"55"}}}"#,
    );
    wire.push(b'\n');
    for chunk in wire.chunks(1500) {
        assert!(h.watch(&mut lines, chunk));
    }
    let (state, _, msg) = h.agent.config_state();
    assert_eq!(state, ConfigState::Rejected);
    assert!(msg.contains("over the 16384-byte limit"), "{msg}");
    assert_eq!(&h.agent.region()[..3], &[0x42, 0x43, 0xff]);
    // The server ends the watch; the next one resumes from the bookmark.
    h.agent.on_watch_closed(h.now, false);
    let n = h
        .agent
        .poll_watch_request(h.now, &mut h.buf)
        .unwrap()
        .unwrap();
    assert!(parse(&h.buf[..n]).path.contains("resourceVersion=55"));
    // Expired: an in-stream 410 makes the agent re-list before watching again.
    let gone = b"HTTP/1.1 200 OK\r\n\r\n{\"type\":\"ERROR\",\"object\":{\"kind\":\"Status\",\"code\":410}}\n";
    h.watch(&mut lines, gone);
    h.agent.on_watch_closed(h.now, false);
    assert!(
        h.agent
            .poll_watch_request(h.now, &mut h.buf)
            .unwrap()
            .is_none(),
        "no watch before re-list"
    );
    list_config(&mut h, &CM_LIST.replace("\"40\"", "\"60\""));
    let n = h
        .agent
        .poll_watch_request(h.now, &mut h.buf)
        .unwrap()
        .unwrap();
    assert!(parse(&h.buf[..n]).path.contains("resourceVersion=60"));
    let del = b"HTTP/1.1 200 OK\r\n\r\n{\"type\":\"DELETED\",\"object\":{\"metadata\":{\"name\":\"pico-config\",\"resourceVersion\":\"61\"},\"data\":{\"memory_values\":\"0=1\"}}}\n";
    h.watch(&mut lines, del);
    assert_eq!(h.agent.config_state().0, ConfigState::Deleted);
    assert_eq!(
        &h.agent.region()[..3],
        &[0x42, 0x43, 0xff],
        "deletion keeps memory"
    );
    assert_eq!(h.agent.metrics().watch_restarts, 2);
}

#[test]
fn falls_back_to_polling_when_watch_is_refused() {
    let mut h = Harness::new(ConfigMode::Watch);
    h.register();
    list_config(&mut h, CM_LIST);
    h.drain();
    let mut lines = WatchLines::new();
    h.agent
        .poll_watch_request(h.now, &mut h.buf)
        .unwrap()
        .unwrap();
    assert!(!h.watch(
        &mut lines,
        b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n"
    ));
    h.now += ms(1);
    assert!(
        h.agent
            .poll_watch_request(h.now, &mut h.buf)
            .unwrap()
            .is_none()
    );
    list_config(&mut h, CM_LIST);
    h.now += ms(29_000);
    assert!(
        h.drain().iter().all(|r| !r.path.contains("configmaps")),
        "not before 30 s"
    );
    h.now += ms(1_001);
    assert!(
        h.drain().iter().any(|r| r.path.contains("configmaps")),
        "polled after 30 s"
    );
}

#[test]
fn fails_pods_bound_to_the_node() {
    let mut h = Harness::new(ConfigMode::Poll);
    h.register();
    h.now = at(20_000);
    let mut failed = None;
    while let Some(r) = h.next() {
        if r.path.starts_with("/api/v1/pods?") && failed.is_none() {
            assert!(r.path.contains("spec.nodeName%3Dpico-node-1"));
            h.reply(200, r#"{"metadata":{},"items":[{"metadata":{"name":"nginx","namespace":"web"},"spec":{},"status":{"phase":"Pending"}}]}"#);
        } else if r.path.ends_with("/pods/nginx/status") {
            failed = Some(r.body.clone());
            h.reply(200, "{}");
        } else {
            h.reply(200, r#"{"metadata":{"resourceVersion":"1"},"items":[]}"#);
        }
    }
    let failed = failed.expect("pod status patched");
    assert_eq!(failed["status"]["phase"], "Failed");
    assert_eq!(failed["status"]["reason"], "NodeCannotRunContainers");
    assert_eq!(h.agent.metrics().pods_rejected, 1);
}

#[test]
fn bad_names_are_refused_at_start() {
    let region: &'static mut [u8; REGION_SIZE] = Box::leak(Box::new([0u8; REGION_SIZE]));
    let mut cfg = config(ConfigMode::Watch);
    cfg.node_name = "Pico_Node";
    assert!(Agent::new(cfg, region, Millis::ZERO).is_err());
}

#[test]
fn reads_uid_from_a_real_v1_20_node() {
    let body = include_bytes!("node-v1.20.json");
    let r = serde_json_core::from_slice::<picolet_core::objects::ObjectLite>(body);
    assert!(r.is_ok(), "{r:?}");
}

#[test]
fn a_read_error_is_reported_and_cleared_when_reads_work_again() {
    let mut h = Harness::new(ConfigMode::Watch);
    h.register();
    list_config(&mut h, CM_LIST);
    assert_eq!(h.agent.config_state().0, ConfigState::Applied);
    // RBAC revoked: the watch is refused, polling lists get 403.
    let mut lines = WatchLines::new();
    h.agent
        .poll_watch_request(h.now, &mut h.buf)
        .unwrap()
        .unwrap();
    h.watch(
        &mut lines,
        b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n",
    );
    h.now += ms(1);
    for _ in 0..10 {
        let r = h.next().expect("request due");
        if r.path.contains("/configmaps") {
            h.reply(
                403,
                r#"{"kind":"Status","message":"configmaps \"pico-config\" is forbidden"}"#,
            );
            break;
        }
        h.reply(200, r#"{"metadata":{"resourceVersion":"2"},"items":[]}"#);
    }
    let (state, _, msg) = h.agent.config_state();
    assert_eq!(state, ConfigState::Error);
    assert!(
        msg.contains("HTTP 403") && msg.contains("forbidden"),
        "{msg}"
    );
    // Access restored: the state says what holds for the version again (it is not applied
    // again: see a_version_is_handled_once_across_a_read_error).
    h.now += ms(10_000);
    list_config(&mut h, CM_LIST);
    assert_eq!(h.agent.config_state().0, ConfigState::Applied);
}

/// The firmware's control connection has a 4 KiB request buffer and an 8 KiB response buffer:
/// every request must fit, even with the longest names, and a truncated Node reply still
/// yields the uid the Lease needs.
#[test]
fn requests_fit_the_firmware_buffers_and_truncated_replies_still_work() {
    let long = "n".repeat(63);
    let name: &'static str = Box::leak(long.into_boxed_str());
    let mut cfg = config(ConfigMode::Watch);
    cfg.node_name = name;
    cfg.config_map = name;
    cfg.config_namespace = name;
    let region: &'static mut [u8; REGION_SIZE] = Box::leak(Box::new([0u8; REGION_SIZE]));
    let mut agent = Agent::new(cfg, region, Millis::ZERO).unwrap();
    agent.sync_clock(Millis::ZERO, DATE.into());
    agent.set_internal_ip("192.168.100.200");
    let mut buf = vec![0u8; 4096];
    let mut now = Millis::ZERO;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..60 {
        now += ms(5_000);
        let Some(n) = agent.poll_request(now, &mut buf).expect("fits in 4 KiB") else {
            continue;
        };
        let r = parse(&buf[..n]);
        seen.insert(format!(
            "{} {}",
            r.method,
            r.path
                .split('?')
                .next()
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap()
        ));
        // A Node reply cut at 100 bytes, as an 8 KiB buffer would cut a large one.
        let full = r#"{"kind":"Node","apiVersion":"v1","metadata":{"name":"x","uid":"uid-123","resourceVersion":"9","managedFields":[]}}"#;
        let (body, len) = if r.method == "POST" && r.path == "/api/v1/nodes" {
            (&full[..100], 100_000)
        } else {
            (full, full.len())
        };
        agent.on_response(
            now,
            &head(if r.method == "POST" { 201 } else { 200 }),
            body.as_bytes(),
            len,
        );
        if r.path.contains("/leases") && r.method == "POST" {
            assert_eq!(r.body["metadata"]["ownerReferences"][0]["uid"], "uid-123");
        }
    }
    assert!(seen.iter().any(|s| s.starts_with("POST nodes")), "{seen:?}");
    assert!(
        seen.iter().any(|s| s.starts_with("PATCH status")),
        "{seen:?}"
    );
    assert!(seen.iter().any(|s| s.starts_with("PUT ")), "{seen:?}");
}

// ---------------------------------------------------------------- certificates (CSR API)

mod certificates {
    use super::*;
    use base64::Engine;
    use p256::ecdsa::signature::Signer;
    use p256::ecdsa::{Signature, SigningKey};
    use picolet_core::agent::{CertKind, CertificatePolicy};
    use picolet_core::pki;

    const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

    /// A CA that signs whatever CSR it is shown, for 2026-11-01 .. 2026-12-31.
    struct Ca {
        cert: rcgen::Certificate,
        key: rcgen::KeyPair,
    }

    impl Ca {
        fn new() -> Self {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut p = rcgen::CertificateParams::default();
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let cert = p.self_signed(&key).unwrap();
            Self { cert, key }
        }

        fn sign(&self, csr_der: &[u8]) -> Vec<u8> {
            let der = rustls_pki_types_der(csr_der);
            let mut params = rcgen::CertificateSigningRequestParams::from_der(&der).unwrap();
            params.params.not_before = rcgen::date_time_ymd(2026, 11, 1);
            params.params.not_after = rcgen::date_time_ymd(2026, 12, 31);
            params
                .signed_by(&self.cert, &self.key)
                .unwrap()
                .der()
                .to_vec()
        }
    }

    fn rustls_pki_types_der(der: &[u8]) -> rustls_pki_types::CertificateSigningRequestDer<'static> {
        rustls_pki_types::CertificateSigningRequestDer::from(der.to_vec())
    }

    fn key(seed: u8) -> (SigningKey, [u8; 65]) {
        let k = SigningKey::from_slice(&[seed; 32]).unwrap();
        let mut public = [0u8; 65];
        public.copy_from_slice(k.verifying_key().to_encoded_point(false).as_bytes());
        (k, public)
    }

    /// A client-certificate request (DER) for `k`.
    fn client_csr(k: &SigningKey, public: &[u8; 65]) -> Vec<u8> {
        let mut b = [0u8; 600];
        let n = pki::build_csr(
            &pki::CsrSubject {
                node_name: "pico-node-1",
                sans: &[],
            },
            public,
            |i| {
                let s: Signature = k.sign(i);
                s.to_bytes().into()
            },
            &mut b,
        )
        .unwrap();
        b[..n].to_vec()
    }

    fn submit(h: &mut Harness, kind: CertKind, k: &SigningKey, public: &[u8; 65]) {
        h.agent
            .submit_csr(h.now, kind, public, |subject, out| {
                pki::build_csr(
                    subject,
                    public,
                    |info| {
                        let s: Signature = k.sign(info);
                        s.to_bytes().into()
                    },
                    out,
                )
            })
            .unwrap();
    }

    /// Answers everything else with success until a CSR request comes (or nothing is due).
    fn until_csr(h: &mut Harness) -> Option<Req> {
        while let Some(r) = h.next() {
            if r.path.contains("certificatesigningrequests") {
                return Some(r);
            }
            let body = if r.path.contains("/configmaps") || r.path.contains("/pods") {
                r#"{"metadata":{"resourceVersion":"1"},"items":[]}"#
            } else {
                r#"{"metadata":{"resourceVersion":"5","uid":"node-uid-1"}}"#
            };
            h.reply(if r.method == "POST" { 201 } else { 200 }, body);
        }
        None
    }

    fn csr_der_of(req: &Req) -> Vec<u8> {
        let pem = B64
            .decode(req.body["spec"]["request"].as_str().unwrap())
            .unwrap();
        let pem = String::from_utf8(pem).unwrap();
        assert!(
            pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----\n"),
            "{pem}"
        );
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        B64.decode(b64).unwrap()
    }

    fn issued_body(cert_der: &[u8]) -> String {
        let pem = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            B64.encode(cert_der)
                .as_bytes()
                .chunks(64)
                .map(|c| std::str::from_utf8(c).unwrap())
                .collect::<Vec<_>>()
                .join("\n")
        );
        format!(
            r#"{{"metadata":{{"name":"x","managedFields":[{{"manager":"kube-controller-manager"}}]}},"status":{{"conditions":[{{"type":"Approved","status":"True","reason":"AutoApproved","message":"m"}}],"certificate":"{}"}}}}"#,
            B64.encode(pem)
        )
    }

    fn started(policy: CertificatePolicy) -> (Harness, Ca) {
        let mut h = Harness::new(ConfigMode::Watch);
        h.agent.sync_clock(Millis::ZERO, DATE.into());
        h.agent.set_internal_ip("10.42.0.2");
        h.register();
        h.agent.set_certificate_policy(h.now, policy, 50); // renew at 75 %
        (h, Ca::new())
    }

    #[test]
    fn renews_the_client_certificate_at_three_quarters_of_its_lifetime() {
        let (mut h, ca) = started(CertificatePolicy {
            rotate_client: true,
            request_serving: false,
        });
        let (k0, p0) = key(1);
        let first = ca.sign(&client_csr(&k0, &p0));
        let installed = h.agent.set_certificate(CertKind::Client, &first).unwrap();
        // 2026-11-01 + 0.75 × 60 days = 2026-12-16 00:00 UTC.
        assert_eq!(installed.renew_at, UnixSeconds::from_secs(1_797_379_200));
        assert!(until_csr(&mut h).is_none());
        assert_eq!(h.agent.csr_wanted(), None);

        // One second before the renewal point nothing happens; at it, a key is asked for.
        h.now += ms(60_000);
        h.agent
            .sync_clock(h.now, unix_s(installed.renew_at.as_secs() - 1));
        assert!(until_csr(&mut h).is_none());
        h.now += ms(61_000);
        h.agent
            .sync_clock(h.now, unix_s(installed.renew_at.as_secs() + 60));
        assert!(until_csr(&mut h).is_none());
        assert_eq!(h.agent.csr_wanted(), Some(CertKind::Client));

        let (k1, p1) = key(2);
        submit(&mut h, CertKind::Client, &k1, &p1);
        let post = until_csr(&mut h).unwrap();
        assert_eq!(post.method, "POST");
        assert_eq!(
            post.path,
            "/apis/certificates.k8s.io/v1/certificatesigningrequests"
        );
        let spec = &post.body["spec"];
        assert_eq!(
            spec["signerName"],
            "kubernetes.io/kube-apiserver-client-kubelet"
        );
        assert_eq!(
            spec["usages"],
            serde_json::json!(["digital signature", "key encipherment", "client auth"])
        );
        let name = post.body["metadata"]["name"].as_str().unwrap().to_string();
        assert!(name.starts_with("picolet-pico-node-1-client-"), "{name}");
        let csr = csr_der_of(&post);
        h.reply(201, "{}");

        // Pending: read back every 2 s.
        h.now += ms(2_000);
        let get = until_csr(&mut h).unwrap();
        assert_eq!(
            (get.method.as_str(), get.path.ends_with(&name)),
            ("GET", true)
        );
        h.reply(200, r#"{"metadata":{"name":"x"},"status":{}}"#);
        assert!(h.agent.issued_certificate().is_none());
        h.now += ms(2_000);
        until_csr(&mut h).unwrap();
        let second = ca.sign(&csr);
        h.reply(200, &issued_body(&second));
        let (kind, der) = h.agent.issued_certificate().expect("issued");
        assert_eq!((kind, der), (CertKind::Client, &second[..]));
        // Nothing more is asked until the driver has installed it.
        h.now += ms(10_000);
        assert!(until_csr(&mut h).is_none());
        h.agent.set_certificate(CertKind::Client, &second).unwrap();
        assert!(h.agent.issued_certificate().is_none());
        let mut text = String::new();
        h.agent
            .metrics()
            .render(&mut text, &h.agent.gauges(h.now))
            .unwrap();
        assert!(
            text.contains(
                "picolet_certificate_requests_total{kind=\"client\",result=\"installed\"} 1\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_certificate_for_another_key_or_a_denial_installs_nothing() {
        let (mut h, ca) = started(CertificatePolicy {
            rotate_client: false,
            request_serving: true,
        });
        // No serving certificate yet: one is requested, with the node's name and IP as SANs.
        assert!(until_csr(&mut h).is_none());
        assert_eq!(h.agent.csr_wanted(), Some(CertKind::Serving));
        let (k1, p1) = key(3);
        submit(&mut h, CertKind::Serving, &k1, &p1);
        let post = until_csr(&mut h).unwrap();
        assert_eq!(
            post.body["spec"]["signerName"],
            "kubernetes.io/kubelet-serving"
        );
        let csr = csr_der_of(&post);
        let text = String::from_utf8_lossy(&csr);
        assert!(text.contains("pico-node-1"));
        assert!(
            csr.windows(4).any(|w| w == [10, 42, 0, 2]),
            "IP SAN present"
        );
        h.reply(201, "{}");
        h.now += ms(2_000);
        until_csr(&mut h).unwrap();
        // Signed, but for a different key: refused.
        let (k2, p2) = key(4);
        h.reply(200, &issued_body(&ca.sign(&client_csr(&k2, &p2))));
        assert!(h.agent.issued_certificate().is_none());
        // Garbage in the certificate field: refused too, without a panic.
        h.now += ms(400_000);
        assert!(until_csr(&mut h).is_none());
        submit(&mut h, CertKind::Serving, &k1, &p1);
        until_csr(&mut h).unwrap();
        h.reply(201, "{}");
        h.now += ms(2_000);
        until_csr(&mut h).unwrap();
        h.reply(200, r#"{"status":{"certificate":"bm90IGEgUEVN"}}"#);
        assert!(h.agent.issued_certificate().is_none());
        // A denial: given up, retried with a new key after five minutes, not before.
        h.now += ms(400_000);
        until_csr(&mut h);
        submit(&mut h, CertKind::Serving, &k1, &p1);
        until_csr(&mut h).unwrap();
        h.reply(201, "{}");
        h.now += ms(2_000);
        until_csr(&mut h).unwrap();
        h.reply(
            200,
            r#"{"status":{"conditions":[{"type":"Denied","status":"True"}]}}"#,
        );
        h.now += ms(200_000);
        assert!(until_csr(&mut h).is_none());
        assert_eq!(h.agent.csr_wanted(), None);
        h.now += ms(101_000);
        until_csr(&mut h);
        assert_eq!(h.agent.csr_wanted(), Some(CertKind::Serving));
        let mut text = String::new();
        h.agent
            .metrics()
            .render(&mut text, &h.agent.gauges(h.now))
            .unwrap();
        assert!(
            text.contains(
                "picolet_certificate_requests_total{kind=\"serving\",result=\"failed\"} 3\n"
            ),
            "{text}"
        );
        // Finally a good one.
        submit(&mut h, CertKind::Serving, &k1, &p1);
        until_csr(&mut h).unwrap();
        h.reply(201, "{}");
        h.now += ms(2_000);
        until_csr(&mut h).unwrap();
        let good = ca.sign(&csr);
        h.reply(200, &issued_body(&good));
        assert_eq!(
            h.agent.issued_certificate().map(|(k, _)| k),
            Some(CertKind::Serving)
        );
        let _ = k1;
    }

    #[test]
    fn a_bootstrap_join_uses_the_token_and_ends_with_a_certificate_for_its_key() {
        use picolet_core::join::{Join, JoinError};
        let ca = Ca::new();
        let token = "abcdef.0123456789abcdef";
        let mut join = Join::new("pico-node-1", "kubernetes", token);
        let mut buf = vec![0u8; 8192];
        assert!(join.key_wanted());
        assert_eq!(join.poll_request(at(0), &mut buf).unwrap(), None);
        let (k, p) = key(8);
        let csr = client_csr(&k, &p);
        join.submit_csr(at(0), 7, &p, |_, out| {
            out[..csr.len()].copy_from_slice(&csr);
            Ok(csr.len())
        })
        .unwrap();
        let bearer = format!("\r\nAuthorization: Bearer {token}\r\n");
        let n = join.poll_request(at(0), &mut buf).unwrap().unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).contains(&bearer));
        let post = parse(&buf[..n]);
        assert_eq!(
            post.body["spec"]["signerName"],
            "kubernetes.io/kube-apiserver-client-kubelet"
        );
        assert_eq!(
            post.body["metadata"]["name"],
            "picolet-pico-node-1-bootstrap-00000007"
        );
        // A refused token: said why, tried again after a backoff.
        join.on_response(at(0), &head(401), b"{}");
        assert_eq!(join.last_error(), Some(JoinError::TokenRefused));
        assert_eq!(join.poll_request(at(10), &mut buf).unwrap(), None);
        let n = join.poll_request(at(1_000), &mut buf).unwrap().unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("POST "));
        join.on_response(at(1_000), &head(201), b"{}");
        // Read back with the token until signed.
        let n = join.poll_request(at(2_000), &mut buf).unwrap().unwrap();
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(text.starts_with("GET /apis/certificates.k8s.io/v1/certificatesigningrequests/picolet-pico-node-1-bootstrap-00000007 "));
        assert!(text.contains(&bearer));
        join.on_response(at(2_000), &head(200), br#"{"status":{}}"#);
        assert!(join.certificate().is_none());
        join.poll_request(at(3_000), &mut buf).unwrap().unwrap();
        let cert = ca.sign(&csr);
        join.on_response(at(3_000), &head(200), issued_body(&cert).as_bytes());
        assert_eq!(join.certificate(), Some(&cert[..]));
        assert_eq!(join.poll_request(at(9_000), &mut buf).unwrap(), None);
    }

    #[test]
    fn a_bootstrap_join_refuses_a_certificate_for_another_key() {
        use picolet_core::join::{Join, JoinError};
        let ca = Ca::new();
        let mut join = Join::new("pico-node-1", "kubernetes", "abcdef.0123456789abcdef");
        let mut buf = vec![0u8; 8192];
        let (k, p) = key(9);
        let csr = client_csr(&k, &p);
        join.submit_csr(at(0), 1, &p, |_, out| {
            out[..csr.len()].copy_from_slice(&csr);
            Ok(csr.len())
        })
        .unwrap();
        join.poll_request(at(0), &mut buf).unwrap().unwrap();
        join.on_response(at(0), &head(201), b"{}");
        join.poll_request(at(1_000), &mut buf).unwrap().unwrap();
        let (k2, p2) = key(10);
        join.on_response(
            at(1_000),
            &head(200),
            issued_body(&ca.sign(&client_csr(&k2, &p2))).as_bytes(),
        );
        assert_eq!(join.certificate(), None);
        assert_eq!(join.last_error(), Some(JoinError::CertificateRefused));
        assert!(join.key_wanted(), "starts again with a new key");
        // A token that may not create CSRs.
        let (k3, p3) = key(11);
        let csr3 = client_csr(&k3, &p3);
        join.submit_csr(at(1_000), 2, &p3, |_, out| {
            out[..csr3.len()].copy_from_slice(&csr3);
            Ok(csr3.len())
        })
        .unwrap();
        join.poll_request(at(5_000), &mut buf).unwrap().unwrap();
        join.on_response(at(5_000), &head(403), b"{}");
        assert_eq!(join.last_error(), Some(JoinError::Forbidden));
    }

    #[test]
    fn a_serving_csr_waiting_for_approval_does_not_hold_up_a_client_renewal() {
        let (mut h, ca) = started(CertificatePolicy {
            rotate_client: true,
            request_serving: true,
        });
        let (k0, p0) = key(5);
        let client = h
            .agent
            .set_certificate(CertKind::Client, &ca.sign(&client_csr(&k0, &p0)))
            .unwrap();
        assert!(until_csr(&mut h).is_none());
        assert_eq!(h.agent.csr_wanted(), Some(CertKind::Serving));
        let (ks, ps) = key(6);
        submit(&mut h, CertKind::Serving, &ks, &ps);
        until_csr(&mut h).unwrap();
        h.reply(201, "{}");
        // The serving CSR stays pending; the client certificate comes due.
        h.now += ms(2_000);
        h.agent
            .sync_clock(h.now, unix_s(client.renew_at.as_secs() + 1));
        let get = until_csr(&mut h).unwrap();
        assert!(get.path.contains("-serving-"), "{get:?}");
        h.reply(200, r#"{"status":{}}"#);
        assert!(until_csr(&mut h).is_none());
        assert_eq!(h.agent.csr_wanted(), Some(CertKind::Client));
        let (kc, pc) = key(7);
        submit(&mut h, CertKind::Client, &kc, &pc);
        let post = until_csr(&mut h).unwrap();
        assert_eq!(post.method, "POST");
        let csr = csr_der_of(&post);
        h.reply(201, "{}");
        h.now += ms(2_000);
        // Both are read back; the client one is issued.
        let mut issued = false;
        while let Some(r) = until_csr(&mut h) {
            if r.path.contains("-client-") {
                h.reply(200, &issued_body(&ca.sign(&csr)));
                issued = true;
            } else {
                h.reply(200, r#"{"status":{}}"#);
            }
        }
        assert!(issued);
        assert_eq!(
            h.agent.issued_certificate().map(|(k, _)| k),
            Some(CertKind::Client)
        );
    }

    /// A server that issues every CSR at once: answers the request in `h.buf[..len]`.
    fn answer(h: &mut Harness, ca: &Ca, csr: &mut Option<Vec<u8>>, len: usize) {
        let r = parse(&h.buf[..len]);
        if r.path.contains("certificatesigningrequests") && r.method == "POST" {
            *csr = Some(csr_der_of(&r));
            h.reply(201, "{}");
        } else if r.path.contains("certificatesigningrequests") {
            h.reply(200, &issued_body(&ca.sign(csr.as_ref().unwrap())));
        } else {
            h.reply(200, r#"{"metadata":{"resourceVersion":"5"},"items":[]}"#);
        }
    }

    /// The driving protocol for certificates, as both drivers follow it: each control step
    /// says what the driver does, and the agent never asks twice for the same thing.
    #[test]
    fn control_steps_make_the_key_install_the_certificate_then_reopen_the_connections() {
        use picolet_core::agent::ControlStep;
        let (mut h, ca) = started(CertificatePolicy {
            rotate_client: true,
            request_serving: false,
        });
        let (k0, p0) = key(5);
        let first = ca.sign(&client_csr(&k0, &p0));
        let installed = h.agent.set_certificate(CertKind::Client, &first).unwrap();
        h.now += ms(60_000);
        h.agent
            .sync_clock(h.now, unix_s(installed.renew_at.as_secs() + 60));
        let (k1, p1) = key(6);
        let mut steps = vec![];
        let mut csr = None;
        for _ in 0..40 {
            let step = h.agent.poll_control(h.now, &mut h.buf).unwrap();
            steps.push(step);
            match step {
                ControlStep::MakeKey(kind) => submit(&mut h, kind, &k1, &p1),
                ControlStep::Send { len } => answer(&mut h, &ca, &mut csr, len),
                ControlStep::InstallCertificate(kind) => {
                    assert_eq!(h.agent.issued_certificate().unwrap().0, kind);
                    h.agent.certificate_installed(h.now, kind).unwrap();
                }
                ControlStep::ReopenConnections => {}
                ControlStep::SleepUntil(at) => {
                    assert!(at > h.now, "a sleep is never for now: {steps:?}");
                    h.now = at;
                }
            }
            if step == ControlStep::ReopenConnections {
                break;
            }
        }
        // Reopening is asked once.
        assert_ne!(
            h.agent.poll_control(h.now, &mut h.buf).unwrap(),
            ControlStep::ReopenConnections
        );
        let kinds: Vec<_> = steps
            .iter()
            .filter(|s| !matches!(s, ControlStep::Send { .. } | ControlStep::SleepUntil(_)))
            .collect();
        assert_eq!(
            kinds,
            [
                &ControlStep::MakeKey(CertKind::Client),
                &ControlStep::InstallCertificate(CertKind::Client),
                &ControlStep::ReopenConnections,
            ],
            "{steps:?}"
        );
        assert!(
            h.agent
                .certificate(CertKind::Client)
                .unwrap()
                .not_after
                .as_secs()
                > installed.not_after.as_secs() - 1
        );
        assert!(h.agent.issued_certificate().is_none());
    }

    /// An issued certificate the driver cannot install is dropped (no step repeats it) and
    /// asked for again, with a new key, after a backoff.
    #[test]
    fn a_certificate_that_cannot_be_installed_is_requested_again_later() {
        use picolet_core::agent::ControlStep;
        let (mut h, ca) = started(CertificatePolicy {
            rotate_client: false,
            request_serving: true,
        });
        let (k1, p1) = key(7);
        let mut csr = None;
        let mut failed_at = None;
        for _ in 0..60 {
            match h.agent.poll_control(h.now, &mut h.buf).unwrap() {
                ControlStep::MakeKey(kind) if failed_at.is_some() => {
                    assert_eq!(kind, CertKind::Serving);
                    assert!(h.now > failed_at.unwrap(), "not at once");
                    return;
                }
                ControlStep::MakeKey(kind) => submit(&mut h, kind, &k1, &p1),
                ControlStep::Send { len } => answer(&mut h, &ca, &mut csr, len),
                ControlStep::InstallCertificate(kind) => {
                    assert!(
                        failed_at.is_none(),
                        "an install that failed is not offered again"
                    );
                    h.agent.certificate_install_failed(h.now, kind);
                    failed_at = Some(h.now);
                    assert!(h.agent.issued_certificate().is_none());
                }
                ControlStep::ReopenConnections => panic!("nothing was installed"),
                ControlStep::SleepUntil(at) => h.now = at,
            }
        }
        panic!("no new key was asked for");
    }
}

/// The watch side of the driving protocol: a [`WatchReader`] takes reads of any size, frames
/// the events, keeps what is left of a partial head or chunk line, and says when to close.
mod driving_protocol {
    use super::*;
    use picolet_core::agent::{ControlStep, WatchRead, WatchReader, WatchStep, WatchStream};

    fn watching() -> Harness {
        let mut h = Harness::new(ConfigMode::Watch);
        h.register();
        list_config(&mut h, CM_LIST);
        h.drain();
        h
    }

    fn open(h: &mut Harness) -> String {
        match h
            .agent
            .poll_watch(WatchStream::ConfigMap, h.now, &mut h.buf)
            .unwrap()
        {
            WatchStep::Open { len } => parse(&h.buf[..len]).path,
            other => panic!("expected a watch to open, got {other:?}"),
        }
    }

    /// Feeds `wire` through the reader in reads of at most `read` bytes, as a socket would.
    fn feed<const IN: usize>(
        h: &mut Harness,
        reader: &mut WatchReader<IN>,
        wire: &[u8],
        read: usize,
    ) -> WatchRead {
        let mut rest = wire;
        loop {
            let space = reader.space();
            let n = rest.len().min(read).min(space.len());
            space[..n].copy_from_slice(&rest[..n]);
            rest = &rest[n..];
            let next = h
                .agent
                .on_watch_read(WatchStream::ConfigMap, h.now, reader, n);
            if next != WatchRead::Continue || rest.is_empty() {
                return next;
            }
        }
    }

    #[test]
    fn reads_of_any_size_apply_the_same_events() {
        for read in [1, 7, 64, 4096] {
            let mut h = watching();
            let mut reader: Box<WatchReader<64>> = Box::default();
            assert!(open(&mut h).contains("watch=1"));
            let mut wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            let event = br#"{"type":"MODIFIED","object":{"metadata":{"name":"pico-config","resourceVersion":"77"},"data":{"memory_values":"0=0x11,1=0x22"}}}
"#;
            wire.extend_from_slice(format!("{:x}\r\n", event.len()).as_bytes());
            wire.extend_from_slice(event);
            wire.extend_from_slice(b"\r\n");
            assert_eq!(
                feed(&mut h, &mut reader, &wire, read),
                WatchRead::Continue,
                "read {read}"
            );
            assert_eq!(&h.agent.region()[..2], &[0x11, 0x22], "read {read}");
            // The server ends the stream; the next watch resumes from the event's version.
            assert_eq!(
                feed(&mut h, &mut reader, b"0\r\n\r\n", read),
                WatchRead::Close
            );
            assert!(open(&mut h).contains("resourceVersion=77"), "read {read}");
        }
    }

    #[test]
    fn a_head_longer_than_the_reader_closes_with_a_backoff() {
        let mut h = watching();
        let mut reader: Box<WatchReader<64>> = Box::default();
        open(&mut h);
        let mut wire = b"HTTP/1.1 200 OK\r\nX-Long: ".to_vec();
        wire.extend(std::iter::repeat_n(b'a', 200));
        assert_eq!(feed(&mut h, &mut reader, &wire, 16), WatchRead::Overflow);
        match h
            .agent
            .poll_watch(WatchStream::ConfigMap, h.now, &mut h.buf)
            .unwrap()
        {
            WatchStep::SleepUntil(at) => assert!(at > h.now, "retried after a backoff"),
            other => panic!("no backoff: {other:?}"),
        }
        // The reader starts empty for the next connection.
        assert_eq!(reader.space().len(), 64);
    }

    #[test]
    fn a_broken_control_connection_reopens_the_watches() {
        let mut h = watching();
        let step = h.agent.poll_control(h.now, &mut h.buf).unwrap();
        assert!(matches!(step, ControlStep::SleepUntil(_)), "{step:?}");
        h.now += ms(10_000);
        assert!(matches!(
            h.agent.poll_control(h.now, &mut h.buf).unwrap(),
            ControlStep::Send { .. }
        ));
        h.agent.on_transport_error(h.now);
        assert_eq!(
            h.agent.poll_control(h.now, &mut h.buf).unwrap(),
            ControlStep::ReopenConnections
        );
        // Once: then the failed request is retried after its backoff.
        assert!(matches!(
            h.agent.poll_control(h.now, &mut h.buf).unwrap(),
            ControlStep::SleepUntil(_)
        ));
    }
}

// ---------------------------------------------------------------- kubelet-port authorization

mod authorization {
    use super::*;
    use picolet_core::agent::{ALLOW_TTL_MS, DENY_TTL_MS, Decision, Identity, REVIEW_TIMEOUT_MS};
    use picolet_core::kubelet::Route;

    const PROM: Identity<'static> = Identity {
        user: "prometheus",
        groups: &["monitoring"],
    };

    fn registered() -> Harness {
        let mut h = Harness::new(ConfigMode::Poll);
        h.agent.sync_clock(Millis::ZERO, DATE.into());
        h.register();
        h.drain();
        h
    }

    fn answer_review(h: &mut Harness, allowed: bool) -> serde_json::Value {
        let r = h.expect("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews");
        h.reply(
            201,
            &format!(r#"{{"kind":"SubjectAccessReview","status":{{"allowed":{allowed}}}}}"#),
        );
        r.body
    }

    /// Steps a kubelet session over `head` until it answers, answering its review with
    /// `allowed` if it asks one; returns the answer's text and whether a review was asked.
    fn kubelet_request(
        h: &mut Harness,
        caller: picolet_core::agent::Caller<'_>,
        head: &[u8],
        allowed: bool,
    ) -> (String, bool) {
        kubelet_request_through(h, caller, head, allowed, 16 * 1024, &mut |_| {})
    }

    /// [`kubelet_request`] with an answer buffer of `out_len` bytes; `between` runs on the
    /// agent after each part of a longer answer.
    fn kubelet_request_through(
        h: &mut Harness,
        caller: picolet_core::agent::Caller<'_>,
        head: &[u8],
        allowed: bool,
        out_len: usize,
        between: &mut dyn FnMut(&mut Harness),
    ) -> (String, bool) {
        use picolet_core::agent::{KubeletSession, KubeletStep};
        let platform = picolet_core::metrics::PlatformStats {
            cpu_time_us: 1_500_000,
            memory_working_set_bytes: 1000,
            ..Default::default()
        };
        let mut session = KubeletSession::new(caller);
        let mut out = vec![0u8; out_len];
        let mut answer = Vec::new();
        let mut asked = false;
        // The head arrives a byte at a time.
        let mut len = 0;
        loop {
            match h.agent.kubelet_step(
                &mut session,
                h.now,
                &head[..len],
                len == 4096,
                &platform,
                &mut out,
            ) {
                KubeletStep::ReadMore if len < head.len() => len += 1,
                KubeletStep::ReadMore => {
                    let step = h.agent.kubelet_eof(&mut session, &mut out);
                    let KubeletStep::Respond { len, .. } = step else {
                        panic!("{step:?}")
                    };
                    return (String::from_utf8_lossy(&out[..len]).into(), asked);
                }
                KubeletStep::Authorizing { until } => {
                    assert!(until > h.now);
                    assert!(!asked, "asked twice");
                    asked = true;
                    answer_review(h, allowed);
                }
                KubeletStep::Write { len } => {
                    answer.extend_from_slice(&out[..len]);
                    between(h);
                }
                KubeletStep::Respond { len, .. } => {
                    answer.extend_from_slice(&out[..len]);
                    return (String::from_utf8_lossy(&answer).into(), asked);
                }
            }
        }
    }

    /// Splits an answer into its head and body, checking the body against `Content-Length`.
    fn body_of(answer: &str) -> &str {
        let (head, body) = answer.split_once("\r\n\r\n").expect("a complete head");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .expect("Content-Length")
            .parse()
            .unwrap();
        assert_eq!(body.len(), length, "Content-Length matches the body");
        body
    }

    /// Answers every request due within the next minute with `code`.
    fn answer_due_with(h: &mut Harness, code: u16) {
        h.now += Duration::from_secs(60);
        for _ in 0..10 {
            if h.next().is_none() {
                break;
            }
            h.reply(code, "{}");
        }
    }

    #[test]
    fn a_metrics_page_longer_than_the_buffer_goes_out_in_parts_as_one_moment() {
        use picolet_core::agent::Caller;
        use picolet_core::kubelet::ANSWER_MIN;
        let mut h = registered();
        // Many (verb, code) pairs make a page longer than the smallest buffer.
        for code in 500..504 {
            answer_due_with(&mut h, code);
        }
        let get = b"GET /metrics HTTP/1.1\r\n\r\n";
        let (whole, _) = kubelet_request(&mut h, Caller::Open, get, false);
        let whole = body_of(&whole).to_string();
        assert!(whole.len() > ANSWER_MIN, "{} bytes", whole.len());
        let mut parts = 1;
        let (parted, _) =
            kubelet_request_through(&mut h, Caller::Open, get, false, ANSWER_MIN, &mut |h| {
                // The agent moves on while the page is being sent.
                parts += 1;
                answer_due_with(h, 599);
            });
        assert!(parts >= 2, "sent in one part");
        let parted = body_of(&parted);
        // The page of one moment: the same lines as just before, but for this request itself.
        let served = "picolet_kubelet_requests_total{outcome=\"served\"}";
        let differ: Vec<(&str, &str)> = whole
            .lines()
            .zip(parted.lines())
            .filter(|(a, b)| a != b)
            .collect();
        assert_eq!(whole.lines().count(), parted.lines().count());
        assert!(
            differ.len() == 1 && differ[0].1.starts_with(served),
            "{differ:?}"
        );
        assert!(!parted.contains("code=\"599\""));
        let (after, _) = kubelet_request(&mut h, Caller::Open, get, false);
        assert!(after.contains("code=\"599\""), "the agent did move on");
        // HEAD: the head alone, in one part.
        let (head_only, _) = kubelet_request_through(
            &mut h,
            Caller::Open,
            b"HEAD /metrics HTTP/1.1\r\n\r\n",
            false,
            ANSWER_MIN,
            &mut |_| panic!("HEAD in parts"),
        );
        assert!(head_only.starts_with("HTTP/1.1 200 OK\r\n"), "{head_only}");
        assert!(head_only.ends_with("\r\n\r\n"), "{head_only}");
    }

    #[test]
    fn every_other_page_fits_the_smallest_answer_buffer_in_one_part() {
        use picolet_core::agent::Caller;
        use picolet_core::kubelet::ANSWER_MIN;
        let mut h = registered();
        for path in ["/memory", "/pods", "/healthz", "/nope"] {
            let get = format!("GET {path} HTTP/1.1\r\n\r\n");
            let (answer, _) = kubelet_request_through(
                &mut h,
                Caller::Open,
                get.as_bytes(),
                false,
                ANSWER_MIN,
                &mut |_| panic!("{path} in parts"),
            );
            let ok = answer.starts_with("HTTP/1.1 200 OK\r\n");
            assert!(ok || path == "/nope", "{answer}");
            body_of(&answer);
        }
    }

    #[test]
    fn a_kubelet_session_parses_authorizes_answers_and_counts() {
        use picolet_core::agent::Caller;
        let mut h = registered();
        let (healthz, asked) = kubelet_request(
            &mut h,
            Caller::Anonymous,
            b"GET /healthz HTTP/1.1\r\n\r\n",
            false,
        );
        assert!(
            healthz.starts_with("HTTP/1.1 200 OK") && healthz.ends_with("ok"),
            "{healthz}"
        );
        assert!(!asked);
        let (anon, _) = kubelet_request(
            &mut h,
            Caller::Anonymous,
            b"GET /metrics HTTP/1.1\r\n\r\n",
            false,
        );
        assert!(anon.starts_with("HTTP/1.1 401 "), "{anon}");
        let (denied, asked) = kubelet_request(
            &mut h,
            Caller::Verified(PROM),
            b"GET /memory HTTP/1.1\r\n\r\n",
            false,
        );
        assert!(asked && denied.starts_with("HTTP/1.1 403 "), "{denied}");
        let (metrics, asked) = kubelet_request(
            &mut h,
            Caller::Verified(PROM),
            b"GET /metrics HTTP/1.1\r\n\r\n",
            true,
        );
        assert!(asked && metrics.starts_with("HTTP/1.1 200 OK"), "{metrics}");
        assert!(metrics.contains("\nprocess_cpu_seconds_total 1.500000\n"));
        let (bad, _) = kubelet_request(&mut h, Caller::Open, b"GET /exec HTTP/1.1\r\n\r\n", false);
        assert!(bad.starts_with("HTTP/1.1 404 "), "{bad}");
        let (cut, _) = kubelet_request(&mut h, Caller::Open, b"GET /heal", false);
        assert!(cut.starts_with("HTTP/1.1 400 "), "{cut}");
        h.agent
            .count_kubelet(picolet_core::metrics::KubeletOutcome::TimedOut);
        // Every outcome is on /metrics, the same on every driver.
        let (page, _) = kubelet_request(
            &mut h,
            Caller::Open,
            b"GET /metrics HTTP/1.1\r\n\r\n",
            false,
        );
        for (outcome, n) in [
            // /healthz, /metrics, and this page itself.
            ("served", 3),
            ("refused", 2),
            ("unauthenticated", 1),
            ("forbidden", 1),
            ("unavailable", 0),
            ("timed_out", 1),
            ("evicted", 0),
        ] {
            let line = format!("picolet_kubelet_requests_total{{outcome=\"{outcome}\"}} {n}\n");
            assert!(page.contains(&line), "{line} in\n{page}");
        }
    }

    #[test]
    fn a_kubelet_session_answers_503_when_the_review_is_not_answered_in_time() {
        use picolet_core::agent::{Caller, KubeletSession, KubeletStep};
        let mut h = registered();
        let platform = picolet_core::metrics::PlatformStats::default();
        let mut session = KubeletSession::new(Caller::Verified(PROM));
        let mut out = vec![0u8; 4096];
        let head = b"GET /pods HTTP/1.1\r\n\r\n";
        let step = h
            .agent
            .kubelet_step(&mut session, h.now, head, false, &platform, &mut out);
        let KubeletStep::Authorizing { until } = step else {
            panic!("{step:?}")
        };
        // The review goes out, but its answer never comes.
        h.expect("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews");
        h.now = until;
        let step = h
            .agent
            .kubelet_step(&mut session, h.now, head, false, &platform, &mut out);
        let KubeletStep::Respond { len, refused } = step else {
            panic!("{step:?}")
        };
        assert!(String::from_utf8_lossy(&out[..len]).starts_with("HTTP/1.1 503 "));
        assert_eq!(
            refused,
            Some((
                Some(Route::Pods),
                picolet_core::kubelet::Refusal::AuthorizationUnavailable
            ))
        );
        assert!(until <= Millis::ZERO + REVIEW_TIMEOUT_MS + ms(1_000) + ms(1));
    }

    #[test]
    fn healthz_is_open_and_everything_else_needs_an_allowed_identity() {
        let mut h = registered();
        assert_eq!(
            h.agent.authorize(h.now, None, Route::Healthz),
            Decision::Allow
        );
        assert_eq!(
            h.agent.authorize(h.now, None, Route::Metrics),
            Decision::Deny
        );
        assert_eq!(
            h.agent.authorize(h.now, None, Route::Memory),
            Decision::Deny
        );

        assert_eq!(
            h.agent.authorize(h.now, Some(&PROM), Route::Metrics),
            Decision::Pending
        );
        // The review goes out first, ahead of anything else due.
        h.now += ms(60_000);
        let review = answer_review(&mut h, true);
        assert_eq!(review["spec"]["user"], "prometheus");
        assert_eq!(review["spec"]["groups"], serde_json::json!(["monitoring"]));
        assert_eq!(
            review["spec"]["resourceAttributes"],
            serde_json::json!({"verb": "get", "resource": "nodes", "subresource": "metrics", "name": "pico-node-1"})
        );
        assert_eq!(
            h.agent.authorize(h.now, Some(&PROM), Route::Metrics),
            Decision::Allow
        );
        assert_eq!(
            h.agent
                .authorize(h.now, Some(&PROM), Route::MetricsResource),
            Decision::Allow,
            "same subresource, same decision"
        );
        // /memory is nodes/proxy: a separate review, denied.
        assert_eq!(
            h.agent.authorize(h.now, Some(&PROM), Route::Memory),
            Decision::Pending
        );
        answer_review(&mut h, false);
        assert_eq!(
            h.agent.authorize(h.now, Some(&PROM), Route::Memory),
            Decision::Deny
        );
        // A same-named user in other groups is another identity.
        let other = Identity {
            user: "prometheus",
            groups: &["system:masters"],
        };
        assert_eq!(
            h.agent.authorize(h.now, Some(&other), Route::Metrics),
            Decision::Pending
        );
        answer_review(&mut h, false);
        // Decisions expire: a revoked binding is noticed.
        h.now += DENY_TTL_MS.max(ALLOW_TTL_MS);
        assert_eq!(
            h.agent.authorize(h.now, Some(&PROM), Route::Metrics),
            Decision::Pending
        );
        answer_review(&mut h, false);
        assert_eq!(
            h.agent.authorize(h.now, Some(&PROM), Route::Metrics),
            Decision::Deny
        );
        let mut text = String::new();
        h.agent
            .metrics()
            .render(&mut text, &h.agent.gauges(h.now))
            .unwrap();
        assert!(
            text.contains("picolet_kubelet_authorization_reviews_total{result=\"allowed\"} 1\n")
        );
        assert!(
            text.contains("picolet_kubelet_authorization_reviews_total{result=\"denied\"} 3\n")
        );
    }

    #[test]
    fn oversized_identities_unanswered_reviews_and_late_answers_fail_closed() {
        let mut h = registered();
        let long = "x".repeat(200);
        let big = Identity {
            user: &long,
            groups: &[],
        };
        assert_eq!(
            h.agent.authorize(h.now, Some(&big), Route::Metrics),
            Decision::Deny
        );
        let many = Identity {
            user: "a",
            groups: &["1", "2", "3", "4", "5"],
        };
        assert_eq!(
            h.agent.authorize(h.now, Some(&many), Route::Metrics),
            Decision::Deny
        );

        // Sent, never answered: the caller gets 503 after the timeout, and a late "allowed"
        // is ignored.
        assert_eq!(
            h.agent.authorize(h.now, Some(&PROM), Route::Metrics),
            Decision::Pending
        );
        h.expect("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews");
        h.now += REVIEW_TIMEOUT_MS;
        assert_eq!(
            h.agent.authorize(h.now, Some(&PROM), Route::Metrics),
            Decision::Unavailable
        );
        h.reply(201, r#"{"status":{"allowed":true}}"#);
        assert_ne!(
            h.agent.authorize(h.now, Some(&PROM), Route::Metrics),
            Decision::Allow
        );
        // An error from the API server is not a yes either.
        h.now += ms(2_000);
        assert_eq!(
            h.agent.authorize(h.now, Some(&PROM), Route::Metrics),
            Decision::Pending
        );
        h.expect("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews");
        h.reply(403, r#"{"kind":"Status","code":403}"#);
        assert_eq!(
            h.agent.authorize(h.now, Some(&PROM), Route::Metrics),
            Decision::Unavailable
        );
        // Many identities: slots are reused, never granting one identity another's answer.
        for i in 0..10 {
            let user = format!("user-{i}");
            let id = Identity {
                user: &user,
                groups: &[],
            };
            h.now += ms(2_000);
            assert_eq!(
                h.agent.authorize(h.now, Some(&id), Route::Metrics),
                Decision::Pending
            );
            let body = answer_review(&mut h, i % 2 == 0);
            assert_eq!(body["spec"]["user"], user.as_str());
            let expect = if i % 2 == 0 {
                Decision::Allow
            } else {
                Decision::Deny
            };
            assert_eq!(h.agent.authorize(h.now, Some(&id), Route::Metrics), expect);
        }
    }

    // ------------------------------------------------------------ bearer tokens (TokenReview)

    const SA_TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQifQ.c2ln";
    const SA_USER: &str = "system:serviceaccount:kube-system:metrics-server";

    /// A TokenReview answer as kube-apiserver writes it: the token echoed, uid and extra.
    fn token_review_answer(token: &str, authenticated: bool, groups: &[&str]) -> String {
        let user = if authenticated {
            serde_json::json!({
                "username": SA_USER,
                "uid": "0d5c7d1e-6d2a-4c1f-9d0e-1b2c3d4e5f60",
                "groups": groups,
                "extra": {"authentication.kubernetes.io/credential-id": ["JTI=abc"]},
            })
        } else {
            serde_json::json!({})
        };
        serde_json::json!({
            "kind": "TokenReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": null},
            "spec": {"token": token},
            "status": {"authenticated": authenticated, "user": user,
                       "audiences": ["https://kubernetes.default.svc"]},
        })
        .to_string()
    }

    const SA_GROUPS: [&str; 3] = [
        "system:serviceaccounts",
        "system:serviceaccounts:kube-system",
        "system:authenticated",
    ];

    /// Steps an anonymous TLS session over `head` until it answers; each time it waits, `serve`
    /// answers what the agent sends. Returns the answer.
    fn token_request(
        h: &mut Harness,
        head: &[u8],
        serve: &mut dyn FnMut(&mut Harness, Req),
    ) -> String {
        use picolet_core::agent::{Caller, KubeletSession, KubeletStep};
        let platform = picolet_core::metrics::PlatformStats::default();
        let mut session = KubeletSession::new(Caller::Anonymous);
        let mut out = vec![0u8; 16 * 1024];
        let mut answer = Vec::new();
        for _ in 0..10 {
            match h
                .agent
                .kubelet_step(&mut session, h.now, head, false, &platform, &mut out)
            {
                KubeletStep::ReadMore => panic!("a complete head"),
                KubeletStep::Authorizing { .. } => match h.next() {
                    Some(r) => serve(h, r),
                    None => h.now += ms(100),
                },
                KubeletStep::Write { len } => answer.extend_from_slice(&out[..len]),
                KubeletStep::Respond { len, .. } => {
                    answer.extend_from_slice(&out[..len]);
                    return String::from_utf8_lossy(&answer).into();
                }
            }
        }
        panic!("no answer after 10 steps")
    }

    fn bearer_head(path: &str, token: &str) -> Vec<u8> {
        format!("GET {path} HTTP/1.1\r\nHost: n\r\nAuthorization: Bearer {token}\r\n\r\n")
            .into_bytes()
    }

    #[test]
    fn a_bearer_token_is_reviewed_then_its_user_authorized_and_the_outcome_cached() {
        let mut h = registered();
        let head = bearer_head("/metrics/resource", SA_TOKEN);
        let mut asked = Vec::new();
        let mut serve = |h: &mut Harness, r: Req| {
            asked.push(r.path.clone());
            if r.path == "/apis/authentication.k8s.io/v1/tokenreviews" {
                assert_eq!(r.method, "POST");
                assert_eq!(r.body["kind"], "TokenReview");
                assert_eq!(r.body["spec"]["token"], SA_TOKEN);
                h.reply(201, &token_review_answer(SA_TOKEN, true, &SA_GROUPS));
            } else {
                // The reviewed user and groups are what is authorized, for the metrics subresource.
                assert_eq!(r.path, "/apis/authorization.k8s.io/v1/subjectaccessreviews");
                assert_eq!(r.body["spec"]["user"], SA_USER);
                assert_eq!(r.body["spec"]["groups"], serde_json::json!(SA_GROUPS));
                assert_eq!(
                    r.body["spec"]["resourceAttributes"]["subresource"],
                    "metrics"
                );
                h.reply(201, r#"{"status":{"allowed":true}}"#);
            }
        };
        let answer = token_request(&mut h, &head, &mut serve);
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        assert!(answer.contains("node_cpu_usage_seconds_total"), "{answer}");
        assert_eq!(
            asked,
            [
                "/apis/authentication.k8s.io/v1/tokenreviews",
                "/apis/authorization.k8s.io/v1/subjectaccessreviews"
            ]
        );
        // Within the caches' lifetimes the same token asks nothing.
        h.now += ms(30_000);
        let again = token_request(&mut h, &head, &mut |_, r| panic!("asked {r:?}"));
        assert!(again.starts_with("HTTP/1.1 200 OK"), "{again}");
        // Past the token cache's lifetime it is reviewed again (and authorized again).
        h.now += picolet_core::agent::AUTHENTICATED_TTL_MS;
        let mut reviews = 0;
        let later = token_request(&mut h, &head, &mut |h, r| {
            if r.path.ends_with("/tokenreviews") {
                reviews += 1;
                h.reply(201, &token_review_answer(SA_TOKEN, true, &SA_GROUPS));
            } else {
                h.reply(201, r#"{"status":{"allowed":true}}"#);
            }
        });
        assert!(later.starts_with("HTTP/1.1 200 OK"), "{later}");
        assert_eq!(reviews, 1);
        // A token whose user may not: 403, not 401.
        let other = "b3RoZXI.dG9rZW4.c2ln";
        let denied = token_request(&mut h, &bearer_head("/pods", other), &mut |h, r| {
            if r.path.ends_with("/tokenreviews") {
                h.reply(201, &token_review_answer(other, true, &SA_GROUPS));
            } else {
                h.reply(201, r#"{"status":{"allowed":false}}"#);
            }
        });
        assert!(denied.starts_with("HTTP/1.1 403 "), "{denied}");
        // /healthz is open: its token is not even looked at.
        let healthz = token_request(&mut h, &bearer_head("/healthz", "bm9wZQ"), &mut |_, r| {
            panic!("asked {r:?}")
        });
        assert!(healthz.starts_with("HTTP/1.1 200 OK"), "{healthz}");
        let page = token_request(&mut h, &bearer_head("/metrics", SA_TOKEN), &mut |h, _| {
            h.reply(201, r#"{"status":{"allowed":true}}"#)
        });
        assert!(
            page.contains("\npicolet_kubelet_token_reviews_total{result=\"authenticated\"} 3\n"),
            "{page}"
        );
    }

    #[test]
    fn rejected_unreadable_unanswered_and_oversized_tokens_fail_closed() {
        use picolet_core::agent::{Authentication, TOKEN_MAX};
        let mut h = registered();
        let t = |s: &str| s.as_bytes().to_vec();
        // Rejected by the API server: 401, remembered without asking again.
        let bad = "YmFk.dG9rZW4.c2ln";
        let mut reviews = 0;
        let mut serve_rejected = |h: &mut Harness, r: Req| {
            assert!(r.path.ends_with("/tokenreviews"), "{r:?}");
            reviews += 1;
            h.reply(201, &token_review_answer(bad, false, &[]));
        };
        for _ in 0..2 {
            let a = token_request(&mut h, &bearer_head("/metrics", bad), &mut serve_rejected);
            assert!(a.starts_with("HTTP/1.1 401 "), "{a}");
        }
        assert_eq!(reviews, 1);
        // Authenticated, but with more groups than are kept: refused, counted as an error.
        let many = "bWFueQ.Z3JvdXBz.c2ln";
        let a = token_request(&mut h, &bearer_head("/metrics", many), &mut |h, _| {
            h.reply(
                201,
                &token_review_answer(many, true, &["a", "b", "c", "d", "e"]),
            )
        });
        assert!(a.starts_with("HTTP/1.1 401 "), "{a}");
        // An answer cut short by the driver's buffer cannot be read: refused.
        let cut = "Y3V0.c2hvcnQ.c2ln";
        assert_eq!(
            h.agent.authenticate(h.now, &t(cut)),
            Authentication::Pending
        );
        h.expect("POST", "/apis/authentication.k8s.io/v1/tokenreviews");
        let body = token_review_answer(cut, true, &SA_GROUPS);
        h.agent
            .on_response(h.now, &head(201), &body.as_bytes()[..100], body.len());
        assert_eq!(
            h.agent.authenticate(h.now, &t(cut)),
            Authentication::Rejected
        );
        // The API server failing is no verdict: 503, asked again a second later.
        let flaky = "Zmxha3k.dG9rZW4.c2ln";
        assert_eq!(
            h.agent.authenticate(h.now, &t(flaky)),
            Authentication::Pending
        );
        h.expect("POST", "/apis/authentication.k8s.io/v1/tokenreviews");
        h.reply(500, r#"{"kind":"Status","code":500}"#);
        assert_eq!(
            h.agent.authenticate(h.now, &t(flaky)),
            Authentication::Unavailable
        );
        h.now += ms(1_000);
        assert_eq!(
            h.agent.authenticate(h.now, &t(flaky)),
            Authentication::Pending
        );
        // Lost on the wire: 503; a late "authenticated" is ignored.
        h.expect("POST", "/apis/authentication.k8s.io/v1/tokenreviews");
        h.agent.on_transport_error(h.now);
        assert_eq!(
            h.agent.authenticate(h.now, &t(flaky)),
            Authentication::Unavailable
        );
        h.reply(201, &token_review_answer(flaky, true, &SA_GROUPS));
        assert_eq!(
            h.agent.authenticate(h.now, &t(flaky)),
            Authentication::Unavailable
        );
        // Sent and never answered: given up after the review timeout.
        h.now += ms(1_000);
        let slow = "c2xvdw.dG9rZW4.c2ln";
        assert_eq!(
            h.agent.authenticate(h.now, &t(slow)),
            Authentication::Pending
        );
        let r = h.expect("POST", "/apis/authentication.k8s.io/v1/tokenreviews");
        assert_eq!(r.body["spec"]["token"], slow);
        // One token waits for its review at a time; another new one waits its turn.
        let next = "bmV4dA.dG9rZW4.c2ln";
        assert_eq!(
            h.agent.authenticate(h.now, &t(next)),
            Authentication::Pending
        );
        assert!(
            h.drain().iter().all(|r| !r.path.ends_with("/tokenreviews")),
            "one review at a time"
        );
        h.now += REVIEW_TIMEOUT_MS;
        assert_eq!(
            h.agent.authenticate(h.now, &t(slow)),
            Authentication::Unavailable
        );
        h.reply(201, &token_review_answer(slow, true, &SA_GROUPS));
        assert_eq!(
            h.agent.authenticate(h.now, &t(next)),
            Authentication::Pending
        );
        let r = h.expect("POST", "/apis/authentication.k8s.io/v1/tokenreviews");
        assert_eq!(r.body["spec"]["token"], next);
        h.reply(201, &token_review_answer(next, true, &SA_GROUPS));
        assert_eq!(
            h.agent.authenticate(h.now, &t(next)),
            Authentication::Authenticated
        );
        // A token longer than the buffer is refused without a review.
        let huge = vec![b'a'; TOKEN_MAX + 1];
        assert_eq!(h.agent.authenticate(h.now, &huge), Authentication::Rejected);
        let no_review = |seen: Vec<Req>| seen.iter().all(|r| !r.path.ends_with("/tokenreviews"));
        assert!(no_review(h.drain()));
        // A malformed Authorization header is refused before anything is asked.
        let a = token_request(&mut h, &bearer_head("/metrics", "a\"b"), &mut |_, r| {
            panic!("asked {r:?}")
        });
        assert!(a.starts_with("HTTP/1.1 401 "), "{a}");
        let (page, _) = kubelet_request(
            &mut h,
            picolet_core::agent::Caller::Open,
            b"GET /metrics HTTP/1.1\r\n\r\n",
            false,
        );
        for (result, n) in [("authenticated", 1), ("rejected", 1), ("error", 6)] {
            let line = format!("picolet_kubelet_token_reviews_total{{result=\"{result}\"}} {n}\n");
            assert!(page.contains(&line), "{line} in\n{page}");
        }
    }

    #[test]
    fn a_client_certificate_wins_over_a_bearer_token() {
        use picolet_core::agent::Caller;
        let mut h = registered();
        let head = bearer_head("/metrics", SA_TOKEN);
        let (answer, asked) = kubelet_request(&mut h, Caller::Verified(PROM), &head, true);
        assert!(asked && answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        assert!(h.next().is_none(), "no token review");
    }
}

// ---------------------------------------------------------------- issue #10

/// Answers requests until the ConfigMap list, which gets `status`, `body` and a claimed
/// length `len` (longer than `body` when the driver's buffer cut it).
fn list_config_cut(h: &mut Harness, status: u16, body: &str, len: usize) -> Vec<Req> {
    let mut seen = vec![];
    for _ in 0..10 {
        let r = h.next().expect("a request is due");
        if r.path.contains("/configmaps") {
            h.agent
                .on_response(h.now, &head(status), body.as_bytes(), len);
            seen.push(r);
            return seen;
        }
        h.reply(
            if r.method == "POST" { 201 } else { 200 },
            r#"{"metadata":{"resourceVersion":"2"},"items":[]}"#,
        );
        seen.push(r);
    }
    panic!("no ConfigMap list");
}

fn cm_list(rv: &str, uid: &str, escaped_values: &str) -> String {
    format!(
        r#"{{"kind":"ConfigMapList","apiVersion":"v1","metadata":{{"resourceVersion":"40"}},"items":[{{"metadata":{{"name":"pico-config","namespace":"default","uid":"{uid}","resourceVersion":"{rv}"}},"data":{{"memory_values":"{escaped_values}"}}}}]}}"#
    )
}

/// Opens a new watch (ending the one before) that carries the single line `event`.
fn watch_line(h: &mut Harness, lines: &mut WatchLines, event: &str) {
    h.agent.on_watch_closed(h.now, false);
    h.agent.poll_watch_request(h.now, &mut h.buf).unwrap();
    let mut wire = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
    wire.extend_from_slice(event.as_bytes());
    wire.push(b'\n');
    h.watch(lines, &wire);
}

#[test]
fn json_escaped_whitespace_and_block_scalars_are_applied() {
    let mut h = Harness::new(ConfigMode::Watch);
    h.register();
    // `memory_values: |` in YAML: one entry per line, a final newline, as the API server
    // sends it (JSON-escaped).
    list_config(
        &mut h,
        &cm_list("39", "cm-uid-1", r"0=0x42,\n1=0x43,\n2=0XfF\n"),
    );
    let (state, applied, msg) = h.agent.config_state();
    assert_eq!((state, applied), (ConfigState::Applied, "39"), "{msg}");
    assert_eq!(&h.agent.region()[..4], &[0x42, 0x43, 0xff, 0]);
    h.drain();
    h.agent
        .poll_watch_request(h.now, &mut h.buf)
        .unwrap()
        .unwrap();
    let mut lines = WatchLines::new();
    for (rv, values, expect) in [
        ("41", r"0=9\n", [9, 0, 0]),
        ("42", r"0=1,\t1=2", [1, 2, 0]),
        ("43", r"0=1\r", [1, 0, 0]),
        ("44", r"\r\n\t0 = 7 ,\r\n 2=\u0038\r\n", [7, 0, 8]),
    ] {
        let ev = format!(
            r#"{{"type":"MODIFIED","object":{{"metadata":{{"name":"pico-config","uid":"cm-uid-1","resourceVersion":"{rv}"}},"data":{{"memory_values":"{values}"}}}}}}"#
        );
        watch_line(&mut h, &mut lines, &ev);
        let (state, applied, msg) = h.agent.config_state();
        assert_eq!(
            (state, applied),
            (ConfigState::Applied, rv),
            "{values}: {msg}"
        );
        assert_eq!(&h.agent.region()[..3], &expect, "{values}");
    }
    // Positions count the decoded text: the bad offset starts at byte 4 of "0=1,\n5000=1".
    let ev = r#"{"type":"MODIFIED","object":{"metadata":{"name":"pico-config","resourceVersion":"45"},"data":{"memory_values":"0=1,\n5000=1"}}}"#;
    watch_line(&mut h, &mut lines, ev);
    let (state, _, msg) = h.agent.config_state();
    assert_eq!(state, ConfigState::Rejected);
    assert!(msg.contains("offset 5000 at byte 5"), "{msg}");
    // Non-ASCII stays refused after decoding, and so does a malformed escape.
    for (rv, values, says) in [
        ("46", r"0=\u00e9", "unexpected byte 0xc3 at byte 2"),
        ("47", r"0=1,\x", "invalid JSON escape at byte 4"),
    ] {
        let ev = format!(
            r#"{{"type":"MODIFIED","object":{{"metadata":{{"name":"pico-config","resourceVersion":"{rv}"}},"data":{{"memory_values":"{values}"}}}}}}"#
        );
        watch_line(&mut h, &mut lines, &ev);
        let (state, applied, msg) = h.agent.config_state();
        assert_eq!((state, applied), (ConfigState::Rejected, "44"), "{msg}");
        assert!(msg.contains(says), "{values}: {msg}");
    }
    assert_eq!(&h.agent.region()[..3], &[7, 0, 8]);
}

#[test]
fn api_error_messages_are_decoded_and_shortened_at_a_word() {
    let mut h = Harness::new(ConfigMode::Poll);
    h.agent.sync_clock(Millis::ZERO, DATE.into());
    h.register();
    let status = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"configmaps \"pico-config\" is forbidden: User \"system:node:pico-node-1\" cannot list resource \"configmaps\" in API group \"\" in the namespace \"default\": no relationship found between node 'pico-node-1' and this object","reason":"Forbidden","details":{"name":"pico-config","kind":"configmaps"},"code":403}"#;
    list_config_cut(&mut h, 403, status, status.len());
    let (state, _, msg) = h.agent.config_state();
    let msg = msg.to_string();
    assert_eq!(state, ConfigState::Error);
    assert!(
        msg.contains(r#"configmaps "pico-config" is forbidden: User "system:node:pico-node-1""#),
        "{msg}"
    );
    assert!(!msg.contains('\\'), "{msg}");
    assert!(msg.len() <= 256, "{}", msg.len());
    let kept = msg.strip_suffix('…').expect("shortened with an ellipsis");
    let full = format!(
        "cannot read ConfigMap default/pico-config: HTTP 403 {}",
        r#"configmaps "pico-config" is forbidden: User "system:node:pico-node-1" cannot list resource "configmaps" in API group "" in the namespace "default": no relationship found between node 'pico-node-1' and this object"#
    );
    assert!(full.starts_with(kept), "{msg}");
    let next = full[kept.len()..].chars().next().unwrap();
    assert!(
        next == ' ' && !kept.ends_with(' '),
        "cut at a word boundary: {msg:?}"
    );
    let reqs = h.drain();
    let ev = reqs
        .iter()
        .find(|r| r.body["reason"] == "ConfigReadFailed")
        .expect("event");
    assert_eq!(ev.body["message"], msg.as_str());
    let ann = reqs
        .iter()
        .find(|r| r.path == "/api/v1/nodes/pico-node-1")
        .expect("annotation patch");
    assert_eq!(
        ann.body["metadata"]["annotations"]["picolet.dev/config-message"],
        msg.as_str()
    );
}

#[test]
fn an_oversized_configmap_in_the_first_list_is_reported_with_its_own_version() {
    let mut h = Harness::new(ConfigMode::Watch);
    h.agent.sync_clock(Millis::ZERO, DATE.into());
    h.register();
    // The driver's buffer holds the first 8 KiB of a 1 MB list.
    let envelope = r#"{"kind":"ConfigMapList","apiVersion":"v1","metadata":{"resourceVersion":"40"},"items":["#;
    let item_start = r#"{"metadata":{"name":"pico-config","namespace":"default","uid":"cm-uid-7","resourceVersion":"39","managedFields":[]},"data":{"memory_values":""#;
    let mut body = format!("{envelope}{item_start}");
    body.push_str(&"1".repeat(8192 - body.len()));
    let total = 1_000_000;
    list_config_cut(&mut h, 200, &body, total);
    let (state, _, msg) = h.agent.config_state();
    assert_eq!(state, ConfigState::Rejected);
    assert!(msg.contains("(resourceVersion 39)"), "{msg}");
    let object = total - envelope.len() - "]}".len();
    assert!(msg.contains(&format!("about {object} bytes")), "{msg}");
    assert!(msg.contains("over the 16384-byte limit"), "{msg}");
    let reqs = h.drain();
    let ev = reqs
        .iter()
        .find(|r| r.body["reason"] == "ConfigRejected")
        .expect("event");
    assert_eq!(ev.body["involvedObject"]["resourceVersion"], "39");
    assert_eq!(ev.body["involvedObject"]["uid"], "cm-uid-7");
    // The list's version stays the watch's start point.
    let n = h
        .agent
        .poll_watch_request(h.now, &mut h.buf)
        .unwrap()
        .unwrap();
    assert!(parse(&h.buf[..n]).path.contains("resourceVersion=40"));
}

#[test]
fn a_version_is_handled_once_across_a_read_error() {
    let mut h = Harness::new(ConfigMode::Poll);
    h.agent.sync_clock(Millis::ZERO, DATE.into());
    h.register();
    let mut events = vec![];
    events.extend(list_config_cut(&mut h, 200, CM_LIST, CM_LIST.len()));
    events.extend(h.drain());
    let (state, _, applied_msg) = h.agent.config_state();
    assert_eq!(state, ConfigState::Applied);
    let applied_msg = applied_msg.to_string();
    // RBAC removed: 403.
    h.now += ms(30_000);
    events.extend(list_config_cut(
        &mut h,
        403,
        r#"{"kind":"Status","message":"forbidden","code":403}"#,
        49,
    ));
    events.extend(h.drain());
    assert_eq!(h.agent.config_state().0, ConfigState::Error);
    // Restored: the same version is listed again.
    h.now += ms(30_000);
    events.extend(list_config_cut(&mut h, 200, CM_LIST, CM_LIST.len()));
    events.extend(h.drain());
    let (state, applied, msg) = h.agent.config_state();
    assert_eq!(
        (state, applied, msg),
        (ConfigState::Applied, "39", applied_msg.as_str())
    );
    let applied_events = events
        .iter()
        .filter(|r| r.body["reason"] == "ConfigApplied")
        .count();
    assert_eq!(applied_events, 1, "resourceVersion 39 is handled once");
    assert_eq!(h.agent.metrics().config_applies, 1);
    let ann = events
        .iter()
        .rev()
        .find(|r| r.path == "/api/v1/nodes/pico-node-1")
        .expect("annotation patch");
    assert_eq!(
        ann.body["metadata"]["annotations"]["picolet.dev/config-state"],
        "Applied"
    );
    // A rejected version too: re-reported, not rejected again.
    let bad = cm_list("50", "u", "1=999");
    h.now += ms(30_000);
    list_config_cut(&mut h, 200, &bad, bad.len());
    h.drain();
    h.now += ms(30_000);
    list_config_cut(&mut h, 403, r#"{"code":403}"#, 12);
    h.drain();
    h.now += ms(30_000);
    list_config_cut(&mut h, 200, &bad, bad.len());
    let reqs = h.drain();
    assert_eq!(h.agent.config_state().0, ConfigState::Rejected);
    assert!(!reqs.iter().any(|r| r.body["reason"] == "ConfigRejected"));
    assert_eq!(h.agent.metrics().config_rejects, 1);
}

#[test]
fn events_carry_the_uids_kubectl_describe_looks_for() {
    let mut h = Harness::new(ConfigMode::Watch);
    h.agent.sync_clock(Millis::ZERO, DATE.into());
    h.register();
    let mut reqs = list_config_cut(
        &mut h,
        200,
        &cm_list("39", "cm-uid-1", "0=1"),
        cm_list("39", "cm-uid-1", "0=1").len(),
    );
    reqs.extend(h.drain());
    let starting = reqs
        .iter()
        .find(|r| r.body["reason"] == "Starting")
        .expect("Starting event");
    // The kubelet's convention, which `kubectl describe node` searches by.
    assert_eq!(starting.body["involvedObject"]["uid"], "pico-node-1");
    assert_eq!(starting.body["involvedObject"]["kind"], "Node");
    let applied = reqs
        .iter()
        .find(|r| r.body["reason"] == "ConfigApplied")
        .expect("ConfigApplied event");
    assert_eq!(applied.body["involvedObject"]["uid"], "cm-uid-1");
    assert_eq!(applied.body["involvedObject"]["resourceVersion"], "39");
    let msg = applied.body["message"].as_str().unwrap();
    assert!(msg.starts_with("applied 1 value to"), "{msg}");
    assert!(h.agent.config_state().2.starts_with("applied 1 value from"));
    // A ConfigMap created again under a new uid: its Events carry the new one.
    h.agent
        .poll_watch_request(h.now, &mut h.buf)
        .unwrap()
        .unwrap();
    let mut lines = WatchLines::new();
    watch_line(
        &mut h,
        &mut lines,
        r#"{"type":"ADDED","object":{"metadata":{"name":"pico-config","uid":"cm-uid-2","resourceVersion":"60"},"data":{"memory_values":"0=1,1=2"}}}"#,
    );
    let reqs = h.drain();
    let applied = reqs
        .iter()
        .find(|r| r.body["reason"] == "ConfigApplied")
        .expect("ConfigApplied event");
    assert_eq!(applied.body["involvedObject"]["uid"], "cm-uid-2");
    assert!(
        applied.body["message"]
            .as_str()
            .unwrap()
            .starts_with("applied 2 values")
    );
}

/// Feeds `bytes` to the pod watch connection; `false` when the agent wants it closed.
fn pod_watch(h: &mut Harness, lines: &mut WatchLines, bytes: &[u8]) -> bool {
    let mut rest = bytes;
    loop {
        let (n, open) = h.agent.on_pod_watch_bytes(h.now, lines, rest);
        rest = &rest[n..];
        if !open || rest.is_empty() || n == 0 {
            return open;
        }
    }
}

/// Runs the agent for `minutes` of steady state, answering everything, and returns the
/// control-connection requests made in that time.
fn steady_requests(h: &mut Harness, minutes: u64) -> Vec<Req> {
    let end = h.now + ms(minutes * 60_000);
    let mut seen = vec![];
    while h.now < end {
        seen.extend(h.drain());
        h.now += ms(500);
    }
    seen
}

#[test]
fn without_a_pod_watch_pods_are_listed_within_a_minute() {
    let mut h = Harness::new(ConfigMode::Watch);
    h.register();
    h.drain();
    let seen = steady_requests(&mut h, 10);
    let lists = seen
        .iter()
        .filter(|r| r.path.starts_with("/api/v1/pods?"))
        .count();
    // Every 55 s: 10 or 11 lists in 10 minutes, never the 30 that a 20 s check made.
    assert!((10..=11).contains(&lists), "{lists} pod lists");
}

#[test]
fn with_a_pod_watch_steady_state_is_a_kubelets_request_rate() {
    let mut h = Harness::new(ConfigMode::Watch);
    h.agent.set_pod_watch(true);
    h.register();
    h.drain();
    let mut lines = WatchLines::new();
    // The watch starts from the list's resourceVersion ("1" in the harness's answers).
    let n = h
        .agent
        .poll_pod_watch_request(h.now, &mut h.buf)
        .unwrap()
        .expect("a pod watch after the first list");
    let w = parse(&h.buf[..n]);
    assert!(
        w.path
            .starts_with("/api/v1/pods?fieldSelector=spec.nodeName%3Dpico-node-1")
            && w.path
                .contains("&watch=1&resourceVersion=1&allowWatchBookmarks=true"),
        "{}",
        w.path
    );
    assert!(pod_watch(
        &mut h,
        &mut lines,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    ));
    let seen = steady_requests(&mut h, 10);
    let per_minute = seen.len() as f64 / 10.0;
    assert!(
        !seen.iter().any(|r| r.path.starts_with("/api/v1/pods")),
        "no pod lists while watching: {:?}",
        seen.iter().map(|r| &r.path).collect::<Vec<_>>()
    );
    // 6 Lease renewals a minute and a status PATCH every 5 minutes, as a kubelet.
    assert!(per_minute <= 6.3, "{per_minute} requests per minute");
}

#[test]
fn a_watched_pod_is_failed_at_once_and_a_gone_watch_lists_again() {
    let mut h = Harness::new(ConfigMode::Watch);
    h.agent.set_pod_watch(true);
    h.register();
    h.drain();
    let mut lines = WatchLines::new();
    h.agent
        .poll_pod_watch_request(h.now, &mut h.buf)
        .unwrap()
        .unwrap();
    let mut wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    let event = br#"{"type":"ADDED","object":{"kind":"Pod","metadata":{"name":"nginx","namespace":"web","resourceVersion":"40"},"spec":{"nodeName":"pico-node-1","containers":[{"name":"a","image":"nginx"}]},"status":{"phase":"Pending"}}}
"#;
    wire.extend_from_slice(format!("{:x}\r\n", event.len()).as_bytes());
    wire.extend_from_slice(event);
    wire.extend_from_slice(b"\r\n");
    assert!(pod_watch(&mut h, &mut lines, &wire));
    let fail = h.expect("PATCH", "/api/v1/namespaces/web/pods/nginx/status");
    assert_eq!(fail.body["status"]["reason"], "NodeCannotRunContainers");
    h.reply(200, "{}");
    assert_eq!(h.agent.metrics().pods_rejected, 1);
    // An in-stream 410: close, list again, then watch from the new list.
    let gone = b"{\"type\":\"ERROR\",\"object\":{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"code\":410,\"reason\":\"Expired\"}}\n";
    let mut wire = format!("{:x}\r\n", gone.len()).into_bytes();
    wire.extend_from_slice(gone);
    wire.extend_from_slice(b"\r\n");
    assert!(!pod_watch(&mut h, &mut lines, &wire));
    assert!(
        h.agent
            .poll_pod_watch_request(h.now, &mut h.buf)
            .unwrap()
            .is_none(),
        "no pod watch before the list"
    );
    h.expect(
        "GET",
        "/api/v1/pods?fieldSelector=spec.nodeName%3Dpico-node-1",
    );
    h.reply(200, r#"{"metadata":{"resourceVersion":"77"},"items":[]}"#);
    let n = h
        .agent
        .poll_pod_watch_request(h.now, &mut h.buf)
        .unwrap()
        .unwrap();
    assert!(parse(&h.buf[..n]).path.contains("resourceVersion=77"));
    // A server that refuses pod watches gets lists every 55 s instead.
    assert!(!pod_watch(
        &mut h,
        &mut lines,
        b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n"
    ));
    h.expect("GET", "/api/v1/pods?");
    h.reply(200, r#"{"metadata":{"resourceVersion":"78"},"items":[]}"#);
    h.now += ms(56_000);
    assert!(
        h.drain()
            .iter()
            .any(|r| r.path.starts_with("/api/v1/pods?"))
    );
}
