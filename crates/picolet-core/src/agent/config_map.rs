//! Following the ConfigMap: the list, the watch stream and polling; validating and applying
//! `memory_values`; and the reports (Node annotations, Events) that say what happened.

use core::fmt;

use heapless::String;

use super::*;
use crate::json_string::Unescaped;
use crate::objects::Envelope;

use super::watch_stream::{self, Close, WatchItem};

/// Formats a message for a report or an Event within `N` bytes. One that does not fit is cut
/// after its last whole word and ends with "…": a reader should see that something is missing,
/// not half a word. (A word longer than half the room is cut inside, so that most of the text
/// stays.)
fn sentence<const N: usize>(args: fmt::Arguments<'_>) -> String<N> {
    struct Fill<'s, const N: usize> {
        out: &'s mut String<N>,
        full: bool,
    }
    impl<const N: usize> fmt::Write for Fill<'_, N> {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            if self.out.push_str(s).is_ok() {
                return Ok(());
            }
            for c in s.chars() {
                if self.out.push(c).is_err() {
                    self.full = true;
                    return Err(fmt::Error);
                }
            }
            Ok(())
        }
    }
    let mut out = String::new();
    let mut fill = Fill {
        out: &mut out,
        full: false,
    };
    let _ = fmt::write(&mut fill, args);
    if fill.full {
        shorten(&mut out);
    }
    out
}

/// Cuts `out` (text that overflowed) at a word boundary and appends an ellipsis.
fn shorten<const N: usize>(out: &mut String<N>) {
    const ELLIPSIS: &str = "…";
    let room = N.saturating_sub(ELLIPSIS.len());
    let mut end = room.min(out.len());
    while !out.is_char_boundary(end) {
        end -= 1;
    }
    let at_word_end = out[end..].starts_with(char::is_whitespace);
    let cut = if at_word_end {
        end
    } else {
        out[..end]
            .rfind(char::is_whitespace)
            .filter(|&i| i >= room / 2)
            .unwrap_or(end)
    };
    // Punctuation left dangling before the ellipsis reads as a typo.
    let kept = out[..cut]
        .trim_end_matches(|c: char| c.is_whitespace() || matches!(c, ',' | ';' | ':' | '(' | '\''))
        .len();
    out.truncate(kept);
    let _ = out.push_str(ELLIPSIS);
}

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

fn uid_from(uid: Option<&str>) -> Uid {
    uid.and_then(|u| String::try_from(u).ok())
        .unwrap_or_default()
}

impl Agent<'_> {
    pub(super) fn queue_event(
        &mut self,
        now: Millis,
        reason: &'static str,
        warning: bool,
        about_node: bool,
        message: fmt::Arguments<'_>,
    ) {
        let (object_rv, object_uid) = if about_node {
            (String::new(), String::new())
        } else {
            (
                self.handled_rv.clone().unwrap_or_default(),
                self.config_uid.clone(),
            )
        };
        let ev = QueuedEvent {
            reason,
            warning,
            message: sentence(message),
            about_node,
            object_rv,
            object_uid,
            unix_ms: self.clock.unix_ms(now).unwrap_or(0),
        };
        if self.events.is_full() {
            // Keep the newest: drop the oldest.
            self.events.pop_front();
            self.metrics.events_dropped += 1;
        }
        let _ = self.events.push_back(ev);
    }

    fn set_report(&mut self, state: ConfigState, message: fmt::Arguments<'_>) {
        self.report.state = state;
        self.report.message = sentence(message);
        self.report.generation = self.report.generation.wrapping_add(1);
    }

    // ------------------------------------------------------------------ ConfigMap

    pub(super) fn on_config_list(
        &mut self,
        now: Millis,
        status: u16,
        body: &[u8],
        complete: bool,
        body_len: usize,
    ) {
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
                self.set_report(
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
            self.list_sched.retry(now);
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
            self.config_rv = rv;
            self.list_sched.ok_then(next);
            if self.config_rv.is_none() {
                self.list_sched.retry(now);
            }
            return;
        }
        let Some(list) = obj::from_json::<obj::ConfigMapListLite>(body) else {
            self.list_sched.retry(now);
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
                    self.set_report(
                        ConfigState::Missing,
                        format_args!("ConfigMap {ns}/{cm} not found; memory keeps its contents"),
                    );
                }
            }
        }
        self.config_rv = list.metadata.resource_version.and_then(rv_from);
        self.list_sched.ok_then(next);
        if self.config_rv.is_none() {
            self.list_sched.retry(now);
        }
    }

    /// Whether version `rv` is to be handled: `Some(false)` when it is new, `Some(true)` when it
    /// was handled before but a read error has been reported since (its outcome is then
    /// reported again, without applying it, counting it or a second Event: each
    /// resourceVersion is handled once), `None` when there is nothing to do.
    fn handling(&self, rv: &str) -> Option<bool> {
        match self.handled_rv.as_deref() == Some(rv) {
            false => Some(false),
            true => (self.report.state == ConfigState::Error).then_some(true),
        }
    }

    /// Validates and applies one version of the ConfigMap (once per resourceVersion).
    fn handle_config(&mut self, now: Millis, rv: &str, uid: Option<&str>, values: Option<&str>) {
        let Some(again) = self.handling(rv) else {
            return;
        };
        self.handled_rv = rv_from(rv);
        self.config_uid = uid_from(uid);
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
        self.set_report(
            ConfigState::Applied,
            format_args!(
                "applied {n} {values} from {ns}/{cm} (resourceVersion {rv}); memory crc32 0x{crc:08x}"
            ),
        );
    }

    /// Reports a rejection; `again`: of a version rejected before, so no count and no Event.
    fn reject(&mut self, now: Millis, again: bool, why: fmt::Arguments<'_>) {
        self.set_report(ConfigState::Rejected, why);
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
        self.handled_rv = rv_from(rv);
        self.config_uid = uid_from(Some(uid));
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
        self.handled_rv = rv_from(rv);
        self.config_uid = uid_from(uid);
        let (ns, cm) = (self.cfg.config_namespace, self.cfg.config_map);
        self.set_report(
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
        if self.watch != WatchState::Idle
            || self.polling(now)
            || !self.watch_sched.due(now)
            || !self.registered()
        {
            return Ok(None);
        }
        if self.polling_until.is_some() {
            self.polling_until = None;
        }
        let Some(rv) = self.config_rv.as_ref() else {
            return Ok(None);
        };
        let n = http::encode_request(
            out,
            Method::Get,
            self.cfg.api_host,
            format_args!(
                "{}",
                ApiPath::ConfigMap {
                    namespace: self.cfg.config_namespace,
                    name: self.cfg.config_map,
                    watch: Some(Watch {
                        resource_version: rv,
                        timeout_s: self.cfg.watch_timeout_s,
                    }),
                }
            ),
            None,
        )
        .map_err(|_| AgentError::RequestTooLarge { what: "watch" })?;
        self.watch = WatchState::Requested;
        self.watch_decoder = http::ResponseDecoder::new();
        Ok(Some(n))
    }

    /// The earliest time [`Agent::poll_watch_request`] may return a request.
    pub fn next_watch_wakeup(&self, now: Millis) -> Millis {
        if self.watch != WatchState::Idle || self.config_rv.is_none() || !self.registered() {
            return Millis::MAX;
        }
        match self.polling_until {
            _ if self.cfg.config_mode == ConfigMode::Poll => Millis::MAX,
            Some(t) if now < t => t,
            _ => self.watch_sched.at.max(now),
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
        let mut decoder = core::mem::take(&mut self.watch_decoder);
        let (used, close) = watch_stream::feed(&mut decoder, lines, input, &mut |item| {
            match item {
                WatchItem::Head(head) => {
                    self.on_watch_head(now, head);
                    return self.watch == WatchState::Streaming;
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
                        self.config_rv = rv_from(rv);
                    }
                }
            }
            // `None`: the stream said to start over: close it and re-list.
            self.config_rv.is_some()
        });
        self.watch_decoder = decoder;
        if let Some(Close { broken }) = close {
            self.on_watch_closed(now, broken);
        }
        (used, close.is_none())
    }

    fn on_watch_head(&mut self, now: Millis, head: &ResponseHead) {
        self.note_watch_head(now, head);
        match head.status {
            200 => self.watch = WatchState::Streaming,
            410 => {
                self.watch = WatchState::Idle;
                self.config_rv = None;
            }
            // The server (or a proxy) will not watch: poll for a while, then try again.
            400 | 403 | 404 | 405 | 501 => {
                self.watch = WatchState::Idle;
                self.polling_until = Some(now + WATCH_RETRY_AFTER_FALLBACK_MS);
                self.list_sched.ok_then(now);
            }
            _ => {
                self.watch = WatchState::Idle;
                self.watch_sched.retry(now);
            }
        }
    }

    fn on_watch_event(&mut self, now: Millis, line: &[u8]) {
        let Some(ev) = obj::from_json::<obj::WatchEventLite>(line) else {
            // Not a watch event we understand: start over from a fresh list.
            self.config_rv = None;
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
                self.config_rv = None;
                return;
            }
        }
        if let Some(rv) = rv.and_then(rv_from) {
            self.config_rv = Some(rv);
        }
        self.watch_sched.backoff.reset();
    }

    /// Tells the agent the watch connection closed (`error`: it broke rather than ended).
    pub fn on_watch_closed(&mut self, now: Millis, error: bool) {
        if self.watch == WatchState::Streaming {
            self.metrics.watch_restarts += 1;
        }
        if self.watch != WatchState::Idle {
            if error {
                self.watch_sched.retry(now);
            } else {
                self.watch_sched.ok_then(now);
            }
        }
        self.watch = WatchState::Idle;
    }
}
