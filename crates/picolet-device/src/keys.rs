//! The node's own P-256 keys. A key is made where it is used (on the board, or by the host
//! agent for a virtual Pico) from mixed entropy, signs its certificate request, and is never
//! sent anywhere: renewal swaps the key together with the certificate.

use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use picolet_core::pki::{self, CsrSubject, PkiError, PublicKey};
use sha2::{Digest, Sha256};

/// Why a key could not be made or read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyError {
    /// Fewer than 32 bytes of entropy were given.
    NotEnoughEntropy,
    /// The SEC1 DER is not a P-256 private key.
    BadKey,
}

impl core::fmt::Display for KeyError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NotEnoughEntropy => f.write_str("at least 32 bytes of entropy are needed"),
            Self::BadKey => f.write_str("not a P-256 private key (SEC1 DER)"),
        }
    }
}

/// A node's P-256 key.
pub struct NodeKey {
    key: SigningKey,
}

impl NodeKey {
    /// Makes a key from several entropy sources, hashed together with SHA-256 so that no
    /// single weak source (the RP2040's ring oscillator is biased) decides the key. `primary`
    /// must hold at least 32 bytes from a random source; `extra` adds whatever else differs per
    /// board and boot (unique flash ID, timer ticks, a previous key's bytes).
    pub fn from_entropy(primary: &[u8], extra: &[&[u8]]) -> Result<Self, KeyError> {
        if primary.len() < 32 {
            return Err(KeyError::NotEnoughEntropy);
        }
        for counter in 0u32.. {
            let mut h = Sha256::new();
            h.update(b"picolet node key v1");
            h.update(counter.to_le_bytes());
            h.update((primary.len() as u32).to_le_bytes());
            h.update(primary);
            for e in extra {
                h.update((e.len() as u32).to_le_bytes());
                h.update(e);
            }
            // A digest at or above the group order (odds about 2^-32) is rehashed.
            if let Ok(key) = SigningKey::from_bytes(&h.finalize()) {
                return Ok(Self { key });
            }
        }
        unreachable!("a 32-bit counter always finds a valid scalar")
    }

    /// Reads a SEC1 `EC PRIVATE KEY` DER (as [`NodeKey::sec1_der`] writes it, or any other
    /// P-256 one) with the `sec1` crate: the named curve, when given, must be P-256 (p256's
    /// own reader does not check it), and a public key, when given, must match the scalar.
    pub fn from_sec1_der(der: &[u8]) -> Result<Self, KeyError> {
        use p256::pkcs8::AssociatedOid;
        let sec1 = sec1::EcPrivateKey::try_from(der).map_err(|_| KeyError::BadKey)?;
        if let Some(params) = sec1.parameters
            && params.named_curve() != Some(p256::NistP256::OID)
        {
            return Err(KeyError::BadKey);
        }
        let secret = p256::SecretKey::try_from(sec1).map_err(|_| KeyError::BadKey)?;
        Ok(Self {
            key: SigningKey::from(secret),
        })
    }

    /// The signing key, for a TLS server's CertificateVerify.
    pub fn signing_key(&self) -> &SigningKey {
        &self.key
    }

    /// The public key, uncompressed.
    pub fn public_key(&self) -> PublicKey {
        let point = self.key.verifying_key().to_encoded_point(false);
        let mut out = [0u8; 65];
        out.copy_from_slice(point.as_bytes());
        out
    }

    /// The private key as SEC1 DER (for embedded-tls, or `EC PRIVATE KEY` PEM on a host).
    pub fn sec1_der(&self) -> [u8; 121] {
        let secret: [u8; 32] = self.key.to_bytes().into();
        pki::ec_private_key_der(&secret, &self.public_key())
    }

    /// The private key as PKCS#8 DER (`PRIVATE KEY` PEM; embedded-tls takes this form).
    pub fn pkcs8_der(&self) -> [u8; pki::PKCS8_LEN] {
        let secret: [u8; 32] = self.key.to_bytes().into();
        pki::ec_private_key_pkcs8_der(&secret, &self.public_key())
    }

    /// A PKCS#10 request for this key, signed by it; returns the DER length written to `out`.
    pub fn csr(&self, subject: &CsrSubject<'_>, out: &mut [u8]) -> Result<usize, PkiError> {
        pki::build_csr(
            subject,
            &self.public_key(),
            |info| {
                let sig: Signature = self.key.sign(info);
                sig.to_bytes().into()
            },
            out,
        )
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    use picolet_core::pki::San;
    use rand_core::{OsRng, RngCore};
    use x509_parser::prelude::*;

    fn key() -> NodeKey {
        let mut seed = [0u8; 32];
        OsRng.fill_bytes(&mut seed);
        NodeKey::from_entropy(&seed, &[b"board-id"]).unwrap()
    }

    #[test]
    fn entropy_is_required_and_every_source_counts() {
        assert!(matches!(
            NodeKey::from_entropy(&[0; 31], &[]),
            Err(KeyError::NotEnoughEntropy)
        ));
        let a = NodeKey::from_entropy(&[7; 32], &[b"a"]).unwrap();
        let b = NodeKey::from_entropy(&[7; 32], &[b"b"]).unwrap();
        let a2 = NodeKey::from_entropy(&[7; 32], &[b"a"]).unwrap();
        assert_ne!(a.public_key(), b.public_key());
        assert_eq!(a.public_key(), a2.public_key());
    }

    #[test]
    fn sec1_der_round_trips_and_is_refused_when_altered() {
        let k = key();
        let der = k.sec1_der();
        assert_eq!(
            NodeKey::from_sec1_der(&der).unwrap().public_key(),
            k.public_key()
        );
        let mut bad = der;
        bad[100] ^= 1; // the stored public key no longer matches the scalar
        assert!(NodeKey::from_sec1_der(&bad).is_err());
        assert!(NodeKey::from_sec1_der(&der[..120]).is_err());
        // Another curve is refused (the named-curve OID's last byte: P-256 is 1.2.840.10045.3.1.7).
        let mut other_curve = der;
        assert_eq!(
            &der[43..51],
            &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]
        );
        other_curve[50] = 0x06;
        assert!(NodeKey::from_sec1_der(&other_curve).is_err());
        // SEC1 without the optional public key (as some tools write it) is the same key.
        let mut short = std::vec![0x30, 0x31];
        short.extend_from_slice(&der[2..51]);
        assert_eq!(short.len(), 0x31 + 2);
        assert_eq!(
            NodeKey::from_sec1_der(&short).unwrap().public_key(),
            k.public_key()
        );
        // The standard parser reads it as the same key.
        let parsed = p256::SecretKey::from_sec1_der(&der).unwrap();
        assert_eq!(
            parsed.public_key().to_encoded_point(false).as_bytes(),
            &k.public_key()[..]
        );
    }

    #[test]
    fn pkcs8_der_is_read_back_by_the_standard_parser() {
        use p256::pkcs8::DecodePrivateKey;
        let k = key();
        let der = k.pkcs8_der();
        assert_eq!(der[0], 0x30);
        assert_eq!(
            (der[1], usize::from(der[2]) + 3),
            (0x81, der.len()),
            "one whole SEQUENCE"
        );
        let parsed = p256::SecretKey::from_pkcs8_der(&der).unwrap();
        assert_eq!(
            parsed.public_key().to_encoded_point(false).as_bytes(),
            &k.public_key()[..]
        );
    }

    #[test]
    fn client_csr_is_valid_pkcs10_signed_by_the_key() {
        let k = key();
        let mut buf = [0u8; 1024];
        let subject = CsrSubject {
            node_name: "pico-node-1",
            sans: &[],
        };
        let n = k.csr(&subject, &mut buf).unwrap();
        let (rest, csr) = X509CertificationRequest::from_der(&buf[..n]).unwrap();
        assert!(rest.is_empty());
        let info = &csr.certification_request_info;
        let cn: std::vec::Vec<_> = info.subject.iter_common_name().collect();
        let o: std::vec::Vec<_> = info.subject.iter_organization().collect();
        assert_eq!(cn[0].as_str().unwrap(), "system:node:pico-node-1");
        assert_eq!(o[0].as_str().unwrap(), "system:nodes");
        assert_eq!(
            info.subject_pki.subject_public_key.data.as_ref(),
            &k.public_key()[..]
        );
        assert!(
            csr.requested_extensions()
                .is_none_or(|mut e| e.next().is_none())
        );
        // Signature over the request info, with the key's public half.
        use p256::ecdsa::signature::Verifier;
        let sig = Signature::from_der(csr.signature_value.data.as_ref()).unwrap();
        k.key
            .verifying_key()
            .verify(info.raw, &sig)
            .expect("signature verifies");
    }

    #[test]
    fn serving_csr_carries_dns_and_ip_sans() {
        let k = key();
        let mut buf = [0u8; 1024];
        let sans = [San::Dns("pico-node-1"), San::Ipv4([10, 42, 0, 2])];
        let subject = CsrSubject {
            node_name: "pico-node-1",
            sans: &sans,
        };
        let n = k.csr(&subject, &mut buf).unwrap();
        let (_, csr) = X509CertificationRequest::from_der(&buf[..n]).unwrap();
        let mut found = std::vec::Vec::new();
        for ext in csr.requested_extensions().unwrap() {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                for name in &san.general_names {
                    found.push(std::format!("{name}"));
                }
            }
        }
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].contains("pico-node-1"), "{found:?}");
        assert!(found[1].contains("0a:2a:00:02"), "{found:?}");
        // Too small a buffer is an error, not a panic.
        for len in [0, 10, n - 1] {
            assert_eq!(
                k.csr(&subject, &mut buf[..len]),
                Err(PkiError::BufferTooSmall)
            );
        }
    }
}
