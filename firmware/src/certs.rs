//! The board's own keys and certificates from the Kubernetes CSR API (the agent in
//! `picolet-core` decides when; see its `certificates` module): a fresh P-256 key per request,
//! made here from the ring oscillator's bits mixed with other per-boot values, never sent
//! anywhere. A renewed client certificate replaces the flashed one in RAM; the kubelet-port
//! serving certificate, once approved, is handed to the kubelet task.
//!
//! Not done yet: renewed credentials are not written back to flash, so after a reboot the board
//! starts again from the flashed client certificate (see the README's threat model notes).

use core::cell::RefCell;

use embassy_rp::clocks::RoscRng;
use embassy_sync::blocking_mutex::Mutex;
use embassy_sync::blocking_mutex::raw::{CriticalSectionRawMutex, ThreadModeRawMutex};
use embassy_sync::signal::Signal;
use picolet_core::agent::{Agent, CERT_DER_MAX, CertKind};
use picolet_core::pki::PKCS8_LEN;
use picolet_core::time::Millis;
use picolet_device::keys::NodeKey;
use portable_atomic::{AtomicU32, Ordering};

/// A renewed client certificate and its key.
pub struct ClientMaterial {
    /// The certificate (DER).
    pub der: heapless::Vec<u8, CERT_DER_MAX>,
    /// Its key (PKCS#8 DER, as embedded-tls takes it).
    pub pkcs8: [u8; PKCS8_LEN],
}

/// The kubelet port's serving certificate and key.
pub struct ServingMaterial {
    pub der: heapless::Vec<u8, CERT_DER_MAX>,
    pub key: NodeKey,
}

/// Tasks only (as `node`'s agent), so its lock does not mask interrupts.
static CLIENT: Mutex<ThreadModeRawMutex, RefCell<Option<ClientMaterial>>> =
    Mutex::new(RefCell::new(None));
/// Bumped on every client certificate change; connections compare it to reconnect.
static CLIENT_GENERATION: AtomicU32 = AtomicU32::new(0);
/// A newly issued serving certificate for the kubelet task.
pub static SERVING_NEW: Signal<CriticalSectionRawMutex, ServingMaterial> = Signal::new();

/// Makes `der` with `key` the board's client identity (both connections reconnect with it).
pub fn install_client(der: &[u8], key: &NodeKey) {
    let mut copy: heapless::Vec<u8, CERT_DER_MAX> = heapless::Vec::new();
    let _ = copy.extend_from_slice(der);
    let material = ClientMaterial {
        der: copy,
        pkcs8: key.pkcs8_der(),
    };
    CLIENT.lock(|c| *c.borrow_mut() = Some(material));
    CLIENT_GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// The current client certificate generation (0: the flashed one).
pub fn client_generation() -> u32 {
    CLIENT_GENERATION.load(Ordering::Relaxed)
}

/// A connection's own copy of the client credentials (a handshake borrows them across awaits).
pub struct ClientCopy {
    pub generation: u32,
    pub der: heapless::Vec<u8, CERT_DER_MAX>,
    pub pkcs8: [u8; PKCS8_LEN],
}

impl Default for ClientCopy {
    fn default() -> Self {
        Self::new()
    }
}

impl ClientCopy {
    pub const fn new() -> Self {
        Self {
            generation: 0,
            der: heapless::Vec::new(),
            pkcs8: [0; PKCS8_LEN],
        }
    }

    /// Refreshes the copy if the credentials changed; `true` when a renewed one is in use.
    pub fn refresh(&mut self) -> bool {
        let generation = client_generation();
        if generation != self.generation {
            CLIENT.lock(|c| {
                if let Some(m) = c.borrow().as_ref() {
                    self.der.clear();
                    let _ = self.der.extend_from_slice(&m.der);
                    self.pkcs8 = m.pkcs8;
                }
            });
            self.generation = generation;
        }
        self.generation != 0
    }
}

/// A key from 64 ring-oscillator samples mixed (SHA-256) with the timer, the boot ID and the
/// node name: no single weak source decides it.
pub fn new_key(boot_id: &str, node_name: &str) -> NodeKey {
    let mut seed = [0u8; 64];
    RoscRng.fill_bytes(&mut seed);
    let ticks = embassy_time::Instant::now().as_ticks().to_le_bytes();
    NodeKey::from_entropy(&seed, &[&ticks, boot_id.as_bytes(), node_name.as_bytes()])
        .unwrap_or_else(|_| unreachable!("64 bytes of entropy are enough"))
}

/// The keys waiting for their certificates; owned by the control task.
pub struct PendingKeys {
    keys: [Option<NodeKey>; 2],
}

impl Default for PendingKeys {
    fn default() -> Self {
        Self::new()
    }
}

impl PendingKeys {
    pub const fn new() -> Self {
        Self { keys: [None, None] }
    }

    fn slot(&mut self, kind: CertKind) -> &mut Option<NodeKey> {
        &mut self.keys[match kind {
            CertKind::Client => 0,
            CertKind::Serving => 1,
        }]
    }

    /// Makes a key and submits the CSR the agent wants (`ControlStep::MakeKey`). Not inlined:
    /// its buffers (the request DER and PEM) then live on the stack only during the call, not
    /// in every poll of the control task (the emulator measured the difference).
    #[inline(never)]
    pub fn make_key(&mut self, agent: &mut Agent<'_>, kind: CertKind, now: Millis, boot_id: &str) {
        let key = new_key(boot_id, agent.config().node_name);
        match agent.submit_csr(now, kind, &key.public_key(), |subject, out| {
            key.csr(subject, out)
        }) {
            Ok(()) => {
                log::info!(
                    "certificates: requesting a new {} certificate",
                    kind.as_str()
                );
                *self.slot(kind) = Some(key);
            }
            Err(e) => log::error!(
                "certificates: cannot build a {} request: {e}",
                kind.as_str()
            ),
        }
    }

    /// Installs the certificate the agent got (`ControlStep::InstallCertificate`) with the key
    /// made for it: a client certificate for both API connections, a serving one for the
    /// kubelet task.
    #[inline(never)]
    pub fn install(&mut self, agent: &mut Agent<'_>, kind: CertKind, now: Millis) {
        let Some((_, der)) = agent.issued_certificate() else {
            return;
        };
        let mut copy: heapless::Vec<u8, CERT_DER_MAX> = heapless::Vec::new();
        let _ = copy.extend_from_slice(der);
        let Some(key) = self.slot(kind).take() else {
            log::error!(
                "certificates: a {} certificate without a key",
                kind.as_str()
            );
            agent.certificate_install_failed(now, kind);
            return;
        };
        match kind {
            CertKind::Client => install_client(&copy, &key),
            CertKind::Serving => SERVING_NEW.signal(ServingMaterial {
                der: copy.clone(),
                key,
            }),
        }
        match agent.certificate_installed(now, kind) {
            Ok(c) => log::info!(
                "certificates: new {} certificate, valid until {} (Unix)",
                kind.as_str(),
                c.not_after.as_secs()
            ),
            Err(e) => log::error!("certificates: new {} certificate: {e}", kind.as_str()),
        }
    }
}
