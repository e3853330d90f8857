//! Pods bound to this node. The node cannot run them, so each one found is marked `Failed`
//! with reason `NodeCannotRunContainers`, as a kubelet rejects a pod it cannot admit.
//!
//! They are found the way a kubelet finds its pods: a list of the unfinished pods bound to the
//! node, then a watch from the list's resourceVersion on a connection of its own, when the
//! driver has one for it ([`Agent::set_pod_watch`]; the host agent has, the board has no RAM
//! for a third TLS connection). Without a watch, or while the server refuses one, the list is
//! repeated every [`POD_LIST_MS`], so a pod is failed within a minute either way.
//!
//! Driving the watch connection: [`Agent::poll_pod_watch_request`] gives the request when one
//! should be open (else sleep until [`Agent::next_pod_watch_wakeup`]); feed what arrives to
//! [`Agent::on_pod_watch_bytes`] until it says to close; a connection that broke or ended goes
//! to [`Agent::on_pod_watch_closed`].

use heapless::{String, Vec};
use serde::Deserialize;

use super::watch_stream::{self, Close, Follow, WatchItem};
use super::*;
use crate::http::ResponseHead;

/// How often pods are listed when they are not watched.
pub const POD_LIST_MS: Duration = Duration::from_ms(55_000);
/// Most pods queued to be failed at once; more are found by the next list.
const QUEUE: usize = 4;

type PodName = (String<64>, String<256>);

/// A pod as the list and the watch deliver it: only its name matters.
#[derive(Deserialize)]
struct PodLite<'a> {
    #[serde(borrow, default)]
    metadata: obj::MetaLite<'a>,
}

/// A page of unfinished pods bound to this node.
#[derive(Deserialize)]
struct PodPage<'a> {
    #[serde(borrow, default)]
    metadata: obj::MetaLite<'a>,
    #[serde(borrow)]
    items: Vec<PodLite<'a>, QUEUE>,
}

/// One line of the pod watch.
#[derive(Deserialize)]
struct PodEvent<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(borrow)]
    object: PodLite<'a>,
}

/// The requests about pods on the control connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PodRequest {
    /// List the unfinished pods bound here.
    List,
    /// Mark the last queued pod `Failed`.
    Fail,
}

impl PodRequest {
    pub(super) fn method(self) -> Method {
        match self {
            Self::List => Method::Get,
            Self::Fail => Method::Patch,
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Self::List => "pod list",
            Self::Fail => "pod status",
        }
    }
}

pub(super) struct Pods {
    /// The driver runs a pod watch connection.
    watch_enabled: bool,
    /// How far the pods were listed or watched, and what the watch connection does.
    state: Follow,
    list_sched: Schedule,
    fail_sched: Schedule,
    to_fail: Vec<PodName, QUEUE>,
    stream_sched: Schedule,
    decoder: http::ResponseDecoder,
}

impl Pods {
    pub(super) fn new(now: Millis) -> Self {
        let start = Schedule::starting(now);
        Self {
            watch_enabled: false,
            state: Follow::List,
            list_sched: start,
            fail_sched: start,
            to_fail: Vec::new(),
            stream_sched: start,
            decoder: http::ResponseDecoder::new(),
        }
    }

    fn watching(&self, now: Millis) -> bool {
        self.watch_enabled && self.state.polling_until().is_none_or(|t| now >= t)
    }

    /// A list is wanted: first, after the watch lost its place, or periodically without one.
    fn list_wanted(&self, now: Millis) -> bool {
        self.state.rv().is_none() || !self.watching(now)
    }

    /// The watch can no longer resume: list again at once, then watch from the new list.
    fn lost_place(&mut self, now: Millis) {
        self.state.read_to(None);
        self.list_sched.ok_then(now);
    }

    fn queue(&mut self, namespace: &str, name: &str) {
        let (Ok(ns), Ok(name)) = (String::try_from(namespace), String::try_from(name)) else {
            return;
        };
        if !self.to_fail.iter().any(|(n, p)| *n == ns && *p == name) {
            let _ = self.to_fail.push((ns, name));
        }
    }
}

impl Agent<'_> {
    /// Tells the agent the driver runs a pod watch connection (see the module documentation).
    pub fn set_pod_watch(&mut self, enabled: bool) {
        self.pods.watch_enabled = enabled;
    }

    /// The next pod request for the control connection, if one is due.
    pub(super) fn next_pod_request(&self, now: Millis) -> Option<PodRequest> {
        let p = &self.pods;
        if !p.to_fail.is_empty() && p.fail_sched.due(now) {
            return Some(PodRequest::Fail);
        }
        (p.list_wanted(now) && p.list_sched.due(now)).then_some(PodRequest::List)
    }

    /// When the pods next need the control connection.
    pub(super) fn pod_wakeup(&self, now: Millis) -> Millis {
        let p = &self.pods;
        let mut t = Millis::MAX;
        if !p.to_fail.is_empty() {
            t = p.fail_sched.at;
        }
        if p.list_wanted(now) {
            t = t.min(p.list_sched.at);
        } else if let Some(until) = p.state.polling_until() {
            t = t.min(until);
        }
        t
    }

    pub(super) fn encode_pod_request(
        &self,
        request: PodRequest,
        out: &mut [u8],
    ) -> Result<usize, HttpError> {
        let name = self.cfg.node_name;
        let host = self.cfg.api_host;
        match request {
            PodRequest::List => encode_get(
                out,
                host,
                ApiPath::PodsOn {
                    node: name,
                    limit: QUEUE,
                    watch: None,
                },
            ),
            PodRequest::Fail => {
                let (ns, pod) = self.pods.to_fail.last().ok_or(HttpError::BufferTooSmall)?;
                let message: String<200> = bounded(format_args!(
                    "node {name} is a picolet node ({}): it cannot run containers",
                    self.cfg.facts.instance_type
                ));
                let patch = obj::PodStatusPatch {
                    status: obj::PodFailure {
                        phase: "Failed",
                        reason: "NodeCannotRunContainers",
                        message: &message,
                    },
                };
                http::encode_request(
                    out,
                    Method::Patch,
                    host,
                    format_args!(
                        "{}",
                        ApiPath::PodStatus {
                            namespace: ns,
                            name: pod,
                        }
                    ),
                    Some((BodyType::MergePatch, &mut json(&patch))),
                )
            }
        }
    }

    pub(super) fn on_pod_response(&mut self, now: Millis, request: PodRequest, reply: &Reply) {
        let ok = reply.ok();
        match request {
            PodRequest::List if ok => {
                let Some(page) = obj::from_json::<PodPage<'_>>(reply.body) else {
                    self.pods.list_sched.retry(now);
                    return;
                };
                for pod in &page.items {
                    if let (Some(ns), Some(name)) = (pod.metadata.namespace, pod.metadata.name) {
                        self.pods.queue(ns, name);
                    }
                }
                let more = page.metadata.continue_token.is_some_and(|c| !c.is_empty());
                let p = &mut self.pods;
                if more {
                    // Fail this page first; the next list starts over and no longer sees them.
                    p.list_sched.ok_then(now);
                    return;
                }
                p.state
                    .read_to(page.metadata.resource_version.and_then(rv_from));
                p.list_sched.ok_then(now + POD_LIST_MS);
                if p.state.rv().is_none() {
                    p.list_sched.retry(now);
                }
            }
            PodRequest::List => self.pods.list_sched.retry(now),
            PodRequest::Fail if ok || reply.status == 404 || reply.status == 409 => {
                if ok {
                    self.metrics.pods_rejected += 1;
                }
                self.pods.to_fail.pop();
                self.pods.fail_sched.ok_then(now);
            }
            PodRequest::Fail => self.pods.fail_sched.retry(now),
        }
    }

    pub(super) fn on_pod_transport_error(&mut self, now: Millis, request: PodRequest) {
        match request {
            PodRequest::List => self.pods.list_sched.retry(now),
            PodRequest::Fail => self.pods.fail_sched.retry(now),
        }
    }

    // ------------------------------------------------------------------ pod watch connection

    /// The watch request for the pod watch connection, when one should be open.
    pub fn poll_pod_watch_request(
        &mut self,
        now: Millis,
        out: &mut [u8],
    ) -> Result<Option<usize>, AgentError> {
        if self.next_pod_watch_wakeup(now) > now {
            return Ok(None);
        }
        let Some(rv) = self.pods.state.rv() else {
            return Ok(None);
        };
        let node = self.cfg.node_name;
        let n = watch_stream::open(
            out,
            &self.cfg,
            rv,
            |watch| ApiPath::PodsOn {
                node,
                limit: QUEUE,
                watch: Some(watch),
            },
            &mut self.pods.decoder,
            "pod watch",
        )?;
        // Any time of listing instead is over.
        if let Follow::Listed { rv } | Follow::Polling { rv, .. } =
            core::mem::take(&mut self.pods.state)
        {
            self.pods.state = Follow::Requested { rv };
        }
        Ok(Some(n))
    }

    /// The earliest time [`Agent::poll_pod_watch_request`] may return a request.
    pub fn next_pod_watch_wakeup(&self, now: Millis) -> Millis {
        let p = &self.pods;
        if !p.watch_enabled || !self.registered() {
            return Millis::MAX;
        }
        match p.state {
            Follow::Listed { .. } => p.stream_sched.at.max(now),
            Follow::Polling { until, .. } => p.stream_sched.at.max(until).max(now),
            _ => Millis::MAX,
        }
    }

    /// Feeds raw bytes from the pod watch connection. Returns the bytes used and `false` when
    /// the driver should close the connection (the stream ended, broke, or must start over).
    pub fn on_pod_watch_bytes<const N: usize>(
        &mut self,
        now: Millis,
        lines: &mut LineFramer<N>,
        input: &[u8],
    ) -> (usize, bool) {
        // Out of `self` while it is fed, so that each item can be handled with all of `self`.
        let mut decoder = core::mem::take(&mut self.pods.decoder);
        let (used, close) = watch_stream::feed(&mut decoder, lines, input, &mut |item| {
            match item {
                WatchItem::Head(head) => self.on_pod_watch_head(now, head),
                WatchItem::Line(line) => self.on_pod_event(now, line),
                // Too large to parse: name and namespace come first in metadata.
                WatchItem::Oversized { prefix, .. } => {
                    match (
                        obj::scan_field(prefix, "namespace"),
                        obj::scan_field(prefix, "name"),
                    ) {
                        (Some(ns), Some(name)) => self.pods.queue(ns, name),
                        // Not readable from the prefix: the list finds the pod.
                        _ => self.pods.lost_place(now),
                    }
                }
            }
            // Open and placed; otherwise close (and list, when the place was lost).
            matches!(self.pods.state, Follow::Watching { .. })
        });
        self.pods.decoder = decoder;
        if let Some(Close { broken }) = close {
            self.on_pod_watch_closed(now, broken);
        }
        (used, close.is_none())
    }

    fn on_pod_watch_head(&mut self, now: Millis, head: &ResponseHead) {
        self.note_watch_head(now, head);
        let p = &mut self.pods;
        p.state.disconnected();
        match head.status {
            200 => p.state.streaming_started(),
            410 => p.lost_place(now),
            // The server (or a proxy) will not watch: list for a while, then try again.
            400 | 403 | 404 | 405 | 501 => {
                p.state.poll_until(now + WATCH_RETRY_AFTER_FALLBACK_MS);
                p.list_sched.ok_then(now);
            }
            _ => p.stream_sched.retry(now),
        }
    }

    fn on_pod_event(&mut self, now: Millis, line: &[u8]) {
        let p = &mut self.pods;
        let Some(ev) = obj::from_json::<PodEvent<'_>>(line) else {
            return p.lost_place(now);
        };
        let meta = &ev.object.metadata;
        match ev.kind {
            "ADDED" | "MODIFIED" => {
                if let (Some(ns), Some(name)) = (meta.namespace, meta.name) {
                    p.queue(ns, name);
                }
            }
            "DELETED" | "BOOKMARK" => {}
            // ERROR (410 Gone or anything else): list again, then watch again.
            _ => return p.lost_place(now),
        }
        if let Some(rv) = meta.resource_version.and_then(rv_from) {
            p.state.read_to(Some(rv));
        }
        p.stream_sched.backoff.reset();
    }

    /// Tells the agent the pod watch connection closed (`error`: it broke rather than ended).
    pub fn on_pod_watch_closed(&mut self, now: Millis, error: bool) {
        let p = &mut self.pods;
        watch_stream::closed(&mut p.state, &mut p.stream_sched, now, error);
    }

    /// 1 while a pod watch stream is open, for `/metrics`.
    pub(super) fn pod_watch_open(&self) -> bool {
        self.pods.state.streaming()
    }
}
