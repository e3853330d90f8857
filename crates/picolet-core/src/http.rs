//! HTTP/1.1 on caller-owned buffers: encoding API requests, decoding responses (fixed-length,
//! chunked, or read-until-close), for both the request/response connection and the watch stream.
//!
//! Header and chunk-size parsing is httparse's; this module adds the framing state machine that
//! httparse leaves to its users, kept here so the Pico and the host agent run the same code.

use core::fmt::{self, Write as _};

use crate::time::UnixSeconds;
use crate::write::SliceWriter;

/// Request methods the agent uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Reads, lists and watches.
    Get,
    /// Creates.
    Post,
    /// Replaces (the Lease renewal).
    Put,
    /// Merge and apply patches.
    Patch,
}

impl Method {
    /// The method as it appears on the wire (and in metrics labels).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Patch => "PATCH",
        }
    }
}

/// Content types of request bodies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyType {
    /// A whole object.
    Json,
    /// An RFC 7386 merge patch.
    MergePatch,
    /// Server-side apply (used by `picolet enrol` for RBAC objects).
    ApplyPatch,
}

impl BodyType {
    fn as_str(self) -> &'static str {
        match self {
            Self::Json => "application/json",
            Self::MergePatch => "application/merge-patch+json",
            Self::ApplyPatch => "application/apply-patch+yaml",
        }
    }
}

/// Why a message could not be encoded or decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpError {
    /// The output buffer is too small for the request or response.
    BufferTooSmall,
    /// The response head is malformed.
    BadHead,
    /// The response head did not fit in the input buffer.
    HeadTooLarge,
    /// A chunk-size line or chunk terminator is malformed.
    BadChunk,
    /// The peer closed the connection before the body ended.
    Truncated,
    /// The body is larger than the caller is willing to hold.
    BodyTooLarge,
    /// A header value holds characters that could end the header (a bearer token must be
    /// visible ASCII).
    BadHeaderValue,
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::BufferTooSmall => "buffer too small",
            Self::BadHead => "malformed HTTP response head",
            Self::HeadTooLarge => "HTTP response head too large",
            Self::BadChunk => "malformed chunked encoding",
            Self::Truncated => "connection closed before the response ended",
            Self::BodyTooLarge => "response body too large",
            Self::BadHeaderValue => "header value with control or non-ASCII characters",
        })
    }
}

/// Writes a request body into the slice it is given and returns its length (`None`: no room).
pub type BodyWriter<'w> = &'w mut dyn FnMut(&mut [u8]) -> Option<usize>;

/// Room kept in front of the body for the request head while encoding.
const HEAD_RESERVE: usize = 768;

/// Writes a complete request (head and body) into `out` and returns its length.
///
/// `body` writes the body into the slice it is given and returns the number of bytes; it is
/// written first so that `Content-Length` is exact without an extra buffer.
pub fn encode_request(
    out: &mut [u8],
    method: Method,
    host: &str,
    path: fmt::Arguments<'_>,
    body: Option<(BodyType, BodyWriter<'_>)>,
) -> Result<usize, HttpError> {
    encode_request_with_token(out, method, host, path, None, body)
}

/// [`encode_request`] with an `Authorization: Bearer` header: how a node authenticates with
/// a bootstrap token before it has a client certificate.
pub fn encode_request_with_token(
    out: &mut [u8],
    method: Method,
    host: &str,
    path: fmt::Arguments<'_>,
    bearer: Option<&str>,
    body: Option<(BodyType, BodyWriter<'_>)>,
) -> Result<usize, HttpError> {
    if out.len() <= HEAD_RESERVE {
        return Err(HttpError::BufferTooSmall);
    }
    if bearer.is_some_and(|t| t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic())) {
        return Err(HttpError::BadHeaderValue);
    }
    let (ctype, body_len) = match body {
        Some((ctype, write_body)) => {
            let n = write_body(&mut out[HEAD_RESERVE..]).ok_or(HttpError::BufferTooSmall)?;
            (Some(ctype), n)
        }
        None => (None, 0),
    };
    let mut head = [0u8; HEAD_RESERVE];
    let mut w = SliceWriter::new(&mut head);
    let r: fmt::Result = (|| {
        write!(
            w,
            "{} {} HTTP/1.1\r\nHost: {host}\r\n",
            method.as_str(),
            path
        )?;
        w.write_str(concat!(
            "User-Agent: picolet/",
            env!("CARGO_PKG_VERSION"),
            "\r\nAccept: application/json\r\n"
        ))?;
        if let Some(token) = bearer {
            write!(w, "Authorization: Bearer {token}\r\n")?;
        }
        if let Some(ctype) = ctype {
            write!(
                w,
                "Content-Type: {}\r\nContent-Length: {body_len}\r\n",
                ctype.as_str()
            )?;
        }
        w.write_str("\r\n")
    })();
    r.map_err(|_| HttpError::BufferTooSmall)?;
    let head_len = w.len();
    out.copy_within(HEAD_RESERVE..HEAD_RESERVE + body_len, head_len);
    out[..head_len].copy_from_slice(&head[..head_len]);
    Ok(head_len + body_len)
}

/// What the agent needs from a response head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    /// The status code.
    pub status: u16,
    /// `Content-Length`, when given and not chunked.
    pub content_length: Option<usize>,
    /// `Transfer-Encoding: chunked`.
    pub chunked: bool,
    /// The server will close the connection after this response.
    pub close: bool,
    /// The `Date` header as Unix seconds: the Pico's clock source.
    pub date: Option<UnixSeconds>,
}

/// What [`ResponseDecoder::decode`] found in the input.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// Nothing complete yet: read more bytes and call again with the unconsumed input plus them.
    NeedMore,
    /// The head was parsed.
    Head(ResponseHead),
    /// A piece of the (de-chunked) body.
    Data(&'a [u8]),
    /// The response is complete; the connection may carry the next one unless `close` was set.
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Head,
    Fixed(usize),
    UntilClose,
    ChunkSize,
    ChunkData(usize),
    ChunkEnd,
    Trailers,
    Done,
}

/// Incremental response decoder: feed it bytes as they arrive, act on what it returns.
#[derive(Clone, Debug)]
pub struct ResponseDecoder {
    state: State,
}

impl Default for ResponseDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ResponseDecoder {
    /// A decoder waiting for a response head.
    pub fn new() -> Self {
        Self { state: State::Head }
    }

    /// True once the whole response has been decoded.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes the front of `input`. Returns how many bytes were consumed and what they held.
    /// A `NeedMore` with a full input buffer means the head or a chunk line is too long.
    pub fn decode<'a>(&mut self, input: &'a [u8]) -> Result<(usize, Decoded<'a>), HttpError> {
        match self.state {
            State::Head => {
                let mut headers = [httparse::EMPTY_HEADER; 32];
                let mut resp = httparse::Response::new(&mut headers);
                let n = match resp.parse(input) {
                    Ok(httparse::Status::Complete(n)) => n,
                    Ok(httparse::Status::Partial) => return Ok((0, Decoded::NeedMore)),
                    Err(_) => return Err(HttpError::BadHead),
                };
                let status = resp.code.ok_or(HttpError::BadHead)?;
                let mut head = ResponseHead {
                    status,
                    content_length: None,
                    chunked: false,
                    close: false,
                    date: None,
                };
                for h in resp.headers.iter() {
                    if h.name.eq_ignore_ascii_case("content-length") {
                        let v = core::str::from_utf8(h.value).map_err(|_| HttpError::BadHead)?;
                        head.content_length =
                            Some(v.trim().parse().map_err(|_| HttpError::BadHead)?);
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        head.chunked = h.value.eq_ignore_ascii_case(b"chunked");
                    } else if h.name.eq_ignore_ascii_case("connection") {
                        head.close = h.value.eq_ignore_ascii_case(b"close");
                    } else if h.name.eq_ignore_ascii_case("date") {
                        head.date = crate::time::parse_http_date(h.value);
                    }
                }
                if head.chunked {
                    head.content_length = None;
                }
                self.state = if status == 204 || status == 304 || (100..200).contains(&status) {
                    State::Done
                } else if head.chunked {
                    State::ChunkSize
                } else if let Some(len) = head.content_length {
                    if len == 0 {
                        State::Done
                    } else {
                        State::Fixed(len)
                    }
                } else {
                    head.close = true;
                    State::UntilClose
                };
                Ok((n, Decoded::Head(head)))
            }
            State::Fixed(remaining) => {
                if input.is_empty() {
                    return Ok((0, Decoded::NeedMore));
                }
                let n = remaining.min(input.len());
                self.state = if n == remaining {
                    State::Done
                } else {
                    State::Fixed(remaining - n)
                };
                Ok((n, Decoded::Data(&input[..n])))
            }
            State::UntilClose => {
                if input.is_empty() {
                    return Ok((0, Decoded::NeedMore));
                }
                Ok((input.len(), Decoded::Data(input)))
            }
            State::ChunkSize => match httparse::parse_chunk_size(input) {
                Ok(httparse::Status::Complete((n, 0))) => {
                    self.state = State::Trailers;
                    Ok((n, Decoded::NeedMore))
                }
                Ok(httparse::Status::Complete((n, size))) => {
                    self.state =
                        State::ChunkData(usize::try_from(size).map_err(|_| HttpError::BadChunk)?);
                    Ok((n, Decoded::NeedMore))
                }
                Ok(httparse::Status::Partial) => Ok((0, Decoded::NeedMore)),
                Err(_) => Err(HttpError::BadChunk),
            },
            State::ChunkData(remaining) => {
                if input.is_empty() {
                    return Ok((0, Decoded::NeedMore));
                }
                let n = remaining.min(input.len());
                self.state = if n == remaining {
                    State::ChunkEnd
                } else {
                    State::ChunkData(remaining - n)
                };
                Ok((n, Decoded::Data(&input[..n])))
            }
            State::ChunkEnd => match input {
                [b'\r', b'\n', ..] => {
                    self.state = State::ChunkSize;
                    Ok((2, Decoded::NeedMore))
                }
                [] | [b'\r'] => Ok((0, Decoded::NeedMore)),
                _ => Err(HttpError::BadChunk),
            },
            State::Trailers => match input.windows(2).position(|w| w == b"\r\n") {
                Some(0) => {
                    self.state = State::Done;
                    Ok((2, Decoded::Done))
                }
                Some(i) => Ok((i + 2, Decoded::NeedMore)),
                None => Ok((0, Decoded::NeedMore)),
            },
            State::Done => Ok((0, Decoded::Done)),
        }
    }

    /// Tells the decoder the peer closed the connection: fine for a read-until-close body,
    /// an error anywhere else before the end.
    pub fn finish(&mut self) -> Result<(), HttpError> {
        match self.state {
            State::UntilClose | State::Done => {
                self.state = State::Done;
                Ok(())
            }
            _ => Err(HttpError::Truncated),
        }
    }
}

/// What [`ResponseReader::feed`] found.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadStep {
    /// Read more bytes from the connection and feed them (after the unconsumed ones). If the
    /// connection closes instead, call [`ResponseReader::closed`].
    NeedMore,
    /// The response is complete.
    Done(Response),
}

/// A complete response: its head, and its full body length (more than the caller's buffer
/// holds when the body did not fit; the excess was counted, not kept).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Response {
    /// The head.
    pub head: ResponseHead,
    /// The full body length.
    pub body_len: usize,
}

/// Reads one response to a request on a kept-alive connection, the same way for every
/// transport: bytes in, the head and the body (into the caller's buffer) out.
///
/// Call [`ResponseReader::feed`] with the bytes read so far; it says how many it used and
/// whether more are needed. The driver keeps the unused bytes (the start of the next response,
/// or of a head not yet complete) and reads more after them; a full input buffer with
/// [`ReadStep::NeedMore`] means a head or chunk line is too long for it.
#[derive(Clone, Debug, Default)]
pub struct ResponseReader {
    decoder: ResponseDecoder,
    head: Option<ResponseHead>,
    body_len: usize,
}

impl ResponseReader {
    /// A reader waiting for a response head.
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes what `input` holds, copying body bytes into `body` from where the last call
    /// stopped. Returns the bytes of `input` used and what is next.
    pub fn feed(
        &mut self,
        mut input: &[u8],
        body: &mut [u8],
    ) -> Result<(usize, ReadStep), HttpError> {
        let mut used = 0;
        loop {
            let (n, decoded) = self.decoder.decode(input)?;
            used += n;
            input = &input[n..];
            match decoded {
                Decoded::Head(h) => self.head = Some(h),
                Decoded::Data(d) => {
                    if let Some(dst) = body.get_mut(self.body_len..) {
                        let k = dst.len().min(d.len());
                        dst[..k].copy_from_slice(&d[..k]);
                    }
                    self.body_len += d.len();
                }
                Decoded::Done => return Ok((used, self.done()?)),
                Decoded::NeedMore if n > 0 => {}
                Decoded::NeedMore => return Ok((used, ReadStep::NeedMore)),
            }
        }
    }

    /// The connection closed before [`ReadStep::Done`]: the end of a read-until-close body,
    /// or [`HttpError::Truncated`].
    pub fn closed(&mut self) -> Result<Response, HttpError> {
        self.decoder.finish()?;
        match self.done()? {
            ReadStep::Done(r) => Ok(r),
            ReadStep::NeedMore => Err(HttpError::Truncated),
        }
    }

    /// True once a head arrived (a connection that breaks before that may simply have been
    /// closed by the server while idle).
    pub fn started(&self) -> bool {
        self.head.is_some()
    }

    fn done(&self) -> Result<ReadStep, HttpError> {
        let head = self.head.ok_or(HttpError::BadHead)?;
        Ok(ReadStep::Done(Response {
            head,
            body_len: self.body_len,
        }))
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    #[test]
    fn encodes_requests_with_exact_content_length() {
        let mut out = [0u8; 2048];
        let n = encode_request(
            &mut out,
            Method::Patch,
            "kubernetes",
            format_args!("/api/v1/nodes/{}/status", "pico-node-1"),
            Some((BodyType::MergePatch, &mut |b: &mut [u8]| {
                b[..7].copy_from_slice(b"{\"a\":1}");
                Some(7)
            })),
        )
        .unwrap();
        let text = core::str::from_utf8(&out[..n]).unwrap();
        assert!(text.starts_with(
            "PATCH /api/v1/nodes/pico-node-1/status HTTP/1.1\r\nHost: kubernetes\r\n"
        ));
        assert!(text.contains(
            "Content-Type: application/merge-patch+json\r\nContent-Length: 7\r\n\r\n{\"a\":1}"
        ));
        assert!(text.ends_with("\r\n\r\n{\"a\":1}"));
        let mut buf = [0u8; 2048];
        let n = encode_request_with_token(
            &mut buf,
            Method::Get,
            "h",
            format_args!("/"),
            Some("abcdef.0123456789abcdef"),
            None,
        )
        .unwrap();
        assert!(
            core::str::from_utf8(&buf[..n])
                .unwrap()
                .contains("\r\nAuthorization: Bearer abcdef.0123456789abcdef\r\n")
        );
        for bad in ["", "a\r\nX-Evil: 1", "t ok", "caf\u{e9}"] {
            assert_eq!(
                encode_request_with_token(
                    &mut buf,
                    Method::Get,
                    "h",
                    format_args!("/"),
                    Some(bad),
                    None
                ),
                Err(HttpError::BadHeaderValue)
            );
        }
        assert_eq!(
            encode_request(&mut [0u8; 100], Method::Get, "h", format_args!("/"), None),
            Err(HttpError::BufferTooSmall)
        );
    }

    /// Feeds `wire` to a decoder in pieces of `step` bytes, as a socket would deliver them.
    fn decode_all(wire: &[u8], step: usize) -> Result<(ResponseHead, Vec<u8>), HttpError> {
        let mut dec = ResponseDecoder::new();
        let mut pending: Vec<u8> = Vec::new();
        let mut head = None;
        let mut body = Vec::new();
        let mut fed = 0;
        loop {
            let (n, ev) = dec.decode(&pending)?;
            let done = match ev {
                Decoded::Head(h) => {
                    head = Some(h);
                    false
                }
                Decoded::Data(d) => {
                    body.extend_from_slice(d);
                    false
                }
                Decoded::Done => true,
                Decoded::NeedMore => {
                    if n == 0 {
                        if fed >= wire.len() {
                            dec.finish()?;
                            break;
                        }
                        let end = (fed + step).min(wire.len());
                        pending.extend_from_slice(&wire[fed..end]);
                        fed = end;
                    }
                    false
                }
            };
            pending.drain(..n);
            if done {
                break;
            }
        }
        Ok((head.unwrap(), body))
    }

    #[test]
    fn decodes_fixed_and_chunked_bodies_in_any_split() {
        let fixed = b"HTTP/1.1 200 OK\r\nDate: Thu, 26 Nov 2026 15:40:01 GMT\r\nContent-Length: 5\r\n\r\nhello";
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2;ext=1\r\nlo\r\n0\r\nX-T: 1\r\n\r\n";
        for step in [1, 2, 3, 7, 1000] {
            let (h, b) = decode_all(fixed, step).unwrap();
            assert_eq!(
                (h.status, h.content_length, h.date),
                (200, Some(5), Some(UnixSeconds::from_secs(1_795_707_601)))
            );
            assert_eq!(b, b"hello");
            let (h, b) = decode_all(chunked, step).unwrap();
            assert!(h.chunked);
            assert_eq!(b, b"hello");
        }
    }

    #[test]
    fn reports_truncation_and_garbage() {
        assert_eq!(
            decode_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", 4).unwrap_err(),
            HttpError::Truncated
        );
        assert_eq!(
            decode_all(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                4
            )
            .unwrap_err(),
            HttpError::BadChunk
        );
        assert_eq!(
            decode_all(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabX",
                9
            )
            .unwrap_err(),
            HttpError::BadChunk
        );
        assert_eq!(
            decode_all(b"NOT HTTP\r\n\r\n", 4).unwrap_err(),
            HttpError::BadHead
        );
        assert_eq!(
            decode_all(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", 4).unwrap_err(),
            HttpError::BadHead
        );
        let (h, b) = decode_all(b"HTTP/1.1 200 OK\r\n\r\nuntil close", 3).unwrap();
        assert!(h.close);
        assert_eq!(b, b"until close");
    }

    #[test]
    fn response_reader_collects_bodies_in_pieces_and_counts_what_does_not_fit() {
        let wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nHTTP/1.1 204";
        let mut body = [0u8; 8];
        for step in [1, 3, 7, wire.len()] {
            let mut r = ResponseReader::new();
            let (mut start, mut end) = (0, 0);
            let done = loop {
                let (n, s) = r.feed(&wire[start..end], &mut body).unwrap();
                start += n;
                match s {
                    ReadStep::Done(resp) => break resp,
                    ReadStep::NeedMore => end = (end + step).min(wire.len()),
                }
            };
            assert_eq!((done.head.status, done.body_len), (200, 11), "step {step}");
            assert_eq!(&body, b"hello wo");
            assert_eq!(&wire[start..], b"HTTP/1.1 204", "the next response is left");
        }
        let mut r = ResponseReader::new();
        let (_, s) = r.feed(b"HTTP/1.1 200 OK\r\n\r\nuntil", &mut body).unwrap();
        assert_eq!(s, ReadStep::NeedMore);
        assert_eq!(r.closed().map(|r| r.body_len), Ok(5));
        let mut r = ResponseReader::new();
        let _ = r
            .feed(
                b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc",
                &mut body,
            )
            .unwrap();
        assert_eq!(r.closed(), Err(HttpError::Truncated));
    }
}
