//! Node status: the conditions, addresses and facts, PATCHed to the status subresource when
//! they change (looked at every [`STATUS_EVAL_MS`]) and at least every report interval, as the
//! kubelet's node status loop does.

use super::*;

/// How often node status is evaluated.
pub const STATUS_EVAL_MS: Duration = Duration::from_ms(10_000);
/// Default longest time between two status PATCHes, as the kubelet's.
pub const STATUS_REPORT_DEFAULT_MS: Duration = Duration::from_ms(300_000);

/// The parts of node status that, when they change, make a PATCH due before the interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct StatusFingerprint {
    ip_crc: u32,
}

pub(super) struct StatusUpdates {
    /// When the node became Ready: the conditions' `lastTransitionTime` (Unix ms).
    pub(super) ready_since_unix_ms: Option<UnixMillis>,
    /// What the last successful PATCH carried, and when it went out.
    sent: Option<(StatusFingerprint, Millis)>,
    sched: Schedule,
}

impl StatusUpdates {
    pub(super) fn new(now: Millis) -> Self {
        Self {
            ready_since_unix_ms: None,
            sent: None,
            sched: Schedule::starting(now),
        }
    }

    /// Post the whole status at once, whatever was sent before.
    pub(super) fn post_now(&mut self, now: Millis) {
        self.sent = None;
        self.sched.ok_then(now);
    }

    /// The node is Ready from the first request about it sent once the clock (`unix_ms`) is
    /// known.
    pub(super) fn stamp_ready_since(&mut self, unix_ms: Option<UnixMillis>) {
        if self.ready_since_unix_ms.is_none() {
            self.ready_since_unix_ms = unix_ms;
        }
    }

    pub(super) fn retry(&mut self, now: Millis) {
        self.sched.retry(now);
    }
}

impl Agent<'_> {
    fn fingerprint(&self) -> StatusFingerprint {
        const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
        StatusFingerprint {
            ip_crc: CRC.checksum(self.internal_ip.as_bytes()),
        }
    }

    /// When the next status PATCH is due: at the next 10 s evaluation when the status changed,
    /// otherwise once the report interval has passed since the last PATCH.
    pub(super) fn status_wakeup(&self) -> Millis {
        let s = &self.node_status;
        match s.sent {
            Some((fp, at)) if fp == self.fingerprint() => {
                s.sched.at.max(at + self.cfg.status_report_interval_ms)
            }
            _ => s.sched.at,
        }
    }

    /// The status PATCH due at `now`, with what it will carry.
    pub(super) fn next_status_patch(&self, now: Millis) -> Option<StatusFingerprint> {
        (now >= self.status_wakeup()).then(|| self.fingerprint())
    }

    pub(super) fn encode_status_patch(
        &self,
        now: Millis,
        out: &mut [u8],
    ) -> Result<usize, HttpError> {
        self.with_node_status(now, |status| {
            let patch = obj::NodeStatusPatch { status };
            http::encode_request(
                out,
                Method::Patch,
                self.cfg.api_host,
                format_args!("{}", ApiPath::NodeStatus(self.cfg.node_name)),
                Some((BodyType::MergePatch, &mut json(&patch))),
            )
        })
    }

    pub(super) fn on_status_response(&mut self, now: Millis, fp: StatusFingerprint, reply: &Reply) {
        match reply.status {
            _ if reply.ok() => {
                self.metrics.status_updates += 1;
                self.node_status.sent = Some((fp, now));
                self.node_status.sched.ok_then(now + STATUS_EVAL_MS);
            }
            404 => self.node_vanished(now),
            _ => self.node_status.retry(now),
        }
    }
}
