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

    fn client_cert(&mut self) -> Option<Certificate<impl AsRef<[u8]>>> {
        Some(Certificate::X509(self.client_cert_der))
    }
}

/// The TLS configuration: the name the server certificate must carry (a DNS SAN; the device
/// connects by IP, and embedded-tls does not check IP SANs).
pub fn config(server_name: &str) -> TlsConfig<'_> {
    TlsConfig::new().with_server_name(server_name)
}
