//! The device's TLS 1.3 server (`picolet_device::tls_server`) against independent clients:
//! rustls (with and without a secp256r1 key share, so both the direct path and the
//! HelloRetryRequest path run), `openssl s_client`, and hostile input. The same code serves
//! the Pico's kubelet port; only the socket differs (tokio here, embassy-net there).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use embedded_io_adapters::tokio_1::FromTokio;
use picolet_core::time::UnixSeconds;
use picolet_device::tls_server::{
    self, CertificateRefusal, ClientIdentity, ServerConfig, TlsServerError,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

struct Pki {
    ca_pem: String,
    ca_der: Vec<u8>,
    server_der: Vec<u8>,
    server_key: p256::ecdsa::SigningKey,
    ca_cert: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

fn pki() -> Pki {
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "test-cluster-ca");
    let ca_cert = p.self_signed(&ca_key).unwrap();
    let server_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut s = rcgen::CertificateParams::new(vec!["pico-node-1".into()]).unwrap();
    s.subject_alt_names
        .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let server = s.signed_by(&server_key, &ca_cert, &ca_key).unwrap();
    use p256::pkcs8::DecodePrivateKey;
    Pki {
        ca_pem: ca_cert.pem(),
        ca_der: ca_cert.der().to_vec(),
        server_der: server.der().to_vec(),
        server_key: p256::ecdsa::SigningKey::from_pkcs8_der(&server_key.serialize_der()).unwrap(),
        ca_cert,
        ca_key,
    }
}

impl Pki {
    fn client(&self, cn: &str, orgs: &[&str], expired: bool) -> (String, String) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        for o in orgs {
            p.distinguished_name
                .push(rcgen::DnType::OrganizationName, *o);
        }
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        if expired {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let c = p.signed_by(&key, &self.ca_cert, &self.ca_key).unwrap();
        (c.pem(), key.serialize_pem())
    }
}

fn now() -> UnixSeconds {
    UnixSeconds::from_secs(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
}

/// What the server thread saw: the caller's identity and the request line.
type Served = std::thread::JoinHandle<Result<(Option<ClientIdentity>, String), TlsServerError>>;

/// Serves one connection with the device server on a free port.
fn serve_one(pki: &Pki, client_ca: bool, rx_len: usize) -> (u16, Served) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let cert = pki.server_der.clone();
    let key = pki.server_key.clone();
    let ca = pki.ca_der.clone();
    let handle = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            listener.set_nonblocking(true).unwrap();
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let (tcp, _) = listener.accept().await.unwrap();
            let config = ServerConfig {
                cert_der: &cert,
                key: &key,
                client_ca_der: client_ca.then_some(&ca[..]),
                now_unix: Some(now()),
            };
            let mut rx = vec![0u8; rx_len];
            let mut tx = vec![0u8; 2048];
            let mut conn = tls_server::accept(
                FromTokio::new(tcp),
                &config,
                &mut rand_core::OsRng,
                &mut rx,
                &mut tx,
            )
            .await?;
            let peer = conn.peer().cloned();
            let mut head = vec![0u8; 1024];
            let mut n = 0;
            while !head[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                let r = conn.read(&mut head[n..]).await?;
                if r == 0 {
                    break;
                }
                n += r;
            }
            let line = String::from_utf8_lossy(&head[..n])
                .lines()
                .next()
                .unwrap_or_default()
                .to_string();
            // A body larger than one record, to check fragmentation.
            let body = "x".repeat(70_000);
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            conn.write_all(resp.as_bytes()).await?;
            conn.close().await;
            Ok((peer, line))
        })
    });
    (port, handle)
}

/// A rustls client; `p256_only` leaves out X25519 so that no HelloRetryRequest is needed.
fn rustls_get(
    port: u16,
    ca_pem: &str,
    client: Option<&(String, String)>,
    p256_only: bool,
) -> Result<String, String> {
    let mut provider = rustls::crypto::ring::default_provider();
    if p256_only {
        provider.kx_groups = vec![rustls::crypto::ring::kx_group::SECP256R1];
    }
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        Some((c, k)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(c.as_bytes())
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_slice(k.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let conn = rustls::ClientConnection::new(
        Arc::new(config),
        ServerName::try_from("pico-node-1").unwrap(),
    )
    .unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(b"GET /metrics HTTP/1.1\r\nHost: pico-node-1\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    tls.read_to_end(&mut out).map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[test]
fn rustls_clients_with_and_without_retry_get_served_and_identified() {
    let pki = pki();
    // (rcgen keeps one value per attribute type: one O here; several are tested in the core.)
    let prom = pki.client("prometheus", &["monitoring"], false);
    for p256_only in [true, false] {
        let (port, server) = serve_one(&pki, true, 4096);
        let page = rustls_get(port, &pki.ca_pem, Some(&prom), p256_only).unwrap();
        assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{}", &page[..100]);
        assert_eq!(page.len(), page.find("\r\n\r\n").unwrap() + 4 + 70_000);
        let (peer, line) = server.join().unwrap().unwrap();
        assert_eq!(line, "GET /metrics HTTP/1.1");
        let peer = peer.expect("identified");
        assert_eq!(peer.user.as_str(), "prometheus");
        let groups: Vec<&str> = peer.groups.iter().map(|g| g.as_str()).collect();
        assert_eq!(groups, ["monitoring"]);
    }
}

#[test]
fn anonymous_clients_connect_and_are_anonymous() {
    let pki = pki();
    let (port, server) = serve_one(&pki, true, 4096);
    let page = rustls_get(port, &pki.ca_pem, None, false).unwrap();
    assert!(page.starts_with("HTTP/1.1 200 OK"));
    assert_eq!(server.join().unwrap().unwrap().0, None);
    // Without a client CA no certificate is even asked for.
    let (port, server) = serve_one(&pki, false, 4096);
    let prom = pki.client("prometheus", &[], false);
    assert!(rustls_get(port, &pki.ca_pem, Some(&prom), true).is_ok());
    assert_eq!(server.join().unwrap().unwrap().0, None);
}

#[test]
fn foreign_and_expired_client_certificates_are_refused_with_an_alert() {
    let pki = pki();
    let other = self::pki();
    let stranger = other.client("system:kube-apiserver", &["system:masters"], false);
    let (port, server) = serve_one(&pki, true, 4096);
    let err = rustls_get(port, &pki.ca_pem, Some(&stranger), true).unwrap_err();
    assert!(err.contains("UnknownCA") || err.contains("alert"), "{err}");
    assert_eq!(
        server.join().unwrap().unwrap_err(),
        TlsServerError::ClientCertificate(CertificateRefusal::UnknownIssuer)
    );
    let expired = pki.client("prometheus", &[], true);
    let (port, server) = serve_one(&pki, true, 4096);
    let err = rustls_get(port, &pki.ca_pem, Some(&expired), true).unwrap_err();
    assert!(
        err.contains("CertificateExpired") || err.contains("alert"),
        "{err}"
    );
    assert_eq!(
        server.join().unwrap().unwrap_err(),
        TlsServerError::ClientCertificate(CertificateRefusal::Expired)
    );
}

#[test]
fn tls12_clients_and_junk_are_refused_without_panics() {
    let pki = pki();
    // A TLS 1.2-only client.
    let (port, server) = serve_one(&pki, true, 4096);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(pki.ca_der.clone())).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let conn = rustls::ClientConnection::new(
        Arc::new(config),
        ServerName::try_from("pico-node-1").unwrap(),
    )
    .unwrap();
    let mut tls = rustls::StreamOwned::new(conn, TcpStream::connect(("127.0.0.1", port)).unwrap());
    assert!(
        tls.write_all(b"GET / HTTP/1.1\r\n\r\n").is_err() || tls.flush().is_err() || {
            let mut b = [0u8; 8];
            tls.read(&mut b).is_err()
        }
    );
    assert_eq!(
        server.join().unwrap().unwrap_err(),
        TlsServerError::Unsupported { what: "TLS 1.3" }
    );
    // Junk: plain HTTP, an oversized record, a truncated hello, random bytes.
    let mut seed = 7u64;
    let random: Vec<u8> = (0..3000)
        .map(|_| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            (seed >> 33) as u8
        })
        .collect();
    for (junk, expect) in [
        (b"GET /metrics HTTP/1.1\r\n\r\n".to_vec(), "record type"),
        (
            [&[0x16u8, 3, 1, 0x40, 0x00][..], &[0u8; 16_384][..]].concat(),
            "larger than the receive buffer",
        ),
        (vec![0x16, 3, 1, 0, 6, 1, 0, 0, 2, 3, 3], "ClientHello"),
        (random, ""),
    ] {
        let (port, server) = serve_one(&pki, true, 4096);
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let _ = s.write_all(&junk);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let err = server.join().unwrap().unwrap_err();
        let text = format!("{err}");
        assert!(text.contains(expect), "{expect}: {text}");
    }
}

#[test]
fn openssl_s_client_is_served_when_installed() {
    if std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_err()
    {
        eprintln!("openssl not installed; skipped");
        return;
    }
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = pki.client("curl-user", &["ops"], false);
    std::fs::write(dir.path().join("ca.pem"), &pki.ca_pem).unwrap();
    std::fs::write(dir.path().join("c.pem"), cert).unwrap();
    std::fs::write(dir.path().join("c.key"), key).unwrap();
    let (port, server) = serve_one(&pki, true, 4096);
    let mut child = std::process::Command::new("openssl")
        .args(["s_client", "-quiet", "-tls1_3", "-verify_return_error"])
        .arg("-connect")
        .arg(format!("127.0.0.1:{port}"))
        .arg("-CAfile")
        .arg(dir.path().join("ca.pem"))
        .arg("-cert")
        .arg(dir.path().join("c.pem"))
        .arg("-key")
        .arg(dir.path().join("c.key"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"GET /healthz HTTP/1.1\r\n\r\n")
        .unwrap();
    let (peer, line) = server.join().unwrap().unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("HTTP/1.1 200 OK"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(line, "GET /healthz HTTP/1.1");
    assert_eq!(peer.unwrap().user.as_str(), "curl-user");
}

/// KeyUpdate (RFC 8446 §4.6.3) with an independent client: rustls asks for new keys in both
/// directions in the middle of the request; the server rekeys, answers with its own KeyUpdate
/// and sends the 70 KB answer under its new keys. (Before, KeyUpdate got `unexpected_message`.)
/// The record-level cases are in `picolet-device/tests/tls_conformance.rs`.
#[test]
fn rustls_key_update_mid_request_is_followed() {
    let pki = pki();
    let prom = pki.client("prometheus", &["monitoring"], false);
    let (port, server) = serve_one(&pki, true, 4096);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(pki.ca_der.clone())).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(
        CertificateDer::pem_slice_iter(prom.0.as_bytes())
            .map(Result::unwrap)
            .collect(),
        PrivateKeyDer::from_pem_slice(prom.1.as_bytes()).unwrap(),
    )
    .unwrap();
    let conn = rustls::ClientConnection::new(
        Arc::new(config),
        ServerName::try_from("pico-node-1").unwrap(),
    )
    .unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
    tls.flush().unwrap();
    for _ in 0..2 {
        tls.conn.refresh_traffic_keys().unwrap();
        tls.write_all(b"X-Rekeyed: yes\r\n").unwrap();
        tls.flush().unwrap();
    }
    tls.write_all(b"Host: pico-node-1\r\n\r\n").unwrap();
    let mut out = Vec::new();
    tls.read_to_end(&mut out).unwrap();
    let page = String::from_utf8_lossy(&out);
    assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{}", &page[..100]);
    assert_eq!(page.len(), page.find("\r\n\r\n").unwrap() + 4 + 70_000);
    let (peer, line) = server.join().unwrap().unwrap();
    assert_eq!(line, "GET /metrics HTTP/1.1");
    assert_eq!(peer.unwrap().user.as_str(), "prometheus");
}
