//! The kubelet endpoints on :10250, rendered from the agent's state into a caller buffer.
//!
//! Drivers do not call these directly: a [`crate::agent::KubeletSession`] parses, authorizes and
//! answers through them. Routes: `/healthz`, `/metrics`, `/metrics/resource`, `/pods`, `/memory`.
//! Rendering takes a [`KubeletView`], a snapshot of what the pages show, not the agent. The
//! metrics pages are copied into a [`MetricsPage`] and sent in parts of the driver's buffer, so
//! their length is not bounded by it; the other pages fit in [`ANSWER_MIN`] bytes.

use core::fmt::{self, Write};

use crate::memory::REGION_SIZE;
use crate::metrics::{self, Gauges, Metrics, PlatformStats};
use crate::time::UnixMillis;
use crate::write::{CountingWriter, SliceWriter, WindowWriter};

/// What the kubelet pages show, taken from the agent at one moment.
pub struct KubeletView<'a> {
    /// The agent's counters.
    pub metrics: &'a Metrics,
    /// Its gauges.
    pub gauges: Gauges,
    /// The memory region.
    pub region: &'a [u8; REGION_SIZE],
    /// The config state's annotation value (`Applied`, …).
    pub config_state: &'a str,
    /// The resourceVersion last applied ("" when none).
    pub applied_resource_version: &'a str,
    /// The Unix time now, once the clock is known.
    pub unix_ms: Option<UnixMillis>,
}

/// The endpoints picolet serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `/healthz`: liveness.
    Healthz,
    /// `/metrics`: picolet's Prometheus metrics.
    Metrics,
    /// `/metrics/resource`: node CPU and memory for metrics-server.
    MetricsResource,
    /// `/pods`: always empty.
    Pods,
    /// `/memory`: the region in hex.
    Memory,
}

impl Route {
    /// The `nodes` subresource a caller needs `get` on, as the kubelet maps its paths
    /// (`/metrics*` → `metrics`, everything else → `proxy`); `None` for `/healthz`, which is open.
    pub fn subresource(self) -> Option<&'static str> {
        match self {
            Self::Healthz => None,
            Self::Metrics | Self::MetricsResource => Some("metrics"),
            Self::Pods | Self::Memory => Some("proxy"),
        }
    }
}

/// A request that cannot be served, with the status to answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 400: not HTTP/1.x.
    BadRequest,
    /// 404: no such endpoint.
    NotFound,
    /// 405: only GET (and HEAD) are served.
    MethodNotAllowed,
    /// 431: the head does not fit in the server's buffer.
    HeadTooLarge,
    /// 401: no verified client certificate and no valid bearer token (everything but
    /// `/healthz` needs one).
    Unauthorized,
    /// 403: the API server's SubjectAccessReview said no.
    Forbidden,
    /// 503: the API server could not be asked in time.
    AuthorizationUnavailable,
}

impl Refusal {
    fn status(self) -> (u16, &'static str) {
        match self {
            Self::BadRequest => (400, "Bad Request"),
            Self::NotFound => (404, "Not Found"),
            Self::MethodNotAllowed => (405, "Method Not Allowed"),
            Self::HeadTooLarge => (431, "Request Header Fields Too Large"),
            Self::Unauthorized => (401, "Unauthorized"),
            Self::Forbidden => (403, "Forbidden"),
            Self::AuthorizationUnavailable => (503, "Service Unavailable"),
        }
    }
}

/// A parsed request: the route, whether only the head is wanted, and where its bearer token is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// Which endpoint.
    pub route: Route,
    /// A HEAD request: answer without the body.
    pub head_only: bool,
    /// The token of an `Authorization: Bearer` header, as a range of the head (kept as a range
    /// so the request stays `Copy`; the driver passes the same head at every step).
    pub bearer: Option<Bearer>,
}

/// Where a bearer token is in the request head: `head[start..end]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bearer {
    /// First byte of the token.
    pub start: u16,
    /// One past its last byte.
    pub end: u16,
}

impl Bearer {
    /// The token in `head`, the head it was parsed from.
    pub fn token(self, head: &[u8]) -> Option<&[u8]> {
        head.get(usize::from(self.start)..usize::from(self.end))
    }
}

/// A token of RFC 6750's `b64token` syntax (what JWTs and legacy service-account tokens are):
/// letters, digits, `-._~+/`, then `=` padding. Anything else is refused before it is sent on.
fn is_b64token(t: &[u8]) -> bool {
    let body = t.iter().rposition(|&c| c != b'=').map_or(0, |i| i + 1);
    body > 0
        && t[..body]
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || b"-._~+/".contains(&c))
}

/// The bearer token of the `Authorization` header in `headers`, located in `buf`. `Err`: an
/// `Authorization` header that is not a well-formed bearer token (refused as unauthenticated,
/// as a kubelet does), or more than one.
fn bearer_of(buf: &[u8], headers: &[httparse::Header<'_>]) -> Result<Option<Bearer>, Refusal> {
    let mut found = None;
    for h in headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("authorization"))
    {
        if found.is_some() {
            return Err(Refusal::Unauthorized);
        }
        let v = h.value;
        let scheme = v.get(..7).ok_or(Refusal::Unauthorized)?;
        if !scheme.eq_ignore_ascii_case(b"bearer ") {
            return Err(Refusal::Unauthorized);
        }
        let token = v[7..].trim_ascii();
        if !is_b64token(token) {
            return Err(Refusal::Unauthorized);
        }
        // httparse's values borrow `buf`: the token's offset is its distance from buf's start.
        let start = (token.as_ptr() as usize).wrapping_sub(buf.as_ptr() as usize);
        let end = start + token.len();
        if end > buf.len() {
            return Err(Refusal::BadRequest);
        }
        let (Ok(start), Ok(end)) = (u16::try_from(start), u16::try_from(end)) else {
            return Err(Refusal::HeadTooLarge);
        };
        found = Some(Bearer { start, end });
    }
    Ok(found)
}

/// Parses a request head. `Ok(None)`: incomplete, read more (a full buffer means
/// [`Refusal::HeadTooLarge`]).
pub fn parse_request(buf: &[u8]) -> Result<Option<Request>, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; 24];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Refusal::HeadTooLarge),
        Err(_) => return Err(Refusal::BadRequest),
    }
    let path = req.path.ok_or(Refusal::BadRequest)?;
    let path = path.split('?').next().unwrap_or(path);
    let route = match path {
        "/healthz" => Route::Healthz,
        "/metrics" => Route::Metrics,
        "/metrics/resource" => Route::MetricsResource,
        "/pods" | "/pods/" => Route::Pods,
        "/memory" => Route::Memory,
        _ => return Err(Refusal::NotFound),
    };
    let head_only = match req.method {
        Some("GET") => false,
        Some("HEAD") => true,
        _ => return Err(Refusal::MethodNotAllowed),
    };
    let bearer = bearer_of(buf, req.headers)?;
    Ok(Some(Request {
        route,
        head_only,
        bearer,
    }))
}

/// The smallest request-head buffer a driver may read into: a bearer token as long as the
/// agent accepts ([`crate::agent::TOKEN_MAX`]) and the usual headers of metrics-server,
/// Prometheus and the API server's proxy. A longer head is refused with 431.
pub const HEAD_MIN: usize = crate::agent::TOKEN_MAX + 512;

const HEAD_RESERVE: usize = 256;

/// The smallest answer buffer a driver may give: `/memory` (about 3.5 KiB) and a head fit in one
/// part; the metrics pages are sent in as many parts as they take.
pub const ANSWER_MIN: usize = 4096;
const TEXT: &str = "text/plain; charset=utf-8";
const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";
const JSON: &str = "application/json";

/// Writes a response head: every answer is one request's, with its length, then a close.
fn write_head(
    w: &mut SliceWriter<'_>,
    status: (u16, &str),
    content_type: &str,
    body_len: usize,
) -> fmt::Result {
    write!(
        w,
        "HTTP/1.1 {} {}\r\nContent-Type: {content_type}\r\nContent-Length: {body_len}\r\nConnection: close\r\n\r\n",
        status.0, status.1
    )
}

/// Writes a whole response; `body` renders into the writer it is given.
fn write_response(
    out: &mut [u8],
    status: (u16, &str),
    content_type: &str,
    head_only: bool,
    body: &mut dyn FnMut(&mut SliceWriter<'_>) -> fmt::Result,
) -> usize {
    if out.len() <= HEAD_RESERVE {
        return 0;
    }
    let (mut status, mut content_type) = (status, content_type);
    let mut body_len = {
        let mut w = SliceWriter::new(&mut out[HEAD_RESERVE..]);
        match body(&mut w) {
            Ok(()) => w.len(),
            Err(_) => usize::MAX,
        }
    };
    if body_len == usize::MAX {
        // The page did not fit: say so rather than send half a metrics page.
        status = (500, "Internal Server Error");
        content_type = TEXT;
        let msg = b"response too large for the server buffer\n";
        out[HEAD_RESERVE..HEAD_RESERVE + msg.len()].copy_from_slice(msg);
        body_len = msg.len();
    }
    let mut head = [0u8; HEAD_RESERVE];
    let mut w = SliceWriter::new(&mut head);
    let _ = write_head(&mut w, status, content_type, body_len);
    let head_len = w.len();
    let sent_body = if head_only { 0 } else { body_len };
    out.copy_within(HEAD_RESERVE..HEAD_RESERVE + sent_body, head_len);
    out[..head_len].copy_from_slice(&head[..head_len]);
    head_len + sent_body
}

/// Writes the error response for a refused request.
pub fn refuse(refusal: Refusal, out: &mut [u8]) -> usize {
    let status = refusal.status();
    write_response(out, status, TEXT, false, &mut |w| {
        writeln!(w, "{}", status.1)
    })
}

/// A metrics page (`/metrics` or `/metrics/resource`) as of one moment: rendered again for each
/// part it is sent in, from this copy, so that the parts join into one consistent text.
#[derive(Clone, Debug)]
pub struct MetricsPage {
    resource: bool,
    metrics: Metrics,
    gauges: Gauges,
    platform: PlatformStats,
    unix_ms: UnixMillis,
}

impl MetricsPage {
    /// `/metrics` (or with `resource`, `/metrics/resource`) as `view` and `platform` show it.
    pub fn new(resource: bool, view: &KubeletView<'_>, platform: &PlatformStats) -> Self {
        Self {
            resource,
            metrics: view.metrics.clone(),
            gauges: view.gauges.clone(),
            platform: *platform,
            unix_ms: view.unix_ms.unwrap_or_default(),
        }
    }

    fn render(&self, w: &mut dyn Write) -> fmt::Result {
        if self.resource {
            metrics::render_resource(w, &self.platform, self.unix_ms)
        } else {
            self.metrics.render(w, &self.gauges)?;
            self.platform.render(w)
        }
    }

    /// Bytes of the page's body.
    pub fn body_len(&self) -> usize {
        let mut count = CountingWriter::default();
        let _ = self.render(&mut count);
        count.0
    }

    /// Writes the response head (with the body's length) and as much of the body as fits;
    /// returns the bytes written and how many of them are body.
    pub fn start(&self, body_len: usize, head_only: bool, out: &mut [u8]) -> (usize, usize) {
        let mut w = SliceWriter::new(out);
        let head = write_head(&mut w, (200, "OK"), PROMETHEUS, body_len);
        let head_len = if head.is_ok() { w.len() } else { 0 };
        if head_len == 0 || head_only {
            return (head_len, 0);
        }
        let body = self.part(0, &mut out[head_len..]);
        (head_len + body, body)
    }

    /// Writes the body from byte `sent` on into `out`; returns the bytes written.
    pub fn part(&self, sent: usize, out: &mut [u8]) -> usize {
        let mut w = WindowWriter::new(out, sent);
        let _ = self.render(&mut w);
        w.len()
    }
}

/// Writes the whole response to `req` from `view` in one part (a metrics page that does not fit
/// is a 500: the agent's kubelet session sends those through a [`MetricsPage`] instead).
pub fn respond(
    view: &KubeletView<'_>,
    platform: &PlatformStats,
    req: Request,
    out: &mut [u8],
) -> usize {
    let ok = (200, "OK");
    let page = |resource| MetricsPage::new(resource, view, platform);
    match req.route {
        Route::Healthz => write_response(out, ok, TEXT, req.head_only, &mut |w| w.write_str("ok")),
        Route::Metrics => write_response(out, ok, PROMETHEUS, req.head_only, &mut |w| {
            page(false).render(w)
        }),
        Route::MetricsResource => write_response(out, ok, PROMETHEUS, req.head_only, &mut |w| {
            page(true).render(w)
        }),
        Route::Pods => write_response(out, ok, JSON, req.head_only, &mut |w| {
            w.write_str(r#"{"kind":"PodList","apiVersion":"v1","metadata":{},"items":[]}"#)
        }),
        Route::Memory => write_response(out, ok, TEXT, req.head_only, &mut |w| {
            render_memory(view, w)
        }),
    }
}

/// `/memory`: a header line, then 16 bytes per line as `OFFSET: HEX…`.
fn render_memory(view: &KubeletView<'_>, w: &mut dyn Write) -> fmt::Result {
    let region = view.region;
    let (state, rv) = (view.config_state, view.applied_resource_version);
    writeln!(
        w,
        "# picolet memory region: {REGION_SIZE} bytes, crc32 0x{:08x}, config {} (resourceVersion {})",
        crate::memory::checksum(region),
        state,
        if rv.is_empty() { "none" } else { rv }
    )?;
    for (i, row) in region.chunks(16).enumerate() {
        write!(w, "{:04x}:", i * 16)?;
        for b in row {
            write!(w, " {b:02x}")?;
        }
        w.write_str("\n")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_refuses() {
        assert_eq!(
            parse_request(b"GET /healthz HTTP/1.1\r\n\r\n"),
            Ok(Some(Request {
                route: Route::Healthz,
                head_only: false,
                bearer: None,
            }))
        );
        assert_eq!(
            parse_request(b"HEAD /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"),
            Ok(Some(Request {
                route: Route::Metrics,
                head_only: true,
                bearer: None,
            }))
        );
        assert_eq!(parse_request(b"GET /healthz HTTP/1.1\r\nHost:"), Ok(None));
        assert_eq!(
            parse_request(b"POST /pods HTTP/1.1\r\n\r\n"),
            Err(Refusal::MethodNotAllowed)
        );
        assert_eq!(
            parse_request(b"GET /exec HTTP/1.1\r\n\r\n"),
            Err(Refusal::NotFound)
        );
        assert_eq!(
            parse_request(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
            Err(Refusal::BadRequest)
        );
        let mut many = std::vec::Vec::new();
        many.extend_from_slice(b"GET /healthz HTTP/1.1\r\n");
        for i in 0..40 {
            many.extend_from_slice(std::format!("X-{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(parse_request(&many), Err(Refusal::HeadTooLarge));
    }

    extern crate std;

    #[test]
    fn a_bearer_token_is_found_in_the_head_and_malformed_ones_are_refused() {
        let head =
            b"GET /metrics HTTP/1.1\r\nHost: a\r\nauthorization: bearer  eyJ.a-b_c~d+e/f==\r\n\r\n";
        let req = parse_request(head).unwrap().unwrap();
        let token = req.bearer.and_then(|b| b.token(head));
        assert_eq!(token, Some(&b"eyJ.a-b_c~d+e/f=="[..]));
        for bad in [
            &b"Authorization: Basic dXNlcjpwdw=="[..],
            b"Authorization: Bearer ",
            b"Authorization: Bearer a\"b",
            b"Authorization: Bearer a b",
            b"Authorization: Bearer ==",
            b"Authorization: Bearer a=b",
            b"Authorization: Bearer a\r\nAuthorization: Bearer b",
        ] {
            let mut head = b"GET /pods HTTP/1.1\r\n".to_vec();
            head.extend_from_slice(bad);
            head.extend_from_slice(b"\r\n\r\n");
            assert_eq!(
                parse_request(&head),
                Err(Refusal::Unauthorized),
                "{}",
                std::string::String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn refusals_are_complete_responses() {
        let mut out = [0u8; 512];
        let n = refuse(Refusal::NotFound, &mut out);
        let text = core::str::from_utf8(&out[..n]).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(text.ends_with("\r\n\r\nNot Found\n"));
        assert!(text.contains("Content-Length: 10\r\n"));
    }
}
