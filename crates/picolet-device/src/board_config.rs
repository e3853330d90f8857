//! Per-board settings in a reserved flash sector, so that one firmware UF2 serves many boards:
//! `picolet board-config` turns a board's enrolment output and network settings into a small
//! UF2 that writes only this sector, and the firmware reads it at boot (falling back to the
//! settings compiled in, if any).
//!
//! The record is read in place from memory-mapped flash (XIP): no copy, no flash driver, no ROM
//! call. Layout, all integers little-endian:
//!
//! ```text
//! "PCLTCFG1" | u16 TLV length | u16 0 | u32 CRC-32 of the TLVs | TLVs (u8 tag, u16 len, value)…
//! ```
//!
//! A record that is absent (erased flash reads 0xFF), torn or corrupt is rejected whole: the
//! board then uses its compiled-in settings, or waits showing the error pattern.

use core::fmt;

/// Flash offset of the sector: the last 4 KiB of the Pico's 2 MiB (the firmware's linker
/// script keeps its image out of it).
pub const FLASH_OFFSET: u32 = 2 * 1024 * 1024 - SECTOR_SIZE as u32;
/// The sector's address in the RP2040's XIP window.
pub const XIP_ADDRESS: u32 = 0x1000_0000 + FLASH_OFFSET;
/// One flash erase sector.
pub const SECTOR_SIZE: usize = 4096;

const MAGIC: &[u8; 8] = b"PCLTCFG1";
const HEADER: usize = 16;
const CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

const TAG_NODE_NAME: u8 = 1;
const TAG_TLS_SERVER_NAME: u8 = 2;
const TAG_API_SERVER: u8 = 3;
const TAG_WIFI_SSID: u8 = 4;
const TAG_WIFI_PASSWORD: u8 = 5;
const TAG_CA_DER: u8 = 6;
const TAG_CLIENT_CERT_DER: u8 = 7;
const TAG_CLIENT_KEY_DER: u8 = 8;
const TAG_CLIENT_CA_DER: u8 = 9;
const TAG_BOOTSTRAP_TOKEN: u8 = 10;

/// What a board needs to join its cluster. Borrowed from flash (or from compiled-in statics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BoardConfig<'a> {
    /// The Node name (also in the client certificate).
    pub node_name: &'a str,
    /// The DNS name the API server's certificate must carry.
    pub tls_server_name: &'a str,
    /// The API server's IPv4 address and port, as the board reaches it.
    pub api_server: ([u8; 4], u16),
    /// Wi-Fi network name (empty: none; the serial-link firmware needs none).
    pub wifi_ssid: &'a str,
    /// Wi-Fi passphrase.
    pub wifi_password: &'a str,
    /// The cluster CA (DER).
    pub ca_der: &'a [u8],
    /// The client certificate (DER) from `picolet enrol`.
    pub client_cert_der: &'a [u8],
    /// The client key (PKCS#8 DER) from `picolet enrol`.
    pub client_key_pkcs8_der: &'a [u8],
    /// The CA that signs client certificates (kubelet-port callers are checked against it);
    /// empty: the cluster CA (older records, and clusters with one CA).
    pub client_ca_der: &'a [u8],
    /// A bootstrap token (`ID.SECRET`) for a board that joins by TLS bootstrapping instead of
    /// with an enrolled certificate (then `client_cert_der` and the key are empty); empty: none.
    pub bootstrap_token: &'a str,
}

impl<'a> BoardConfig<'a> {
    /// The CA kubelet-port client certificates are verified against.
    pub fn client_ca(&self) -> &'a [u8] {
        if self.client_ca_der.is_empty() {
            self.ca_der
        } else {
            self.client_ca_der
        }
    }
}

/// Why a sector holds no usable configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// No record: the sector is erased or holds something else.
    Absent,
    /// The record's length does not fit the sector.
    BadLength,
    /// The CRC does not match (a torn or corrupted write).
    BadCrc,
    /// A required field is missing.
    Missing(&'static str),
    /// A field is malformed (bad UTF-8, wrong size).
    BadField(&'static str),
    /// The record does not fit the buffer it is encoded into.
    TooLarge,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Absent => write!(f, "no board configuration in flash"),
            ConfigError::BadLength => write!(f, "board configuration length is out of range"),
            ConfigError::BadCrc => write!(f, "board configuration CRC mismatch (torn write?)"),
            ConfigError::Missing(what) => write!(f, "board configuration lacks {what}"),
            ConfigError::BadField(what) => write!(f, "board configuration has a bad {what}"),
            ConfigError::TooLarge => write!(f, "board configuration does not fit one sector"),
        }
    }
}

fn text<'a>(value: &'a [u8], what: &'static str) -> Result<&'a str, ConfigError> {
    core::str::from_utf8(value).map_err(|_| ConfigError::BadField(what))
}

impl<'a> BoardConfig<'a> {
    /// Reads a record from the start of `sector`, checking its CRC and every required field.
    pub fn parse(sector: &'a [u8]) -> Result<Self, ConfigError> {
        if sector.len() < HEADER || &sector[..8] != MAGIC {
            return Err(ConfigError::Absent);
        }
        let len = usize::from(u16::from_le_bytes([sector[8], sector[9]]));
        if sector[10..12] != [0, 0] {
            // Reserved for a future layout: not one this firmware can read.
            return Err(ConfigError::BadLength);
        }
        let tlvs = sector
            .get(HEADER..HEADER + len)
            .ok_or(ConfigError::BadLength)?;
        let crc = u32::from_le_bytes([sector[12], sector[13], sector[14], sector[15]]);
        if CRC32.checksum(tlvs) != crc {
            return Err(ConfigError::BadCrc);
        }
        let mut node_name = None;
        let mut tls_server_name = None;
        let mut api_server = None;
        let (mut wifi_ssid, mut wifi_password) = ("", "");
        let (mut ca, mut cert, mut key) = (None, None, None);
        let mut client_ca: &'a [u8] = &[];
        let mut token: &'a str = "";
        let mut rest = tlvs;
        while !rest.is_empty() {
            let [tag, lo, hi, ..] = *rest else {
                return Err(ConfigError::BadLength);
            };
            let n = usize::from(u16::from_le_bytes([lo, hi]));
            let value = rest.get(3..3 + n).ok_or(ConfigError::BadLength)?;
            match tag {
                TAG_NODE_NAME => node_name = Some(text(value, "node name")?),
                TAG_TLS_SERVER_NAME => tls_server_name = Some(text(value, "TLS server name")?),
                TAG_API_SERVER => {
                    let [a, b, c, d, p0, p1] = *value else {
                        return Err(ConfigError::BadField("API server address"));
                    };
                    api_server = Some(([a, b, c, d], u16::from_le_bytes([p0, p1])));
                }
                TAG_WIFI_SSID => wifi_ssid = text(value, "Wi-Fi SSID")?,
                TAG_WIFI_PASSWORD => wifi_password = text(value, "Wi-Fi password")?,
                TAG_CA_DER => ca = Some(value),
                TAG_CLIENT_CERT_DER => cert = Some(value),
                TAG_CLIENT_KEY_DER => key = Some(value),
                TAG_CLIENT_CA_DER => client_ca = value,
                TAG_BOOTSTRAP_TOKEN => token = text(value, "bootstrap token")?,
                _ => {} // a field from a newer picolet: ignored
            }
            rest = &rest[3 + n..];
        }
        let nonempty = |v: Option<&'a str>, what| {
            v.filter(|s| !s.is_empty())
                .ok_or(ConfigError::Missing(what))
        };
        let der = |v: Option<&'a [u8]>, what| {
            v.filter(|s| !s.is_empty())
                .ok_or(ConfigError::Missing(what))
        };
        Ok(BoardConfig {
            node_name: nonempty(node_name, "node name")?,
            tls_server_name: nonempty(tls_server_name, "TLS server name")?,
            api_server: api_server.ok_or(ConfigError::Missing("API server address"))?,
            wifi_ssid,
            wifi_password,
            ca_der: der(ca, "cluster CA")?,
            // A board that joins with a bootstrap token has no certificate yet.
            client_cert_der: if token.is_empty() {
                der(cert, "client certificate")?
            } else {
                cert.unwrap_or(&[])
            },
            client_key_pkcs8_der: if token.is_empty() {
                der(key, "client key")?
            } else {
                key.unwrap_or(&[])
            },
            client_ca_der: client_ca,
            bootstrap_token: token,
        })
    }

    /// Writes the record into `out` (at most one sector); returns its length.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, ConfigError> {
        let out = out
            .get_mut(..SECTOR_SIZE.min(out.len()))
            .ok_or(ConfigError::TooLarge)?;
        let mut at = HEADER;
        let (ip, port) = self.api_server;
        let api = [
            ip[0],
            ip[1],
            ip[2],
            ip[3],
            port.to_le_bytes()[0],
            port.to_le_bytes()[1],
        ];
        let fields: [(u8, &[u8]); 10] = [
            (TAG_NODE_NAME, self.node_name.as_bytes()),
            (TAG_TLS_SERVER_NAME, self.tls_server_name.as_bytes()),
            (TAG_API_SERVER, &api),
            (TAG_WIFI_SSID, self.wifi_ssid.as_bytes()),
            (TAG_WIFI_PASSWORD, self.wifi_password.as_bytes()),
            (TAG_CA_DER, self.ca_der),
            (TAG_CLIENT_CERT_DER, self.client_cert_der),
            (TAG_CLIENT_KEY_DER, self.client_key_pkcs8_der),
            (TAG_CLIENT_CA_DER, self.client_ca_der),
            (TAG_BOOTSTRAP_TOKEN, self.bootstrap_token.as_bytes()),
        ];
        for (tag, value) in fields {
            let n = u16::try_from(value.len()).map_err(|_| ConfigError::TooLarge)?;
            let end = at + 3 + value.len();
            let slot = out.get_mut(at..end).ok_or(ConfigError::TooLarge)?;
            slot[0] = tag;
            slot[1..3].copy_from_slice(&n.to_le_bytes());
            slot[3..].copy_from_slice(value);
            at = end;
        }
        let len = u16::try_from(at - HEADER).map_err(|_| ConfigError::TooLarge)?;
        let crc = CRC32.checksum(&out[HEADER..at]);
        out[..8].copy_from_slice(MAGIC);
        out[8..10].copy_from_slice(&len.to_le_bytes());
        out[10..12].copy_from_slice(&[0, 0]);
        out[12..16].copy_from_slice(&crc.to_le_bytes());
        Ok(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> BoardConfig<'static> {
        BoardConfig {
            node_name: "pico-node-7",
            tls_server_name: "kubernetes",
            api_server: ([192, 168, 1, 10], 6443),
            wifi_ssid: "lab",
            wifi_password: "secret",
            ca_der: &[0x30, 0x82, 1, 2],
            client_cert_der: &[0x30, 0x82, 3, 4],
            client_key_pkcs8_der: &[0x30, 0x81, 5],
            client_ca_der: &[0x30, 0x82, 9, 9],
            bootstrap_token: "",
        }
    }

    fn sector(config: &BoardConfig<'_>) -> [u8; SECTOR_SIZE] {
        let mut s = [0xff; SECTOR_SIZE];
        config.encode(&mut s).unwrap();
        s
    }

    #[test]
    fn a_record_round_trips_through_a_flash_sector() {
        let s = sector(&sample());
        assert_eq!(BoardConfig::parse(&s), Ok(sample()));
    }

    #[test]
    fn a_bootstrap_board_needs_no_certificate_and_others_still_do() {
        let mut c = sample();
        c.client_cert_der = &[];
        c.client_key_pkcs8_der = &[];
        assert_eq!(
            BoardConfig::parse(&sector(&c)),
            Err(ConfigError::Missing("client certificate"))
        );
        c.bootstrap_token = "abcdef.0123456789abcdef";
        assert_eq!(BoardConfig::parse(&sector(&c)), Ok(c));
    }

    #[test]
    fn erased_flash_and_other_data_are_absent() {
        assert_eq!(
            BoardConfig::parse(&[0xff; SECTOR_SIZE]),
            Err(ConfigError::Absent)
        );
        assert_eq!(BoardConfig::parse(&[0; 4]), Err(ConfigError::Absent));
    }

    #[test]
    fn every_flipped_bit_or_torn_write_is_rejected() {
        let good = sector(&sample());
        let len = HEADER + usize::from(u16::from_le_bytes([good[8], good[9]]));
        for i in 8..len {
            for bit in 0..8 {
                let mut s = good;
                s[i] ^= 1 << bit;
                assert!(
                    BoardConfig::parse(&s).is_err(),
                    "byte {i} bit {bit} accepted"
                );
            }
        }
        // A write torn at any page boundary leaves erased bytes behind.
        for cut in (HEADER..len).step_by(16) {
            let mut s = good;
            s[cut..].fill(0xff);
            assert!(BoardConfig::parse(&s).is_err(), "torn at {cut} accepted");
        }
    }

    #[test]
    fn missing_fields_are_named() {
        let mut c = sample();
        c.client_key_pkcs8_der = &[];
        assert_eq!(
            BoardConfig::parse(&sector(&c)),
            Err(ConfigError::Missing("client key"))
        );
        let mut c = sample();
        c.node_name = "";
        assert_eq!(
            BoardConfig::parse(&sector(&c)),
            Err(ConfigError::Missing("node name"))
        );
    }

    #[test]
    fn a_record_larger_than_a_sector_is_refused() {
        let big = [0u8; SECTOR_SIZE];
        let mut c = sample();
        c.ca_der = &big;
        let mut out = [0u8; SECTOR_SIZE];
        assert_eq!(c.encode(&mut out), Err(ConfigError::TooLarge));
    }

    #[test]
    fn the_sector_is_the_last_of_two_megabytes() {
        assert_eq!(XIP_ADDRESS, 0x101f_f000);
    }

    /// The stable-Rust smoke pass of `fuzz/fuzz_targets/board_config.rs`: random TLV areas
    /// behind a valid header and CRC, so that the field parser itself is exercised.
    #[test]
    fn random_records_never_panic_and_what_parses_round_trips() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let valid = sector(&sample());
        let valid_len = HEADER + usize::from(u16::from_le_bytes([valid[8], valid[9]]));
        for round in 0..20_000 {
            let mut s = [0xff; SECTOR_SIZE];
            let len = (next() % 300) as usize;
            if round % 2 == 0 {
                // Mutate a valid record a few bytes at a time.
                s[..valid_len].copy_from_slice(&valid[..valid_len]);
                for _ in 0..1 + next() % 4 {
                    let i = HEADER + (next() as usize) % (valid_len - HEADER);
                    s[i] = next() as u8;
                }
            } else {
                for b in &mut s[HEADER..HEADER + len] {
                    *b = next() as u8;
                }
                s[8..10].copy_from_slice(&(len as u16).to_le_bytes());
            }
            let tlv_len = usize::from(u16::from_le_bytes([s[8], s[9]]));
            s[..8].copy_from_slice(MAGIC);
            s[10..12].fill(0);
            let crc = CRC32.checksum(&s[HEADER..HEADER + tlv_len]);
            s[12..16].copy_from_slice(&crc.to_le_bytes());
            if let Ok(config) = BoardConfig::parse(&s) {
                let again = sector(&config);
                assert_eq!(BoardConfig::parse(&again), Ok(config));
            }
        }
    }
}
