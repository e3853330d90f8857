//! The report: what the Node's annotations say about the followed ConfigMap (its state, the
//! applied resourceVersion, the region's checksum, a message), merge-PATCHed to the Node
//! whenever it changes. The Node body carries the same annotations at registration.

use super::*;

/// What the Node says about the followed ConfigMap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigState {
    /// Nothing read yet.
    Pending,
    /// The region holds the ConfigMap's values.
    Applied,
    /// The last update was invalid; the region is unchanged.
    Rejected,
    /// The ConfigMap was deleted; the region keeps the last applied values.
    Deleted,
    /// The ConfigMap does not exist (yet); the region keeps its contents.
    Missing,
    /// The ConfigMap cannot be read (for example RBAC forbids it).
    Error,
}

impl ConfigState {
    /// The annotation value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Applied => "Applied",
            Self::Rejected => "Rejected",
            Self::Deleted => "Deleted",
            Self::Missing => "Missing",
            Self::Error => "Error",
        }
    }
}

/// The report and the annotations PATCH that publishes it.
pub(super) struct ConfigReport {
    pub(super) state: ConfigState,
    pub(super) applied_rv: Rv,
    pub(super) message: String<MESSAGE_MAX>,
    /// Bumped on every change; the annotation PATCH is due while `sent != generation`.
    generation: u32,
    sent: u32,
    sched: Schedule,
}

impl ConfigReport {
    pub(super) fn new(now: Millis, cfg: &AgentConfig<'_>) -> Self {
        Self {
            state: ConfigState::Pending,
            applied_rv: String::new(),
            message: bounded(format_args!(
                "waiting for ConfigMap {}/{}",
                cfg.config_namespace, cfg.config_map
            )),
            generation: 0,
            sent: 0,
            sched: Schedule::starting(now),
        }
    }

    /// Changes the report; the PATCH that publishes it becomes due.
    pub(super) fn set(&mut self, state: ConfigState, message: fmt::Arguments<'_>) {
        self.state = state;
        self.message = text::sentence(message);
        self.generation = self.generation.wrapping_add(1);
    }

    /// The report went out by other means (in the Node body).
    pub(super) fn mark_sent(&mut self) {
        self.sent = self.generation;
    }

    /// The generation to PATCH at `now`, if one is due.
    pub(super) fn next_request(&self, now: Millis) -> Option<u32> {
        (self.sent != self.generation && self.sched.due(now)).then_some(self.generation)
    }

    pub(super) fn wakeup(&self) -> Millis {
        if self.sent != self.generation {
            self.sched.at
        } else {
            Millis::MAX
        }
    }

    pub(super) fn retry(&mut self, now: Millis) {
        self.sched.retry(now);
    }

    pub(super) fn view(&self) -> (ConfigState, &str, &str) {
        (self.state, self.applied_rv.as_str(), self.message.as_str())
    }
}

impl Agent<'_> {
    pub(super) fn encode_config_report(&self, out: &mut [u8]) -> Result<usize, HttpError> {
        self.encode_node_meta_patch(out)
    }

    pub(super) fn on_report_response(&mut self, now: Millis, generation: u32, reply: &Reply) {
        match reply.status {
            _ if reply.ok() => {
                self.report.sent = generation;
                self.report.sched.ok_then(now);
            }
            404 => self.node_vanished(now),
            _ => self.report.retry(now),
        }
    }
}
