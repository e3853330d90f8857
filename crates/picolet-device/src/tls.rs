//! The device's TLS client setup for embedded-tls: TLS 1.3, AES-128-GCM, the cluster CA pinned,
//! the server name checked, and the node's client certificate with its P-256 key (mutual TLS).
//! Shared by the firmware and by the host test that runs it against a real API server.

use embedded_tls::pki::CertVerifier;
use embedded_tls::{
    Aes128GcmSha256, Certificate, CryptoProvider, SignatureScheme, TlsClock, TlsConfig, TlsError,
};

/// The cipher suite the device offers (mandatory for every TLS 1.3 server).
pub type CipherSuite = Aes128GcmSha256;

/// Largest server certificate the verifier copies (API server certificates are about 1 KB).
pub const SERVER_CERT_MAX: usize = 2048;

/// Randomness, the pinned CA, and the node's client identity.
pub struct NodeTlsProvider<'a, R, C: TlsClock> {
    rng: R,
    verifier: CertVerifier<'a, CipherSuite, C, SERVER_CERT_MAX>,
    client_cert_der: &'a [u8],
    client_key_pkcs8_der: &'a [u8],
}

impl<'a, R, C: TlsClock> NodeTlsProvider<'a, R, C> {
    /// A provider that trusts only `ca_der` and presents `client_cert_der` (key in PKCS#8 DER,
    /// as `picolet enrol` writes it). `C` supplies wall-clock time for validity checks.
    pub fn new(
        rng: R,
        ca_der: &'a [u8],
        client_cert_der: &'a [u8],
        client_key_pkcs8_der: &'a [u8],
    ) -> Self {
        Self {
            rng,
            verifier: CertVerifier::new(Certificate::X509(ca_der)),
            client_cert_der,
            client_key_pkcs8_der,
        }
    }
}

impl<R: rand_core::CryptoRngCore, C: TlsClock> CryptoProvider for NodeTlsProvider<'_, R, C> {
    type CipherSuite = CipherSuite;
    type Signature = p256::ecdsa::DerSignature;

    fn rng(&mut self) -> impl embedded_tls::CryptoRngCore {
        &mut self.rng
    }

    fn verifier(
        &mut self,
    ) -> Result<&mut impl embedded_tls::TlsVerifier<Self::CipherSuite>, TlsError> {
        Ok(&mut self.verifier)
    }

    fn signer(
        &mut self,
    ) -> Result<
        (
            impl p256::ecdsa::signature::SignerMut<Self::Signature>,
            SignatureScheme,
        ),
        TlsError,
    > {
        use p256::pkcs8::DecodePrivateKey;
        let key = p256::SecretKey::from_pkcs8_der(self.client_key_pkcs8_der)
            .map_err(|_| TlsError::InvalidPrivateKey)?;
        Ok((
            p256::ecdsa::SigningKey::from(&key),
            SignatureScheme::EcdsaSecp256r1Sha256,
        ))
    }

    /// None (an anonymous client: a board joining with a bootstrap token) when empty.
    fn client_cert(&mut self) -> Option<Certificate<impl AsRef<[u8]>>> {
        (!self.client_cert_der.is_empty()).then_some(Certificate::X509(self.client_cert_der))
    }
}

/// The TLS configuration: the name the server certificate must carry (a DNS SAN; the device
/// connects by IP, and embedded-tls does not check IP SANs).
pub fn config(server_name: &str) -> TlsConfig<'_> {
    TlsConfig::new().with_server_name(server_name)
}

/// Why an exchange with the API server failed.
#[derive(Debug)]
pub enum ExchangeError {
    /// TLS failed mid-connection (alert, bad record, I/O).
    Tls(TlsError),
    /// The response was not valid HTTP, or its head or a chunk line did not fit `input`.
    Http,
    /// The server closed the connection before the response ended.
    Closed,
}

impl core::fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Tls(e) => write!(f, "TLS error {e:?}"),
            Self::Http => f.write_str("malformed or oversized HTTP response"),
            Self::Closed => f.write_str("connection closed mid-response"),
        }
    }
}

/// Sends one request over an open TLS connection and reads the response with the core's HTTP
/// decoder: the body goes into `body` (the excess is counted, not kept), `input` holds raw bytes
/// in flight. Returns the head and the full body length.
pub async fn exchange<S: embedded_io_async::Read + embedded_io_async::Write>(
    tls: &mut embedded_tls::TlsConnection<'_, S, CipherSuite>,
    request: &[u8],
    input: &mut [u8],
    body: &mut [u8],
) -> Result<(picolet_core::http::ResponseHead, usize), ExchangeError> {
    use embedded_io_async::Write as _;
    use picolet_core::http::{ReadStep, ResponseReader};
    tls.write_all(request).await.map_err(ExchangeError::Tls)?;
    tls.flush().await.map_err(ExchangeError::Tls)?;
    let mut reader = ResponseReader::new();
    let mut end = 0usize;
    loop {
        let (n, step) = reader
            .feed(&input[..end], body)
            .map_err(|_| ExchangeError::Http)?;
        input.copy_within(n..end, 0);
        end -= n;
        if let ReadStep::Done(r) = step {
            return Ok((r.head, r.body_len));
        }
        if end == input.len() {
            return Err(ExchangeError::Http);
        }
        let r = tls
            .read(&mut input[end..])
            .await
            .map_err(ExchangeError::Tls)?;
        if r == 0 {
            let r = reader.closed().map_err(|_| ExchangeError::Closed)?;
            return Ok((r.head, r.body_len));
        }
        end += r;
    }
}
