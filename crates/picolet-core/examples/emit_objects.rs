//! Writes every kind of object the agent sends to the API server, as complete JSON objects
//! (merge patches applied to the objects they patch), into the directory given as argument.
//! `scripts/validate-objects.sh` checks them against the strict schemas of current Kubernetes,
//! because the v1.20 test server silently drops unknown fields.

use std::path::PathBuf;

use p256::ecdsa::signature::Signer;
use picolet_core::agent::{Agent, CertificatePolicy, ConfigMode, Identity, WatchLines};
use picolet_core::http::ResponseHead;
use picolet_core::memory::REGION_SIZE;
use picolet_core::time::{Duration, Millis, UnixMillis};
use serde_json::{Value, json};

fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn parse(bytes: &[u8]) -> (String, String, Value) {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut r = httparse::Request::new(&mut headers);
    let n = match r.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!("agent wrote a bad request: {other:?}"),
    };
    let body = if bytes.len() > n {
        serde_json::from_slice(&bytes[n..]).expect("JSON body")
    } else {
        Value::Null
    };
    (
        r.method.unwrap().to_string(),
        r.path.unwrap().to_string(),
        body,
    )
}

fn main() {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .expect("usage: emit_objects OUT_DIR"),
    );
    std::fs::create_dir_all(&out).unwrap();
    let mut cfg = picolet_core::fixtures::config(ConfigMode::Watch);
    cfg.status_report_interval_ms = Duration::from_ms(10_000);
    let region: &'static mut [u8; REGION_SIZE] = Box::leak(Box::new([0; REGION_SIZE]));
    let mut agent = Agent::new(cfg, region, Millis::ZERO).unwrap();
    agent.sync_clock(Millis::ZERO, UnixMillis::from_ms(1_795_707_601_000));
    agent.set_internal_ip("192.168.1.50");
    agent.set_certificate_policy(
        Millis::ZERO,
        CertificatePolicy {
            rotate_client: true,
            request_serving: true,
        },
        0,
    );
    let key = p256::ecdsa::SigningKey::from_slice(&[7; 32]).unwrap();
    let mut public = [0u8; 65];
    public.copy_from_slice(key.verifying_key().to_encoded_point(false).as_bytes());
    let head = |status| ResponseHead {
        status,
        content_length: None,
        chunked: false,
        close: false,
        date: None,
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut node = Value::Null;
    let mut written = std::collections::BTreeMap::new();
    let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "nginx", "namespace": "web"},
        "spec": {"nodeName": "pico-node-1", "containers": [{"name": "nginx", "image": "nginx"}]}});
    let mut lines = WatchLines::new();
    let mut now = Millis::ZERO;
    for step in 0..200 {
        if step == 20 {
            // A valid and an invalid update arrive on the watch: Events of both kinds follow.
            let mut wire = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
            wire.extend_from_slice(br#"{"type":"MODIFIED","object":{"metadata":{"name":"pico-config","uid":"0c4a9f9e-7777-4888-9999-aaaabbbbcccc","resourceVersion":"8"},"data":{"memory_values":"0=1,\n1=2\n"}}}"#);
            wire.push(b'\n');
            wire.extend_from_slice(br#"{"type":"MODIFIED","object":{"metadata":{"name":"pico-config","uid":"0c4a9f9e-7777-4888-9999-aaaabbbbcccc","resourceVersion":"9"},"data":{"memory_values":"0=x"}}}"#);
            wire.push(b'\n');
            if let Ok(Some(_)) = agent.poll_watch_request(now, &mut buf) {
                agent.on_watch_bytes(now, &mut lines, &wire);
            }
        }
        now += Duration::from_ms(1_000);
        if let Some(kind) = agent.csr_wanted() {
            agent
                .submit_csr(now, kind, &public, |subject, out| {
                    picolet_core::pki::build_csr(
                        subject,
                        &public,
                        |info| {
                            let s: p256::ecdsa::Signature = key.sign(info);
                            s.to_bytes().into()
                        },
                        out,
                    )
                })
                .unwrap();
        }
        if step == 30 {
            let id = Identity {
                user: "system:serviceaccount:monitoring:prometheus",
                groups: &["system:serviceaccounts", "system:authenticated"],
            };
            agent.authorize(now, Some(&id), picolet_core::kubelet::Route::Metrics);
        }
        let Some(n) = agent.poll_request(now, &mut buf).unwrap() else {
            continue;
        };
        let (method, path, body) = parse(&buf[..n]);
        let (status, reply) = match (method.as_str(), path.as_str()) {
            ("POST", "/api/v1/nodes") => {
                node = body.clone();
                written.insert("node-create", body.clone());
                (
                    201,
                    json!({"metadata": {"uid": "6a3e5a8e-1111-2222-3333-444455556666", "resourceVersion": "1"}}),
                )
            }
            ("PATCH", p) if p.starts_with("/api/v1/nodes/") => {
                merge(&mut node, &body);
                written.insert(
                    if p.ends_with("/status") {
                        "node-after-status-patch"
                    } else {
                        "node-after-meta-patch"
                    },
                    node.clone(),
                );
                (200, json!({}))
            }
            ("GET", p) if p.contains("/leases/") => (404, json!({})),
            ("POST", p) if p.contains("/leases") => {
                written.insert("lease-create", body.clone());
                (201, json!({"metadata": {"resourceVersion": "2"}}))
            }
            ("PUT", p) if p.contains("/leases/") => {
                written.insert("lease-renew", body.clone());
                (200, json!({"metadata": {"resourceVersion": "3"}}))
            }
            ("POST", p) if p.ends_with("/events") => {
                let name = format!("event-{}", body["reason"].as_str().unwrap().to_lowercase());
                written.insert(Box::leak(name.into_boxed_str()), body.clone());
                (201, json!({}))
            }
            ("GET", p) if p.contains("/configmaps") => (
                200,
                json!({"metadata": {"resourceVersion": "7"}, "items": []}),
            ),
            ("GET", p) if p.starts_with("/api/v1/pods") => (
                200,
                json!({"metadata": {}, "items": [{"metadata": {"name": "nginx", "namespace": "web"}}]}),
            ),
            ("PATCH", p) if p.ends_with("/pods/nginx/status") => {
                merge(&mut pod, &body);
                written.insert("pod-after-reject", pod.clone());
                (200, json!({}))
            }
            ("POST", "/apis/certificates.k8s.io/v1/certificatesigningrequests") => {
                written.insert("csr-kubelet-serving", body.clone());
                (201, json!({}))
            }
            ("GET", p) if p.starts_with("/apis/certificates.k8s.io/") => {
                (200, json!({"status": {}}))
            }
            ("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews") => {
                written.insert("subjectaccessreview", body.clone());
                (201, json!({"status": {"allowed": true}}))
            }
            other => panic!("unexpected request {other:?}"),
        };
        let text = reply.to_string();
        agent.on_response(now, &head(status), text.as_bytes(), text.len());
    }
    for want in [
        "node-create",
        "node-after-status-patch",
        "node-after-meta-patch",
        "lease-create",
        "lease-renew",
        "event-starting",
        "event-configapplied",
        "event-configrejected",
        "pod-after-reject",
        "csr-kubelet-serving",
        "subjectaccessreview",
    ] {
        let obj = written
            .get(want)
            .unwrap_or_else(|| panic!("the agent never sent {want}"));
        std::fs::write(
            out.join(format!("{want}.json")),
            serde_json::to_string_pretty(obj).unwrap(),
        )
        .unwrap();
    }
    println!("wrote {} objects to {}", written.len(), out.display());
}
