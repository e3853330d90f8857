//! Trust, end to end against the real control plane: certificates through the CSR API
//! (renewal, the kubelet-serving certificate), bootstrap tokens, and who may use the kubelet
//! port. `#[ignore]`d for a plain `cargo test`; `scripts/test.sh` runs them.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod common;

use common::{Agent, NODE, enrol, kubectl, metric, ready, wait_ready};
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
    // 7m30s certificates, backdated 5 minutes by the signer: each is usable for 2m30s after
    // issuance and due for renewal 15-60 s after it.
    let plane = plane_with(Options {
        cluster_signing_duration: Some("7m30s".into()),
        ..Options::default()
    });
    let creds = enrol(&plane, NODE);
    let (nbf0, naf0, key0) = cert_facts(&creds.join("client.crt"));
    assert_eq!(naf0 - nbf0, 450, "the signer's duration applies");
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
    assert!(key_pem.starts_with("-----BEGIN EC PRIVATE KEY-----"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(creds.join("client.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_ne!(key1, key0);

    // Past the first certificate's expiry the node is still Ready and heartbeating.
    let wait = (naf0 - unix_now() + 15).max(0) as u64;
    std::thread::sleep(Duration::from_secs(wait));
    assert_eq!(ready(&plane, NODE), "True", "{}", agent.log());
    let renew_time = kubectl(
        &plane,
        &[
            "get",
            "lease",
            "-n",
            "kube-node-lease",
            NODE,
            "-o",
            "jsonpath={.spec.renewTime}",
        ],
    );
    let t = chrono_like_parse(&renew_time);
    assert!(unix_now() - t < 20, "Lease renewed recently ({renew_time})");
    let metrics = kubectl(
        &plane,
        &[
            "get",
            "--raw",
            &format!("/api/v1/nodes/{NODE}/proxy/metrics"),
        ],
    );
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
}

/// `2026-11-26T20:33:41.123456Z` → Unix seconds (enough of RFC 3339 for Lease times).
fn chrono_like_parse(s: &str) -> i64 {
    let (date, time) = s.split_once('T').unwrap();
    let p: Vec<i64> = date.split('-').map(|x| x.parse().unwrap()).collect();
    let hms: Vec<i64> = time[..8].split(':').map(|x| x.parse().unwrap()).collect();
    let (y, m, d) = (p[0], p[1], p[2]);
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2.rem_euclid(400);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400 + hms[0] * 3600 + hms[1] * 60 + hms[2]
}
