//! One watch stream's HTTP and line framing: raw bytes from the connection in, one item at a
//! time out to the concern that follows the stream (its response head, each complete line, an
//! oversized line's prefix, the end). The concern decides what each item means.

use super::{AgentConfig, AgentError, Rv, Schedule, encode_get};
use crate::http::{self, ResponseHead};
use crate::lines::{Line, LineFramer};
use crate::paths::{ApiPath, Watch};
use crate::time::Millis;

/// Writes the request that opens a watch from resourceVersion `rv` of what `path` names (given
/// where to start), and gives the stream a fresh `decoder` for its response. `what` names the
/// stream in the error when `out` is too small.
pub(super) fn open<'p>(
    out: &mut [u8],
    cfg: &AgentConfig<'p>,
    rv: &'p str,
    path: impl FnOnce(Watch<'p>) -> ApiPath<'p>,
    decoder: &mut http::ResponseDecoder,
    what: &'static str,
) -> Result<usize, AgentError> {
    let watch = Watch {
        resource_version: rv,
        timeout_s: cfg.watch_timeout_s,
    };
    let n = encode_get(out, cfg.api_host, path(watch))
        .map_err(|_| AgentError::RequestTooLarge { what })?;
    *decoder = http::ResponseDecoder::new();
    Ok(n)
}

/// Where following a watched collection (the ConfigMap, the pods) stands, as kube-runtime's
/// watcher keeps it: how far it has been read (the resourceVersion a watch resumes from) and
/// what the watch connection does.
///
/// List → Listed → Requested → Watching, and back to Listed when the stream ends; to List
/// after 410 Gone, and through Lost after an ERROR event or an unreadable one; to Polling
/// while the server refuses watches. (A concern that does not watch at all, such as
/// [`ConfigMode::Poll`](super::ConfigMode::Poll), lists from List and Listed.)
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) enum Follow {
    /// Nothing to watch from: list first (at start, after 410 Gone or a list without a
    /// resourceVersion).
    #[default]
    List,
    /// Read up to `rv`: a watch from there is to be opened.
    Listed { rv: Rv },
    /// A watch from `rv` was requested; its response has not begun.
    Requested { rv: Rv },
    /// The watch is streaming; `rv` is the last event's.
    Watching { rv: Rv },
    /// The connection is requested (`open`: streaming) but there is nothing to resume from:
    /// the stream said to start over (an ERROR event, an event not understood). An event
    /// carrying a resourceVersion places it again; anything else closes it, and a list follows.
    Lost { open: bool },
    /// The server refused to watch: list periodically until `until`, then watch from `rv`,
    /// where the last list read up to.
    Polling { until: Millis, rv: Rv },
    /// Polling as above, with no list read yet to watch from: when polling ends, list first.
    PollingUnlisted { until: Millis },
}

impl Follow {
    /// The resourceVersion a watch resumes from, if there is one.
    pub(super) fn rv(&self) -> Option<&Rv> {
        match self {
            Self::Listed { rv }
            | Self::Requested { rv }
            | Self::Watching { rv }
            | Self::Polling { rv, .. } => Some(rv),
            Self::List | Self::Lost { .. } | Self::PollingUnlisted { .. } => None,
        }
    }

    /// Until when watches are not tried (they were refused).
    pub(super) fn polling_until(&self) -> Option<Millis> {
        match self {
            Self::Polling { until, .. } | Self::PollingUnlisted { until } => Some(*until),
            _ => None,
        }
    }

    /// The watch connection is requested or open.
    pub(super) fn connected(&self) -> bool {
        matches!(
            self,
            Self::Requested { .. } | Self::Watching { .. } | Self::Lost { .. }
        )
    }

    pub(super) fn streaming(&self) -> bool {
        matches!(self, Self::Watching { .. } | Self::Lost { open: true })
    }

    /// Read (by a list or an event) up to `rv`; `None`: the response said to start over.
    pub(super) fn read_to(&mut self, rv: Option<Rv>) {
        *self = match (core::mem::take(self), rv) {
            (Self::List | Self::Listed { .. }, Some(rv)) => Self::Listed { rv },
            (Self::List | Self::Listed { .. }, None) => Self::List,
            (Self::Requested { .. } | Self::Lost { open: false }, Some(rv)) => {
                Self::Requested { rv }
            }
            (Self::Watching { .. } | Self::Lost { open: true }, Some(rv)) => Self::Watching { rv },
            (Self::Requested { .. }, None) => Self::Lost { open: false },
            (Self::Watching { .. }, None) => Self::Lost { open: true },
            (lost @ Self::Lost { .. }, None) => lost,
            (Self::Polling { until, .. } | Self::PollingUnlisted { until }, Some(rv)) => {
                Self::Polling { until, rv }
            }
            (Self::Polling { until, .. } | Self::PollingUnlisted { until }, None) => {
                Self::PollingUnlisted { until }
            }
        };
    }

    /// The watch's response began.
    pub(super) fn streaming_started(&mut self) {
        *self = match core::mem::take(self) {
            Self::Listed { rv } | Self::Requested { rv } | Self::Watching { rv } => {
                Self::Watching { rv }
            }
            Self::Polling { rv, .. } => Self::Watching { rv },
            Self::List | Self::Lost { .. } | Self::PollingUnlisted { .. } => {
                Self::Lost { open: true }
            }
        };
    }

    /// No watch connection any more; what was read is kept.
    pub(super) fn disconnected(&mut self) {
        *self = match core::mem::take(self) {
            Self::Requested { rv } | Self::Watching { rv } => Self::Listed { rv },
            Self::Lost { .. } => Self::List,
            other => other,
        };
    }

    /// Watches were refused: poll until `until`.
    pub(super) fn poll_until(&mut self, until: Millis) {
        *self = match self.rv() {
            Some(rv) => Self::Polling {
                until,
                rv: rv.clone(),
            },
            None => Self::PollingUnlisted { until },
        };
    }

    /// Polling is over (its time has passed): watches are tried again.
    pub(super) fn polling_ended(&mut self) {
        *self = match core::mem::take(self) {
            Self::Polling { rv, .. } => Self::Listed { rv },
            Self::PollingUnlisted { .. } => Self::List,
            other => other,
        };
    }
}

/// The watch connection closed (`error`: it broke rather than ended): the next one is opened
/// at once after an end, after a backoff after a break. Returns whether it was streaming.
pub(super) fn closed(state: &mut Follow, sched: &mut Schedule, now: Millis, error: bool) -> bool {
    let streaming = state.streaming();
    if state.connected() {
        if error {
            sched.retry(now);
        } else {
            sched.ok_then(now);
        }
    }
    state.disconnected();
    streaming
}

/// What a watch stream delivered.
pub(super) enum WatchItem<'b> {
    /// The response head: 200 starts the stream, anything else refuses it.
    Head(&'b ResponseHead),
    /// One complete, non-blank line: a watch event.
    Line(&'b [u8]),
    /// A line longer than the framer: its first bytes and its full length.
    Oversized { prefix: &'b [u8], len: usize },
}

/// Why the connection is to be closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Close {
    /// The bytes were not valid HTTP (rather than: the response ended, or the concern asked).
    pub(super) broken: bool,
}

/// Feeds `input` through `decoder` and `lines`, calling `on` for each item until `on` returns
/// `false` (close the connection) or the input runs out. Returns the bytes used, and whether to
/// close (the response ended or broke, or `on` asked).
pub(super) fn feed<const N: usize>(
    decoder: &mut http::ResponseDecoder,
    lines: &mut LineFramer<N>,
    mut input: &[u8],
    on: &mut dyn FnMut(WatchItem<'_>) -> bool,
) -> (usize, Option<Close>) {
    const ASKED: Option<Close> = Some(Close { broken: false });
    let mut used = 0;
    loop {
        let Ok((n, decoded)) = decoder.decode(input) else {
            return (used, Some(Close { broken: true }));
        };
        used += n;
        input = &input[n..];
        match decoded {
            http::Decoded::NeedMore if n == 0 => return (used, None),
            http::Decoded::NeedMore => {}
            http::Decoded::Head(head) => {
                lines.reset();
                if !on(WatchItem::Head(&head)) {
                    return (used, ASKED);
                }
            }
            http::Decoded::Data(mut data) => {
                let mut open = true;
                while open && !data.is_empty() {
                    let (k, line) = lines.push(data);
                    data = &data[k..];
                    open = match line {
                        None => true,
                        Some(Line::Complete(bytes))
                            if bytes.iter().all(u8::is_ascii_whitespace) =>
                        {
                            true
                        }
                        Some(Line::Complete(bytes)) => on(WatchItem::Line(bytes)),
                        Some(Line::Oversized { prefix, len }) => {
                            on(WatchItem::Oversized { prefix, len })
                        }
                    };
                }
                if !open {
                    return (used, ASKED);
                }
            }
            http::Decoded::Done => return (used, ASKED),
        }
    }
}
