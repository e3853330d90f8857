//! Events: what happened to the node and the ConfigMap (`Starting`, `ConfigApplied`, …), as
//! `kubectl describe` shows them. They wait in a small queue and are POSTed one at a time; when
//! the queue is full the oldest is dropped.

use heapless::Deque;

use super::*;

/// How many Events wait at most.
const EVENT_QUEUE: usize = 4;

struct QueuedEvent {
    reason: &'static str,
    warning: bool,
    message: String<MESSAGE_MAX>,
    /// About the node (true) or the ConfigMap (false).
    about_node: bool,
    object_rv: Rv,
    /// The ConfigMap's uid, which `kubectl describe` finds its Events by ("" if unknown).
    object_uid: Uid,
    unix_ms: UnixMillis,
}

/// The Events not yet posted.
pub(super) struct Events {
    queue: Deque<QueuedEvent, EVENT_QUEUE>,
    /// Makes each Event's name unique.
    seq: u32,
    sched: Schedule,
}

impl Events {
    pub(super) fn new(now: Millis) -> Self {
        Self {
            queue: Deque::new(),
            seq: 0,
            sched: Schedule::starting(now),
        }
    }

    pub(super) fn due(&self, now: Millis) -> bool {
        !self.queue.is_empty() && self.sched.due(now)
    }

    pub(super) fn wakeup(&self) -> Millis {
        if self.queue.is_empty() {
            Millis::MAX
        } else {
            self.sched.at
        }
    }

    pub(super) fn retry(&mut self, now: Millis) {
        self.sched.retry(now);
    }
}

impl Agent<'_> {
    /// Queues an Event about the node, or about the ConfigMap version last handled.
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
            self.config_map.handled()
        };
        let ev = QueuedEvent {
            reason,
            warning,
            message: text::sentence(message),
            about_node,
            object_rv,
            object_uid,
            unix_ms: self.clock.unix_ms(now).unwrap_or_default(),
        };
        let q = &mut self.events.queue;
        if q.is_full() {
            // Keep the newest: drop the oldest.
            q.pop_front();
            self.metrics.events_dropped += 1;
        }
        let _ = q.push_back(ev);
    }

    pub(super) fn encode_event(&mut self, out: &mut [u8]) -> Result<usize, HttpError> {
        let name = self.cfg.node_name;
        let ev = self.events.queue.front().ok_or(HttpError::BufferTooSmall)?;
        let seq = self.events.seq;
        let (object_name, namespace) = if ev.about_node {
            (name, "default")
        } else {
            (self.cfg.config_map, self.cfg.config_namespace)
        };
        let event_name: String<96> = bounded(format_args!(
            "{object_name}.{:x}{seq:04x}",
            ev.unix_ms.as_ms()
        ));
        let event = obj::Event {
            api_version: "v1",
            kind: "Event",
            metadata: obj::EventMeta {
                name: &event_name,
                namespace,
            },
            involved_object: obj::ObjectReference {
                api_version: "v1",
                kind: if ev.about_node { "Node" } else { "ConfigMap" },
                name: object_name,
                namespace: (!ev.about_node).then_some(namespace),
                // A Node's Events carry its name as uid (the kubelet's convention, which
                // `kubectl describe node` searches by); a ConfigMap's its uid.
                uid: if ev.about_node {
                    Some(name)
                } else {
                    Some(ev.object_uid.as_str()).filter(|u| !u.is_empty())
                },
                resource_version: (!ev.object_rv.is_empty()).then_some(ev.object_rv.as_str()),
            },
            reason: ev.reason,
            message: &ev.message,
            kind_of_event: if ev.warning { "Warning" } else { "Normal" },
            source: obj::EventSource {
                component: "picolet",
                host: name,
            },
            first_timestamp: Rfc3339(ev.unix_ms),
            last_timestamp: Rfc3339(ev.unix_ms),
            count: 1,
            reporting_component: "picolet",
            reporting_instance: name,
        };
        let n = http::encode_request(
            out,
            Method::Post,
            self.cfg.api_host,
            format_args!("{}", ApiPath::Events(namespace)),
            Some((BodyType::Json, &mut json(&event))),
        );
        self.events.seq = self.events.seq.wrapping_add(1);
        n
    }

    pub(super) fn on_event_response(&mut self, now: Millis, reply: &Reply) {
        let e = &mut self.events;
        match reply.status {
            _ if reply.ok() => {
                e.queue.pop_front();
                e.sched.ok_then(now);
            }
            // The server will never take this event: drop it rather than block the rest.
            400..=499 if reply.status != 429 => {
                e.queue.pop_front();
                self.metrics.events_dropped += 1;
                e.sched.ok_then(now);
            }
            _ => e.retry(now),
        }
    }
}
