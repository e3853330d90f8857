//! One watch stream's HTTP and line framing: raw bytes from the connection in, one item at a
//! time out to the concern that follows the stream (its response head, each complete line, an
//! oversized line's prefix, the end). The concern decides what each item means.

use super::{AgentConfig, AgentError, encode_get};
use crate::http::{self, ResponseHead};
use crate::lines::{Line, LineFramer};
use crate::paths::{ApiPath, Watch};

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
