//! How a driver drives the agent, as rustls's unbuffered API and smoltcp's `Interface::poll`
//! are driven: the driver asks what to do next, does it with its sockets, TLS, keys and timers,
//! and reports back. Both drivers (the firmware and the host agent) are this loop and nothing
//! more; every decision is the agent's.
//!
//! **Control connection** (one request at a time):
//! 1. [`Agent::poll_control`] returns a [`ControlStep`].
//! 2. The step says which call comes next:
//!    - [`ControlStep::Send`]: send `out[..len]`, then exactly one of [`Agent::on_response`] or
//!      [`Agent::on_transport_error`];
//!    - [`ControlStep::MakeKey`]: make a fresh key and hand it to [`Agent::submit_csr`] (keep
//!      the key: the certificate comes back for it);
//!    - [`ControlStep::InstallCertificate`]: install [`Agent::issued_certificate`] with that key,
//!      then [`Agent::certificate_installed`] or [`Agent::certificate_install_failed`];
//!    - [`ControlStep::ReopenConnections`]: close the watch connections (and the control
//!      connection) and open them again: the client identity changed, or the control
//!      connection broke and the watches to the same server are suspect;
//!    - [`ControlStep::SleepUntil`]: nothing is due before then; sleep, or until woken by a
//!      watch event or a kubelet-port caller that waits for an authorization answer.
//! 3. Back to 1.
//!
//! **Watch connections** ([`WatchStream`]; the driver keeps one [`WatchReader`] per stream):
//! 1. [`Agent::poll_watch`] returns a [`WatchStep`]: [`WatchStep::Open`] (connect, send
//!    `out[..len]`) or [`WatchStep::SleepUntil`].
//! 2. Read into [`WatchReader::space`], then [`Agent::on_watch_read`] with the count: it frames
//!    lines, compacts the buffer and handles overflow, and says [`WatchRead::Continue`] or
//!    [`WatchRead::Close`]. On end of stream, a read error or a timeout:
//!    [`Agent::on_watch_end`]. Either way, back to 1 after a close.
//!
//! The kubelet port has its own session type, [`super::KubeletSession`].

use super::*;
use crate::pki::PkiError;

/// What the driver of the control connection does next. See the module documentation for the
/// call that must follow each step.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlStep {
    /// Send the request written into `out[..len]`.
    Send {
        /// Its length.
        len: usize,
    },
    /// Make a new key for a certificate of this kind and call [`Agent::submit_csr`].
    MakeKey(CertKind),
    /// A certificate of this kind was issued: install it with the key made for it.
    InstallCertificate(CertKind),
    /// Close every API connection and open them again.
    ReopenConnections,
    /// Nothing to do before this monotonic time.
    SleepUntil(Millis),
}

/// The watch connections: the followed ConfigMap, and the pods bound to the node (only when
/// [`Agent::set_pod_watch`] turned it on; otherwise pods are listed on the control connection).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchStream {
    /// The ConfigMap written into the memory region.
    ConfigMap,
    /// The pods with `spec.nodeName` of this node.
    Pods,
}

impl WatchStream {
    /// For logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ConfigMap => "watch",
            Self::Pods => "pod watch",
        }
    }
}

/// What the driver of a watch connection does next.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchStep {
    /// Open a connection and send the watch request written into `out[..len]`.
    Open {
        /// Its length.
        len: usize,
    },
    /// Nothing to open before this monotonic time.
    SleepUntil(Millis),
}

/// What the driver does after [`Agent::on_watch_read`].
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchRead {
    /// Read again into [`WatchReader::space`].
    Continue,
    /// Close the connection; the agent already knows it ended.
    Close,
    /// Close the connection: the response head or a chunk-size line did not fit the reader's
    /// input buffer (the agent already knows, and retries with backoff).
    Overflow,
}

/// One watch connection's receive side: the bytes read but not yet used (a partial response
/// head or chunk line), and the line framer for the events (one at most
/// [`WATCH_LINE_MAX`] bytes). `IN` is the driver's read size.
pub struct WatchReader<const IN: usize> {
    input: [u8; IN],
    end: usize,
    lines: WatchLines,
}

impl<const IN: usize> Default for WatchReader<IN> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const IN: usize> WatchReader<IN> {
    /// An empty reader (const: it can be built in place in a static).
    pub const fn new() -> Self {
        Self {
            input: [0; IN],
            end: 0,
            lines: WatchLines::new(),
        }
    }

    /// Where the driver reads the next bytes into (never empty).
    pub fn space(&mut self) -> &mut [u8] {
        &mut self.input[self.end..]
    }

    fn clear(&mut self) {
        self.end = 0;
        self.lines.reset();
    }
}

impl Agent<'_> {
    /// The next thing the control connection's driver does. `out` receives a request's bytes.
    pub fn poll_control(&mut self, now: Millis, out: &mut [u8]) -> Result<ControlStep, AgentError> {
        if core::mem::take(&mut self.reopen_connections) {
            return Ok(ControlStep::ReopenConnections);
        }
        if let Some(kind) = self.csr_wanted() {
            return Ok(ControlStep::MakeKey(kind));
        }
        if let Some((kind, _)) = self.issued_certificate() {
            return Ok(ControlStep::InstallCertificate(kind));
        }
        if let Some(len) = self.poll_request(now, out)? {
            return Ok(ControlStep::Send { len });
        }
        // Polling may have found a renewal due: its key comes first.
        Ok(match self.csr_wanted() {
            Some(kind) => ControlStep::MakeKey(kind),
            None => ControlStep::SleepUntil(self.next_wakeup(now)),
        })
    }

    /// The certificate from [`Agent::issued_certificate`] is installed with its key: it is now
    /// in use, and its validity sets the next renewal. A new client certificate makes the next
    /// step [`ControlStep::ReopenConnections`].
    pub fn certificate_installed(
        &mut self,
        now: Millis,
        kind: CertKind,
    ) -> Result<InstalledCertificate, PkiError> {
        let installed = self.install_issued(now, kind)?;
        if kind == CertKind::Client {
            self.reopen_connections = true;
        }
        Ok(installed)
    }

    /// The issued certificate could not be installed (the driver could not store it, or its
    /// key was lost): the old one stays in use, and a new request follows after a backoff.
    pub fn certificate_install_failed(&mut self, now: Millis, kind: CertKind) {
        self.drop_issued(now, kind);
    }

    /// The next thing the driver of `stream`'s connection does. `out` receives the request.
    pub fn poll_watch(
        &mut self,
        stream: WatchStream,
        now: Millis,
        out: &mut [u8],
    ) -> Result<WatchStep, AgentError> {
        let polled = match stream {
            WatchStream::ConfigMap => self.poll_watch_request(now, out)?,
            WatchStream::Pods => self.poll_pod_watch_request(now, out)?,
        };
        Ok(match polled {
            Some(len) => WatchStep::Open { len },
            None => WatchStep::SleepUntil(match stream {
                WatchStream::ConfigMap => self.next_watch_wakeup(now),
                WatchStream::Pods => self.next_pod_watch_wakeup(now),
            }),
        })
    }

    /// `n` bytes were read into `reader.space()` on `stream`'s connection.
    pub fn on_watch_read<const IN: usize>(
        &mut self,
        stream: WatchStream,
        now: Millis,
        reader: &mut WatchReader<IN>,
        n: usize,
    ) -> WatchRead {
        reader.end = (reader.end + n).min(IN);
        let input = &reader.input[..reader.end];
        let (used, open) = match stream {
            WatchStream::ConfigMap => self.on_watch_bytes(now, &mut reader.lines, input),
            WatchStream::Pods => self.on_pod_watch_bytes(now, &mut reader.lines, input),
        };
        reader.input.copy_within(used..reader.end, 0);
        reader.end -= used;
        if !open {
            reader.clear();
            WatchRead::Close
        } else if reader.end == IN {
            self.on_watch_end(stream, now, reader, true);
            WatchRead::Overflow
        } else {
            WatchRead::Continue
        }
    }

    /// `stream`'s connection ended: `error` when it broke (reset, TLS error, read timeout,
    /// connect failure) rather than ended cleanly (the server closed it after its timeout).
    pub fn on_watch_end<const IN: usize>(
        &mut self,
        stream: WatchStream,
        now: Millis,
        reader: &mut WatchReader<IN>,
        error: bool,
    ) {
        reader.clear();
        match stream {
            WatchStream::ConfigMap => self.on_watch_closed(now, error),
            WatchStream::Pods => self.on_pod_watch_closed(now, error),
        }
    }
}
