//! Trust, end to end against the real control plane: certificates through the CSR API
//! (renewal, the kubelet-serving certificate), bootstrap tokens, and who may use the kubelet
//! port. `#[ignore]`d for a plain `cargo test`; `scripts/test.sh` runs them.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod common;

use common::{
    Agent, NODE, client_cert, enrol, https_get, kubectl, metric, other_ca, ready, wait_ready,
};
use testplane::{ControlPlane, Options};

fn plane_with(opts: Options) -> ControlPlane {
    ControlPlane::start(opts).unwrap_or_else(|e| panic!("control plane: {e}"))
}

/// (notBefore, notAfter, public key) of the first certificate in a PEM file.
fn cert_facts(path: &Path) -> (i64, i64, Vec<u8>) {
    let pem = std::fs::read_to_string(path).unwrap();
    let der = rustls_pki_types::pem::PemObject::from_pem_slice(pem.as_bytes())
        .map(|d: rustls_pki_types::CertificateDer<'_>| d.to_vec())
        .unwrap();
    let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
    (
        c.validity().not_before.timestamp(),
        c.validity().not_after.timestamp(),
        c.public_key().subject_public_key.data.to_vec(),
    )
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[test]
#[ignore = "needs the control plane; run by scripts/test.sh"]
fn the_client_certificate_is_renewed_before_expiry_without_losing_ready() {
    // The signer backdates notBefore by 5 minutes. Since v1.22 a short-lived certificate's
    // notAfter is not backdated (issuance + duration); before, it was (notBefore + duration).
    // Either way each certificate here is usable for 2.5-3 minutes after issuance and due for
    // renewal (70-80 % of notBefore..notAfter) 15-84 s after it.
    let backdated_end = testplane::server_minor().unwrap() < 22;
    let (duration, lifetime) = if backdated_end {
        ("7m30s", 450)
    } else {
        ("3m", 180 + 300)
    };
    let plane = plane_with(Options {
        cluster_signing_duration: Some(duration.into()),
        ..Options::default()
    });
    let creds = enrol(&plane, NODE);
    let (nbf0, naf0, key0) = cert_facts(&creds.join("client.crt"));
    assert_eq!(naf0 - nbf0, lifetime, "the signer's duration applies");
    let agent = Agent::start(&creds, &[]);
    wait_ready(&plane, NODE);

    // The first renewal: a new key, a CSR auto-approved by the controller-manager.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while cert_facts(&creds.join("client.crt")).2 == key0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no renewal within 120 s:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let (_, naf1, key1) = cert_facts(&creds.join("client.crt"));
    assert!(naf1 > naf0);
    let csrs = kubectl(
        &plane,
        &[
            "get",
            "csr",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.spec.username} {.spec.signerName} {.status.conditions[0].reason}{\"\\n\"}{end}",
        ],
    );
    let renewal = csrs
        .lines()
        .find(|l| l.starts_with("picolet-pico-node-1-client-"))
        .unwrap_or_else(|| panic!("no renewal CSR in:\n{csrs}"));
    assert_eq!(
        renewal.split(' ').skip(1).collect::<Vec<_>>(),
        [
            "system:node:pico-node-1",
            "kubernetes.io/kube-apiserver-client-kubelet",
            "AutoApproved"
        ],
        "{csrs}"
    );
    // The key file holds the key of the new certificate, readable by the owner only.
    let key_pem = std::fs::read_to_string(creds.join("client.key")).unwrap();
    assert!(key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(creds.join("client.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_ne!(key1, key0);

    // Revoking this board's renewals (part of revoking a board): its next renewal request is
    // no longer approved.
    kubectl(
        &plane,
        &[
            "delete",
            "clusterrolebinding",
            "picolet-node-client-renewal-pico-node-1",
        ],
    );

    // Past the first certificate's expiry the node is still Ready and heartbeating.
    let wait = (naf0 - unix_now() + 15).max(0) as u64;
    std::thread::sleep(Duration::from_secs(wait));
    assert_eq!(ready(&plane, NODE), "True", "{}", agent.log());
    let renewed = common::lease_renewed_at(&plane, NODE);
    assert!(
        unix_now() - renewed < 20,
        "Lease renewed recently ({renewed})"
    );
    let metrics = common::via_proxy(&plane, NODE, "/metrics");
    assert!(
        metric(
            &metrics,
            "picolet_certificate_requests_total{kind=\"client\",result=\"installed\"}"
        ) >= 1.0
    );
    let expiry = metric(
        &metrics,
        "picolet_certificate_expiration_timestamp_seconds{kind=\"client\"}",
    ) as i64;
    assert!(expiry > naf0, "the metric follows the new certificate");
    assert!(
        !agent.log().contains("ERROR"),
        "no errors:\n{}",
        agent.log()
    );
    // The renewal after the revocation waits, unapproved (no condition at all).
    let csrs = kubectl(
        &plane,
        &[
            "get",
            "csr",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}={.status.conditions[0].type};{end}",
        ],
    );
    assert!(
        csrs.split(';')
            .any(|e| e.starts_with("picolet-pico-node-1-client-") && e.ends_with('=')),
        "an unapproved renewal request: {csrs}"
    );
}

// ---------------------------------------------------------------- the kubelet port

use std::io::{Read, Write};
use std::net::TcpStream;

fn picolet(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_picolet"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
#[ignore = "needs the control plane; run by scripts/test.sh"]
fn the_kubelet_port_serves_a_csr_certificate_to_authorized_callers_only() {
    let plane = plane_with(Options::default());
    let creds = enrol(&plane, NODE);
    assert!(
        creds.join("client-ca.crt").exists(),
        "enrol stores the client CA"
    );
    let agent = Agent::start(&creds, &[]);
    wait_ready(&plane, NODE);
    let port = agent.port;
    let ca = std::fs::read_to_string(plane.dir().join("ca.crt")).unwrap();
    let ca_key = std::fs::read_to_string(plane.dir().join("ca.key")).unwrap();

    // Until approved, the port serves a self-signed certificate the cluster CA does not verify.
    let early = https_get(port, &ca, NODE, None, "/healthz");
    assert!(early.is_err(), "{early:?}");

    // The serving CSR comes from the node; `picolet approve` checks and approves it.
    let admin = plane.admin_kubeconfig();
    let out = picolet(&[
        "approve",
        "--kubeconfig",
        admin.to_str().unwrap(),
        "--node-name",
        NODE,
        "--wait",
        "30",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("approved picolet-pico-node-1-serving-"),
        "{stdout}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !creds.join("serving.crt").exists() {
        assert!(std::time::Instant::now() < deadline, "{}", agent.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    // Now verified by the cluster CA, by the node's name and by its IP.
    let healthz = https_get(port, &ca, NODE, None, "/healthz").unwrap();
    assert_eq!(healthz, "HTTP/1.1 200 OK\nok");
    assert!(https_get(port, &ca, &common::node_ip(), None, "/healthz").is_ok());
    assert!(https_get(port, &ca, "kubernetes", None, "/healthz").is_err());

    // Anonymous: only /healthz.
    let anon = https_get(port, &ca, NODE, None, "/metrics").unwrap();
    assert!(anon.starts_with("HTTP/1.1 401 "), "{anon}");

    // An authenticated caller without RBAC: 403, logged.
    let prom = client_cert(&ca, &ca_key, "prometheus-test", "monitoring", false);
    let denied = https_get(port, &ca, NODE, Some(&prom), "/metrics").unwrap();
    assert!(denied.starts_with("HTTP/1.1 403 "), "{denied}");
    assert!(
        agent.log().contains("refused for user=prometheus-test"),
        "{}",
        agent.log()
    );

    // Granted nodes/metrics: allowed once the cached denial expires; /memory stays closed.
    kubectl(
        &plane,
        &[
            "create",
            "clusterrole",
            "node-metrics",
            "--verb=get",
            "--resource=nodes/metrics",
        ],
    );
    kubectl(
        &plane,
        &[
            "create",
            "clusterrolebinding",
            "prometheus-test",
            "--clusterrole=node-metrics",
            "--user=prometheus-test",
        ],
    );
    let mut last = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(45);
    while !last.starts_with("HTTP/1.1 200 ") {
        assert!(std::time::Instant::now() < deadline, "still {last}");
        std::thread::sleep(Duration::from_secs(1));
        last = https_get(port, &ca, NODE, Some(&prom), "/metrics").unwrap();
    }
    assert!(last.contains("picolet_heartbeats_total"));
    let memory = https_get(port, &ca, NODE, Some(&prom), "/memory").unwrap();
    assert!(memory.starts_with("HTTP/1.1 403 "), "{memory}");

    // Revoked: refused again within the cache lifetime.
    kubectl(&plane, &["delete", "clusterrolebinding", "prometheus-test"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(75);
    while last.starts_with("HTTP/1.1 200 ") {
        assert!(std::time::Instant::now() < deadline, "revocation not felt");
        std::thread::sleep(Duration::from_secs(1));
        last = https_get(port, &ca, NODE, Some(&prom), "/metrics").unwrap();
    }
    assert!(last.starts_with("HTTP/1.1 403 "), "{last}");

    // Certificates the client CA did not sign, or expired ones: no handshake at all.
    let (other, other_key) = other_ca();
    let stranger = client_cert(
        &other,
        &other_key,
        "system:kube-apiserver",
        "system:masters",
        false,
    );
    assert!(https_get(port, &ca, NODE, Some(&stranger), "/metrics").is_err());
    let expired = client_cert(&ca, &ca_key, "prometheus-test", "monitoring", true);
    assert!(https_get(port, &ca, NODE, Some(&expired), "/metrics").is_err());

    // Garbage and an oversized record where a ClientHello belongs.
    for junk in [
        b"GET /metrics HTTP/1.1\r\n\r\n".to_vec(),
        [&[0x16u8, 0x03, 0x01, 0xff, 0xff][..], &[0u8; 70_000][..]].concat(),
        vec![0x16, 0x03, 0x03, 0x00, 0x05, 1, 0, 0, 1, 9],
    ] {
        let mut s = TcpStream::connect((common::node_ip(), port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let _ = s.write_all(&junk);
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap_or(0);
        assert!(n < 64, "no HTTP answer to junk");
    }

    // The API server's kubelet client (system:masters) gets through, and sees the counters.
    let metrics = common::via_proxy(&plane, NODE, "/metrics");
    for outcome in ["unauthenticated", "forbidden", "tls_failure"] {
        let n = metric(
            &metrics,
            &format!("picolet_kubelet_requests_total{{outcome=\"{outcome}\"}}"),
        );
        assert!(n >= 1.0, "{outcome}: {n}");
    }
    assert!(
        metric(
            &metrics,
            "picolet_kubelet_authorization_reviews_total{result=\"allowed\"}"
        ) >= 2.0
    );
    assert_eq!(ready(&plane, NODE), "True");
    assert!(
        agent.log().contains("kubelet port: TLS handshake"),
        "{}",
        agent.log()
    );
}

// ---------------------------------------------------------------- bootstrap tokens

#[test]
#[ignore = "needs the control plane; run by scripts/test.sh"]
fn a_node_joins_with_a_bootstrap_token_and_a_bad_token_is_refused() {
    let plane = plane_with(Options::default());
    let node = "pico-node-2";
    let dir = plane.dir().join("join-pico-node-2");
    common::token(&plane, node, &dir, 10);
    use std::os::unix::fs::PermissionsExt;
    let token_file = dir.join("bootstrap-token");
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(
        !dir.join("client.key").exists(),
        "no key before the node makes one"
    );
    let token = std::fs::read_to_string(&token_file).unwrap();
    let id = token.split('.').next().unwrap().to_string();

    // A copy of the directory with a wrong secret: refused (401), retried, nothing created.
    let bad = plane.dir().join("join-bad");
    std::fs::create_dir_all(&bad).unwrap();
    for f in ["node.toml", "ca.crt", "client-ca.crt"] {
        std::fs::copy(dir.join(f), bad.join(f)).unwrap();
    }
    std::fs::write(
        bad.join("bootstrap-token"),
        format!("{id}.0000000000000000"),
    )
    .unwrap();
    let bad_agent = Agent::start(&bad, &[]);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !bad_agent
        .log()
        .contains("the bootstrap token was refused (HTTP 401)")
    {
        assert!(std::time::Instant::now() < deadline, "{}", bad_agent.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(bad_agent);
    assert!(!bad.join("client.crt").exists());

    // The real token: the node makes its key, its CSR is auto-approved, it becomes Ready.
    let agent = Agent::start(&dir, &[]);
    wait_ready(&plane, node);
    assert!(dir.join("client.crt").exists() && dir.join("client.key").exists());
    assert!(!token_file.exists(), "the token is deleted once used");
    let csrs = kubectl(
        &plane,
        &[
            "get",
            "csr",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.spec.username} {.status.conditions[0].reason}{\"\\n\"}{end}",
        ],
    );
    let line = csrs
        .lines()
        .find(|l| l.starts_with("picolet-pico-node-2-bootstrap-"))
        .unwrap_or_else(|| panic!("{csrs}"));
    assert!(
        line.ends_with(&format!(" system:bootstrap:{id} AutoApproved")),
        "{line}"
    );
    let (_, _, _) = cert_facts(&dir.join("client.crt"));
    drop(agent);

    // An expired token is refused by the API server.
    let dir3 = plane.dir().join("join-pico-node-3");
    common::token(&plane, "pico-node-3", &dir3, 60);
    let id3 = std::fs::read_to_string(dir3.join("bootstrap-token")).unwrap()[..6].to_string();
    kubectl(
        &plane,
        &[
            "-n",
            "kube-system",
            "patch",
            "secret",
            &format!("bootstrap-token-{id3}"),
            "--type=merge",
            "-p",
            r#"{"stringData":{"expiration":"2020-01-01T00:00:00Z"}}"#,
        ],
    );
    let expired = Agent::start(&dir3, &[]);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !expired.log().contains("HTTP 401") {
        assert!(std::time::Instant::now() < deadline, "{}", expired.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!dir3.join("client.crt").exists());
}

// ---------------------------------------------------------------- refusals towards the API server

fn http_metrics(agent: &Agent) -> String {
    common::raw_http(agent.port, b"GET /metrics HTTP/1.1\r\n\r\n")
}

fn wait_log(agent: &Agent, text: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !agent.log().contains(text) {
        assert!(
            std::time::Instant::now() < deadline,
            "{text:?} not in:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
#[ignore = "needs the control plane; run by scripts/test.sh"]
fn wrong_names_expired_or_foreign_certificates_and_revoked_rbac_are_refused_cleanly() {
    let plane = plane_with(Options::default());
    let one = enrol(&plane, NODE);
    let two = enrol(&plane, "pico-node-2");
    let plain = ["--kubelet-plain-http", "--no-certificate-rotation"];

    // 1. A server name the API server's certificate does not carry.
    let wrong_name = plane.dir().join("wrong-name");
    copy_dir(&one, &wrong_name);
    let toml = std::fs::read_to_string(one.join("node.toml")).unwrap();
    std::fs::write(
        wrong_name.join("node.toml"),
        toml.replace(
            "tls_server_name = \"kubernetes\"",
            "tls_server_name = \"wrong.example\"",
        ),
    )
    .unwrap();
    let a = Agent::start(&wrong_name, &plain);
    wait_log(&a, "TLS handshake with wrong.example failed");
    assert!(metric(&http_metrics(&a), "picolet_api_tls_failures_total") >= 1.0);

    // 2. An expired client certificate (signed by the right CA).
    let expired = plane.dir().join("expired");
    copy_dir(&one, &expired);
    let ca = std::fs::read_to_string(plane.dir().join("ca.crt")).unwrap();
    let ca_key = std::fs::read_to_string(plane.dir().join("ca.key")).unwrap();
    let (cert, key) = client_cert(
        &ca,
        &ca_key,
        "system:node:pico-node-1",
        "system:nodes",
        true,
    );
    std::fs::write(expired.join("client.crt"), cert).unwrap();
    std::fs::write(expired.join("client.key"), key).unwrap();
    let b = Agent::start(&expired, &plain);
    wait_log(&b, "client certificate expired at");
    // kube-apiserver takes any client certificate in the handshake and refuses it in its
    // authenticator: HTTP 401.
    wait_log(&b, "HTTP 401 (the client certificate is not accepted");
    assert!(
        metric(
            &http_metrics(&b),
            "picolet_api_requests_total{verb=\"POST\",code=\"401\"}"
        ) >= 1.0
    );

    // 3. pico-node-2's certificate in pico-node-1's directory: the node authorizer refuses.
    let foreign = plane.dir().join("foreign");
    copy_dir(&one, &foreign);
    std::fs::copy(two.join("client.crt"), foreign.join("client.crt")).unwrap();
    std::fs::copy(two.join("client.key"), foreign.join("client.key")).unwrap();
    let c = Agent::start(&foreign, &plain);
    wait_log(&c, "client.crt is for \"system:node:pico-node-2\"");
    wait_log(&c, "HTTP 403 (forbidden");
    assert!(
        metric(
            &http_metrics(&c),
            "picolet_api_requests_total{verb=\"POST\",code=\"403\"}"
        ) >= 1.0
    );

    std::thread::sleep(Duration::from_secs(2));
    let (found, _) = common::kubectl_try(&plane, &["get", "node", NODE]);
    assert!(!found, "no pico-node-1 was registered by anyone");

    // 4. Revoked RBAC: pico-node-2 loses its ConfigMap role; the config state says so.
    kubectl(
        &plane,
        &[
            "create",
            "configmap",
            "pico-config",
            "--from-literal=memory_values=0=1",
        ],
    );
    let d = Agent::start(&two, &["--kubelet-plain-http", "--config-mode", "poll"]);
    wait_ready(&plane, "pico-node-2");
    let state = |plane: &ControlPlane| {
        kubectl(
            plane,
            &[
                "get",
                "node",
                "pico-node-2",
                "-o",
                "jsonpath={.metadata.annotations.picolet\\.dev/config-state}",
            ],
        )
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(45);
    while state(&plane) != "Applied" {
        assert!(std::time::Instant::now() < deadline, "{}", d.log());
        std::thread::sleep(Duration::from_millis(500));
    }
    kubectl(
        &plane,
        &["delete", "rolebinding", "picolet-config-reader-pico-node-2"],
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(75);
    while state(&plane) != "Error" {
        assert!(std::time::Instant::now() < deadline, "{}", d.log());
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        metric(
            &http_metrics(&d),
            "picolet_api_requests_total{verb=\"GET\",code=\"403\"}"
        ) >= 1.0
    );
    assert_eq!(ready(&plane, "pico-node-2"), "True", "still a Ready node");

    for (name, agent) in [
        ("wrong name", a),
        ("expired", b),
        ("foreign", c),
        ("revoked", d),
    ] {
        let mut agent = agent;
        assert!(agent.alive(), "{name}: {}", agent.log());
        assert!(!agent.log().contains("panicked"), "{name}");
    }
}

#[test]
#[ignore = "needs the control plane; run by scripts/test.sh"]
fn the_devices_tls_server_serves_the_api_server_and_refuses_strangers() {
    // The kubelet port served by picolet_device::tls_server (the Pico's) instead of rustls:
    // the API server's Go TLS client, rustls and openssl-made certificates against it.
    let plane = plane_with(Options::default());
    let creds = enrol(&plane, NODE);
    let agent = Agent::start(&creds, &["--kubelet-tls", "device"]);
    wait_ready(&plane, NODE);
    let admin = plane.admin_kubeconfig();
    let out = picolet(&[
        "approve",
        "--kubeconfig",
        admin.to_str().unwrap(),
        "--node-name",
        NODE,
        "--wait",
        "30",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ca = std::fs::read_to_string(plane.dir().join("ca.crt")).unwrap();
    let ca_key = std::fs::read_to_string(plane.dir().join("ca.key")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while https_get(agent.port, &ca, NODE, None, "/healthz").is_err() {
        assert!(std::time::Instant::now() < deadline, "{}", agent.log());
        std::thread::sleep(Duration::from_millis(300));
    }
    // Through the API server: Go's TLS client with the apiserver's kubelet client certificate
    // (HelloRetryRequest for secp256r1, client certificate, SubjectAccessReview).
    let memory = common::via_proxy(&plane, NODE, "/memory");
    assert!(
        memory.starts_with("# picolet memory region: 1024 bytes"),
        "{memory}"
    );
    let anon = https_get(agent.port, &ca, NODE, None, "/metrics").unwrap();
    assert!(anon.starts_with("HTTP/1.1 401 "), "{anon}");
    let (other, other_key) = other_ca();
    let stranger = client_cert(
        &other,
        &other_key,
        "system:kube-apiserver",
        "system:masters",
        false,
    );
    assert!(https_get(agent.port, &ca, NODE, Some(&stranger), "/metrics").is_err());
    let prom = client_cert(&ca, &ca_key, "prometheus-test", "monitoring", false);
    let denied = https_get(agent.port, &ca, NODE, Some(&prom), "/metrics").unwrap();
    assert!(denied.starts_with("HTTP/1.1 403 "), "{denied}");
    let metrics = common::via_proxy(&plane, NODE, "/metrics");
    assert!(
        metric(
            &metrics,
            "picolet_kubelet_requests_total{outcome=\"tls_failure\"}"
        ) >= 1.0
    );
    assert!(
        agent
            .log()
            .contains("kubelet port: TLS by the device's server")
    );
    assert!(
        agent
            .log()
            .contains("client certificate refused: UnknownIssuer"),
        "{}",
        agent.log()
    );
}
