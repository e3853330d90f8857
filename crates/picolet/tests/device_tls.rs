//! The firmware's TLS client setup and request exchange (`picolet_device::tls`: embedded-tls,
//! pinned CA, server name, client certificate with a P-256 key, the core's HTTP codec) run on
//! the host against the real kube-apiserver, with
//! the credentials `picolet enrol` issued. This is the same code the Pico runs; only the socket
//! (tokio here, embassy-net there) differs.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use embedded_io_adapters::tokio_1::FromTokio;
use embedded_tls::{TlsConnection, TlsContext};
use picolet_core::http::{self, Method};
use picolet_device::tls::{CipherSuite, NodeTlsProvider};
mod common;

struct HostClock;

impl embedded_tls::TlsClock for HostClock {
    fn now() -> Option<u64> {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs())
    }
}

fn pem_der(path: &Path, label: &str) -> Vec<u8> {
    use base64::Engine;
    let text = std::fs::read_to_string(path).unwrap();
    let begin = format!("-----BEGIN {label}-----");
    let start = text.find(&begin).unwrap() + begin.len();
    let end = text.find(&format!("-----END {label}-----")).unwrap();
    let b64: String = text[start..end].split_whitespace().collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
}

/// Opens a device-style TLS connection and GETs `path`; returns the status and body, or the
/// TLS error text.
async fn device_get(
    addr: &str,
    server_name: &str,
    ca: &[u8],
    cert: &[u8],
    key: &[u8],
    path: &str,
) -> Result<(u16, String), String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let mut read_buf = vec![0u8; 16_640];
    let mut write_buf = vec![0u8; 4096];
    let mut tls: TlsConnection<'_, _, CipherSuite> =
        TlsConnection::new(FromTokio::new(tcp), &mut read_buf, &mut write_buf);
    let config = picolet_device::tls::config(server_name);
    let provider: NodeTlsProvider<'_, _, HostClock> =
        NodeTlsProvider::new(rand_core::OsRng, ca, cert, key);
    tls.open(TlsContext::new(&config, provider))
        .await
        .map_err(|e| format!("{e:?}"))?;
    let mut req = vec![0u8; 4096];
    let n = http::encode_request(
        &mut req,
        Method::Get,
        server_name,
        format_args!("{path}"),
        None,
    )
    .unwrap();
    let (mut input, mut body) = (vec![0u8; 2048], vec![0u8; 8192]);
    let (head, len) = picolet_device::tls::exchange(&mut tls, &req[..n], &mut input, &mut body)
        .await
        .map_err(|e| e.to_string())?;
    let body = &body[..len.min(body.len())];
    Ok((head.status, String::from_utf8_lossy(body).into_owned()))
}

#[test]
#[ignore = "needs the control plane; run by scripts/test.sh"]
fn the_device_tls_client_authenticates_as_the_node_and_refuses_wrong_servers() {
    let plane = common::plane();
    let creds = common::enrol(&plane, "pico-node-1");
    let ca = pem_der(&creds.join("ca.crt"), "CERTIFICATE");
    let cert = pem_der(&creds.join("client.crt"), "CERTIFICATE");
    let key = pem_der(&creds.join("client.key"), "PRIVATE KEY");
    let addr = plane.server().trim_start_matches("https://").to_string();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Authenticated as system:node:pico-node-1: its own ConfigMap is readable (not found yet)...
        let (status, body) = device_get(
            &addr,
            "kubernetes",
            &ca,
            &cert,
            &key,
            "/api/v1/namespaces/default/configmaps/pico-config",
        )
        .await
        .expect("device TLS handshake with the real API server");
        assert_eq!(status, 404, "{body}");
        // ...another one is forbidden, by name, to exactly this node.
        let (status, body) = device_get(
            &addr,
            "kubernetes",
            &ca,
            &cert,
            &key,
            "/api/v1/namespaces/default/configmaps/other",
        )
        .await
        .unwrap();
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("system:node:pico-node-1"), "{body}");
        // A server name the certificate does not carry is refused.
        let err = device_get(&addr, "not-the-apiserver", &ca, &cert, &key, "/healthz")
            .await
            .unwrap_err();
        assert_eq!(err, "InvalidCertificate");
        // So is a server whose certificate another CA signed.
        let other_ca = {
            let k = rcgen::KeyPair::generate().unwrap();
            let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            p.self_signed(&k).unwrap().der().to_vec()
        };
        let err = device_get(&addr, "kubernetes", &other_ca, &cert, &key, "/healthz")
            .await
            .unwrap_err();
        assert_eq!(err, "InvalidCertificate");
    });
}
