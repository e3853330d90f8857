//! Following the ConfigMap: the list, the watch stream and polling (one [`Follow`] state);
//! validating and applying `memory_values` once per resourceVersion; and what to report about
//! it, which [`report`](super::report) and [`events`](super::events) send.

use super::*;
use crate::json_string::Unescaped;
use crate::objects::Envelope;

use super::watch_stream::{self, Close, Follow, WatchItem};

/// The first ConfigMap in a response too large to parse: its resourceVersion and uid (from
/// its metadata in the prefix), and its size, which is the whole length less the envelope
/// around it (a list's own metadata and closing `]}`, or a watch event's `type` and closing
/// `}`). For a list that is a close estimate: it counts a trailing newline too.
fn oversized_object(prefix: &[u8], len: usize, envelope: Envelope) -> Option<(&str, &str, usize)> {
    let start = obj::object_start(prefix, envelope)?;
    let object = &prefix[start..];
    let rv = obj::scan_resource_version(object)?;
    let uid = obj::scan_field(object, "uid").unwrap_or("");
    Some((rv, uid, len.saturating_sub(start + envelope.tail_len())))
}

/// Following the ConfigMap: the state, and what is not state but memory of what was done.
pub(super) struct ConfigMapFollow {
    state: Follow,
    /// resourceVersion of the last ConfigMap content handled (applied or rejected), so that
    /// each version is handled once, however often it is listed or watched again. `None`:
    /// none was handled yet.
    handled_rv: Option<Rv>,
    /// uid of the ConfigMap that version belongs to, which its Events name.
    uid: Uid,
    list_sched: Schedule,
    watch_sched: Schedule,
    decoder: http::ResponseDecoder,
}

impl ConfigMapFollow {
    pub(super) fn new(now: Millis) -> Self {
        Self {
            state: Follow::List,
            handled_rv: None,
            uid: String::new(),
            list_sched: Schedule::starting(now),
            watch_sched: Schedule::starting(now),
            decoder: http::ResponseDecoder::new(),
        }
    }

    /// The version last handled and its uid, for an Event about it.
    pub(super) fn handled(&self) -> (Rv, Uid) {
        (
            self.handled_rv.clone().unwrap_or_default(),
            self.uid.clone(),
        )
    }

    pub(super) fn streaming(&self) -> bool {
        self.state.streaming()
    }

    /// The list got no response.
    pub(super) fn retry_list(&mut self, now: Millis) {
        self.list_sched.retry(now);
    }
}

fn uid_from(uid: Option<&str>) -> Uid {
    uid.and_then(|u| String::try_from(u).ok())
        .unwrap_or_default()
}

impl Agent<'_> {
    // ------------------------------------------------------------------ ConfigMap

    /// Whether a list is due at `now`.
    pub(super) fn config_list_due(&self, now: Millis) -> bool {
        self.list_wanted(now) && self.config_map.list_sched.due(now)
    }

    /// When the next list is due.
    pub(super) fn config_list_wakeup(&self, now: Millis) -> Millis {
        if self.list_wanted(now) {
            self.config_map.list_sched.at
        } else {
            Millis::MAX
        }
    }

    /// Whether the ConfigMap should be listed: before the first watch, after a 410, and
    /// periodically while polling.
    fn list_wanted(&self, now: Millis) -> bool {
        self.config_map.state.rv().is_none() || self.polling(now)
    }

    fn polling(&self, now: Millis) -> bool {
        self.cfg.config_mode == ConfigMode::Poll
            || self
                .config_map
                .state
                .polling_until()
                .is_some_and(|t| now < t)
    }

    pub(super) fn encode_config_list(&self, out: &mut [u8]) -> Result<usize, HttpError> {
        encode_get(
            out,
            self.cfg.api_host,
            ApiPath::ConfigMap {
                namespace: self.cfg.config_namespace,
                name: self.cfg.config_map,
                watch: None,
            },
        )
    }

    pub(super) fn on_config_list(&mut self, now: Millis, reply: &Reply) {
        let (status, body, body_len) = (reply.status, reply.body, reply.body_len);
        let complete = reply.complete();
        let ns = self.cfg.config_namespace;
        let cm = self.cfg.config_map;
        if !(200..300).contains(&status) {
            if self.report.state != ConfigState::Error {
                // The Status message as its author wrote it, escapes decoded.
                let reason = Unescaped(
                    obj::from_json::<obj::StatusLite>(body)
                        .and_then(|s| s.message)
                        .unwrap_or(""),
                );
                self.report.set(
                    ConfigState::Error,
                    format_args!("cannot read ConfigMap {ns}/{cm}: HTTP {status} {reason}"),
                );
                self.queue_event(
                    now,
                    "ConfigReadFailed",
                    true,
                    true,
                    format_args!("cannot read ConfigMap {ns}/{cm}: HTTP {status} {reason}"),
                );
            }
            self.config_map.list_sched.retry(now);
            return;
        }
        let next = if self.polling(now) {
            now + CONFIG_POLL_MS
        } else {
            now
        };
        if !complete {
            // The list's resourceVersion comes first and is where the watch starts; the
            // ConfigMap's own comes later, in its item.
            let rv = obj::scan_resource_version(body).and_then(rv_from);
            if rv.is_some() {
                let (object_rv, uid, size) =
                    oversized_object(body, body_len, Envelope::List).unwrap_or(("", "", body_len));
                self.reject_oversized(now, object_rv, uid, size);
            }
            self.config_map.state.read_to(rv);
            self.config_map.list_sched.ok_then(next);
            if self.config_map.state.rv().is_none() {
                self.config_map.list_sched.retry(now);
            }
            return;
        }
        let Some(list) = obj::from_json::<obj::ConfigMapListLite>(body) else {
            self.config_map.list_sched.retry(now);
            return;
        };
        match list.items.first() {
            Some(item) => {
                let rv = item.metadata.resource_version.unwrap_or("");
                let values = item.data.and_then(|d| d.memory_values);
                self.handle_config(now, rv, item.metadata.uid, values);
            }
            None => {
                if !matches!(
                    self.report.state,
                    ConfigState::Missing | ConfigState::Deleted
                ) {
                    self.report.set(
                        ConfigState::Missing,
                        format_args!("ConfigMap {ns}/{cm} not found; memory keeps its contents"),
                    );
                }
            }
        }
        let rv = list.metadata.resource_version.and_then(rv_from);
        self.config_map.state.read_to(rv);
        self.config_map.list_sched.ok_then(next);
        if self.config_map.state.rv().is_none() {
            self.config_map.list_sched.retry(now);
        }
    }

    /// Whether version `rv` is to be handled: `Some(false)` when it is new, `Some(true)` when it
    /// was handled before but a read error has been reported since (its outcome is then
    /// reported again, without applying it, counting it or a second Event: each
    /// resourceVersion is handled once), `None` when there is nothing to do.
    fn handling(&self, rv: &str) -> Option<bool> {
        match self.config_map.handled_rv.as_deref() == Some(rv) {
            false => Some(false),
            true => (self.report.state == ConfigState::Error).then_some(true),
        }
    }

    /// Validates and applies one version of the ConfigMap (once per resourceVersion).
    fn handle_config(&mut self, now: Millis, rv: &str, uid: Option<&str>, values: Option<&str>) {
        let Some(again) = self.handling(rv) else {
            return;
        };
        self.config_map.handled_rv = rv_from(rv);
        self.config_map.uid = uid_from(uid);
        let ns = self.cfg.config_namespace;
        let cm = self.cfg.config_map;
        let Some(values) = values else {
            self.reject(
                now,
                again,
                format_args!("ConfigMap {ns}/{cm} has no data.memory_values key"),
            );
            return;
        };
        // serde-json-core leaves the value's JSON escapes in; they are decoded while parsing.
        match memory::parse_memory_values_json(values) {
            Ok(image) if again => self.report_applied(rv, image.entries),
            Ok(image) => self.apply(now, rv, &image),
            Err(e) => self.reject(now, again, format_args!("invalid data.memory_values in {ns}/{cm} (resourceVersion {rv}): {e}; memory unchanged")),
        }
    }

    fn apply(&mut self, now: Millis, rv: &str, image: &MemoryImage) {
        self.region.apply(image);
        self.metrics.config_applies += 1;
        self.report.applied_rv = rv_from(rv).unwrap_or_default();
        self.report_applied(rv, image.entries);
        let crc = self.region.checksum();
        let n = image.entries;
        let values = if n == 1 { "value" } else { "values" };
        let node = self.cfg.node_name;
        self.queue_event(
            now,
            "ConfigApplied",
            false,
            false,
            format_args!("applied {n} {values} to node {node} memory; crc32 0x{crc:08x}"),
        );
    }

    /// Says that the region holds version `rv`, which had `n` entries.
    fn report_applied(&mut self, rv: &str, n: u16) {
        let crc = self.region.checksum();
        let (ns, cm) = (self.cfg.config_namespace, self.cfg.config_map);
        let values = if n == 1 { "value" } else { "values" };
        self.report.set(
            ConfigState::Applied,
            format_args!(
                "applied {n} {values} from {ns}/{cm} (resourceVersion {rv}); memory crc32 0x{crc:08x}"
            ),
        );
    }

    /// Reports a rejection; `again`: of a version rejected before, so no count and no Event.
    fn reject(&mut self, now: Millis, again: bool, why: fmt::Arguments<'_>) {
        self.report.set(ConfigState::Rejected, why);
        if again {
            return;
        }
        self.metrics.config_rejects += 1;
        let message: String<MESSAGE_MAX> = bounded(format_args!("{}", self.report.message));
        self.queue_event(
            now,
            "ConfigRejected",
            true,
            false,
            format_args!("{message}"),
        );
    }

    /// Rejects version `rv` (`""` when its metadata was not in the prefix) of a ConfigMap
    /// of about `size` bytes of JSON, too large to hold.
    fn reject_oversized(&mut self, now: Millis, rv: &str, uid: &str, size: usize) {
        let Some(again) = self.handling(rv) else {
            return;
        };
        self.config_map.handled_rv = rv_from(rv);
        self.config_map.uid = uid_from(Some(uid));
        let (ns, cm) = (self.cfg.config_namespace, self.cfg.config_map);
        let rv = if rv.is_empty() { "unknown" } else { rv };
        self.reject(
            now,
            again,
            format_args!(
                "ConfigMap {ns}/{cm} (resourceVersion {rv}) is about {size} bytes of JSON, over the {WATCH_LINE_MAX}-byte limit; memory unchanged"
            ),
        );
    }

    fn config_deleted(&mut self, now: Millis, rv: &str, uid: Option<&str>) {
        self.config_map.handled_rv = rv_from(rv);
        self.config_map.uid = uid_from(uid);
        let (ns, cm) = (self.cfg.config_namespace, self.cfg.config_map);
        self.report.set(
            ConfigState::Deleted,
            format_args!("ConfigMap {ns}/{cm} was deleted; memory keeps the last applied values"),
        );
        self.queue_event(
            now,
            "ConfigDeleted",
            false,
            false,
            format_args!(
                "ConfigMap {ns}/{cm} was deleted; node memory keeps the last applied values"
            ),
        );
    }

    // ------------------------------------------------------------------ watch connection

    /// Writes the watch request for the watch connection when one should be open.
    pub fn poll_watch_request(
        &mut self,
        now: Millis,
        out: &mut [u8],
    ) -> Result<Option<usize>, AgentError> {
        let f = &mut self.config_map;
        if f.state.connected()
            || self.cfg.config_mode == ConfigMode::Poll
            || f.state.polling_until().is_some_and(|t| now < t)
            || !f.watch_sched.due(now)
            || !self.registration.done()
        {
            return Ok(None);
        }
        f.state.polling_ended();
        let Follow::Listed { rv } = &f.state else {
            return Ok(None);
        };
        let (namespace, name) = (self.cfg.config_namespace, self.cfg.config_map);
        let n = watch_stream::open(
            out,
            &self.cfg,
            rv,
            |watch| ApiPath::ConfigMap {
                namespace,
                name,
                watch: Some(watch),
            },
            &mut f.decoder,
            "watch",
        )?;
        if let Follow::Listed { rv } = core::mem::take(&mut f.state) {
            f.state = Follow::Requested { rv };
        }
        Ok(Some(n))
    }

    /// The earliest time [`Agent::poll_watch_request`] may return a request.
    pub fn next_watch_wakeup(&self, now: Millis) -> Millis {
        let f = &self.config_map;
        if !self.registered() || self.cfg.config_mode == ConfigMode::Poll {
            return Millis::MAX;
        }
        match f.state {
            Follow::Polling { until, .. } if now < until => until,
            Follow::Listed { .. } | Follow::Polling { .. } => f.watch_sched.at.max(now),
            _ => Millis::MAX,
        }
    }

    /// Feeds raw bytes from the watch connection (HTTP framing included). Returns `false` when
    /// the driver should close the connection (the response ended or was refused).
    pub fn on_watch_bytes(
        &mut self,
        now: Millis,
        lines: &mut WatchLines,
        input: &[u8],
    ) -> (usize, bool) {
        // Out of `self` while it is fed, so that each item can be handled with all of `self`.
        let mut decoder = core::mem::take(&mut self.config_map.decoder);
        let (used, close) = watch_stream::feed(&mut decoder, lines, input, &mut |item| {
            match item {
                WatchItem::Head(head) => {
                    self.on_watch_head(now, head);
                    return self.config_map.state.streaming();
                }
                WatchItem::Line(line) => {
                    self.metrics.watch_events += 1;
                    self.on_watch_event(now, line);
                }
                WatchItem::Oversized { prefix, len } => {
                    self.metrics.watch_events += 1;
                    if let Some(rv) = obj::scan_resource_version(prefix) {
                        let (_, uid, size) = oversized_object(prefix, len, Envelope::WatchEvent)
                            .unwrap_or((rv, "", len));
                        self.reject_oversized(now, rv, uid, size);
                        self.config_map.state.read_to(rv_from(rv));
                    }
                }
            }
            // Nothing to resume from: the stream said to start over: close it and re-list.
            self.config_map.state.rv().is_some()
        });
        self.config_map.decoder = decoder;
        if let Some(Close { broken }) = close {
            self.on_watch_closed(now, broken);
        }
        (used, close.is_none())
    }

    fn on_watch_head(&mut self, now: Millis, head: &ResponseHead) {
        self.note_watch_head(now, head);
        let f = &mut self.config_map;
        match head.status {
            200 => f.state.streaming_started(),
            410 => f.state = Follow::List,
            // The server (or a proxy) will not watch: poll for a while, then try again.
            400 | 403 | 404 | 405 | 501 => {
                f.state.poll_until(now + WATCH_RETRY_AFTER_FALLBACK_MS);
                f.list_sched.ok_then(now);
            }
            _ => {
                f.state.disconnected();
                f.watch_sched.retry(now);
            }
        }
    }

    fn on_watch_event(&mut self, now: Millis, line: &[u8]) {
        let Some(ev) = obj::from_json::<obj::WatchEventLite>(line) else {
            // Not a watch event we understand: start over from a fresh list.
            self.config_map.state.read_to(None);
            return;
        };
        let rv = ev.object.metadata.resource_version;
        match ev.kind {
            "ADDED" | "MODIFIED" => {
                let values = ev.object.data.and_then(|d| d.memory_values);
                self.handle_config(now, rv.unwrap_or(""), ev.object.metadata.uid, values);
            }
            "DELETED" => self.config_deleted(now, rv.unwrap_or(""), ev.object.metadata.uid),
            "BOOKMARK" => {}
            // ERROR: 410 Gone (resourceVersion too old) or anything else: re-list, then re-watch.
            _ => {
                self.config_map.state.read_to(None);
                return;
            }
        }
        if let Some(rv) = rv.and_then(rv_from) {
            self.config_map.state.read_to(Some(rv));
        }
        self.config_map.watch_sched.backoff.reset();
    }

    /// Tells the agent the watch connection closed (`error`: it broke rather than ended).
    pub fn on_watch_closed(&mut self, now: Millis, error: bool) {
        let f = &mut self.config_map;
        if watch_stream::closed(&mut f.state, &mut f.watch_sched, now, error) {
            self.metrics.watch_restarts += 1;
        }
    }
}
