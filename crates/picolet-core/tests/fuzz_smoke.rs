//! A deterministic fuzz smoke run over every parser that sees network or ConfigMap input: random
//! and mutated inputs, checked for panics and for invariants. It runs in CI on stable Rust; the
//! cargo-fuzz targets in `fuzz/` run the same entry points under libFuzzer for longer.

use picolet_core::agent::{Agent, ConfigMode, WatchLines};
use picolet_core::http::{Decoded, ResponseDecoder, ResponseHead};
use picolet_core::json_string::{Unescape, Unescaped, UnescapedBytes};
use picolet_core::kubelet;
use picolet_core::lines::{Line, LineFramer};
use picolet_core::memory::{self, REGION_SIZE};
use picolet_core::objects;
use picolet_core::time::{Duration, Millis, parse_http_date};

/// xorshift64*: small, fast, and the same sequence on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max + 1);
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Typical mutations: flip, insert, delete, truncate, duplicate a slice, splice interesting bytes.
fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..=rng.below(4) {
        let len = v.len();
        match rng.below(6) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] ^= 1 << rng.below(8);
            }
            1 => {
                let i = rng.below(len + 1);
                let b = *[
                    b'"', b'\\', b',', b'=', b'{', b'}', b'\n', b'\r', 0xff, b'0', b'x',
                ]
                .get(rng.below(11))
                .unwrap();
                v.insert(i, b);
            }
            2 if len > 0 => {
                let i = rng.below(len);
                let n = rng.below(len - i + 1);
                v.drain(i..i + n);
            }
            3 => v.truncate(rng.below(len + 1)),
            4 if len > 0 => {
                let i = rng.below(len);
                let n = rng.below((len - i).min(64) + 1);
                let piece = v[i..i + n].to_vec();
                let at = rng.below(v.len() + 1);
                v.splice(at..at, piece);
            }
            _ => {
                let extra = rng.bytes(8);
                let at = rng.below(len + 1);
                v.splice(at..at, extra);
            }
        }
    }
    v
}

fn inputs(rng: &mut Rng, seeds: &[&[u8]], n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            if i % 4 == 0 {
                rng.bytes(300)
            } else {
                let seed = seeds[rng.below(seeds.len())];
                mutate(rng, seed)
            }
        })
        .collect()
}

#[test]
fn memory_values_never_panic_and_hold_their_invariants() {
    let mut rng = Rng(1);
    let seeds: &[&[u8]] = &[
        b"0=0x42,1=0x43,2=0xFF",
        b" 1023 = 255 ,\n0X0a=0xfF",
        b"7=007",
        b"",
    ];
    for input in inputs(&mut rng, seeds, 50_000) {
        if let Ok(img) = memory::parse_memory_values(&input) {
            assert!(img.entries as usize <= REGION_SIZE);
            let set = img.bytes.iter().filter(|&&b| b != 0).count();
            assert!(
                set <= img.entries as usize,
                "{:?}",
                String::from_utf8_lossy(&input)
            );
        }
    }
}

/// `memory_values` as it comes out of a JSON document, escapes kept: decoding never panics,
/// never grows the text, and text without escapes parses exactly as the plain grammar does.
#[test]
fn escaped_memory_values_never_panic_and_agree_with_the_plain_grammar() {
    let mut rng = Rng(6);
    let seeds: &[&[u8]] = &[
        br"0=0x42\n1=0x43\n2=0XFF\n",
        br"\r\n\t0 = 7 ,\r\n 2=\u0038",
        br"0=\u00e9,\ud83d\ude00=1",
        br#"\"\\\/\b\f"#,
        b"1=2,3=4",
    ];
    for input in inputs(&mut rng, seeds, 50_000) {
        let raw = String::from_utf8_lossy(&input);
        let decoded: Vec<u8> = UnescapedBytes::new(&raw).map_while(Result::ok).collect();
        assert!(decoded.len() <= raw.len(), "{raw:?}");
        let chars: String = Unescape::new(&raw).map_while(Result::ok).collect();
        assert_eq!(chars.as_bytes(), &decoded[..], "{raw:?}");
        let shown = Unescaped(&raw).to_string();
        assert!(shown.len() <= raw.len() + 3, "{raw:?}");
        let json = memory::parse_memory_values_json(&raw);
        if !raw.contains('\\') {
            assert_eq!(json, memory::parse_memory_values(raw.as_bytes()), "{raw:?}");
        }
        if let Ok(img) = json {
            assert!(img.entries as usize <= REGION_SIZE);
            // Whatever escapes it had, the decoded text says the same.
            assert_eq!(Ok(img), memory::parse_memory_values(&decoded), "{raw:?}");
        }
    }
    // Any string, escaped as serde_json escapes it, decodes back to itself.
    for _ in 0..20_000 {
        let text: String = (0..rng.below(40))
            .map(|_| match rng.below(4) {
                0 => char::from_u32(rng.below(0x80) as u32).unwrap(),
                1 => char::from_u32(rng.below(0x11_0000) as u32).unwrap_or('\u{fffd}'),
                _ => *[',', '=', '\n', '\t', '\r', '"', '\\', '0', 'x']
                    .get(rng.below(9))
                    .unwrap(),
            })
            .collect();
        let json = serde_json::to_string(&text).unwrap();
        let inner = &json[1..json.len() - 1];
        let back: Result<String, _> = Unescape::new(inner).collect();
        assert_eq!(back.as_deref(), Ok(text.as_str()), "{json}");
        // And with every character as `\uXXXX` (surrogate pairs beyond the BMP).
        let all: String = text.encode_utf16().map(|u| format!("\\u{u:04x}")).collect();
        let back: Result<String, _> = Unescape::new(&all).collect();
        assert_eq!(back.as_deref(), Ok(text.as_str()), "{all}");
    }
}

#[test]
fn response_decoder_never_panics_or_loops() {
    let mut rng = Rng(2);
    let seeds: &[&[u8]] = &[
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2;x=1\r\nlo\r\n0\r\nT: 1\r\n\r\n",
        b"HTTP/1.1 410 Gone\r\nDate: Thu, 26 Nov 2026 15:40:01 GMT\r\n\r\nbody",
    ];
    for input in inputs(&mut rng, seeds, 30_000) {
        let mut dec = ResponseDecoder::new();
        let mut rest: &[u8] = &input;
        let mut body = 0usize;
        for _ in 0..(input.len() * 2 + 8) {
            match dec.decode(rest) {
                Err(_) => break,
                Ok((n, ev)) => {
                    assert!(n <= rest.len());
                    if let Decoded::Data(d) = ev {
                        assert!(!d.is_empty() && d.len() <= n);
                        body += d.len();
                    }
                    let done =
                        matches!(ev, Decoded::Done) || (n == 0 && matches!(ev, Decoded::NeedMore));
                    rest = &rest[n..];
                    if done {
                        break;
                    }
                }
            }
        }
        assert!(body <= input.len());
    }
}

#[test]
fn line_framer_accounts_for_every_byte() {
    let mut rng = Rng(3);
    for _ in 0..5_000 {
        let input = rng
            .bytes(4_000)
            .into_iter()
            .map(|b| if b % 9 == 0 { b'\n' } else { b })
            .collect::<Vec<_>>();
        let mut f = LineFramer::<64>::new();
        let (mut rest, mut seen) = (&input[..], 0usize);
        while !rest.is_empty() {
            let split = rng.below(rest.len()) + 1;
            let mut chunk = &rest[..split];
            while !chunk.is_empty() {
                let (n, line) = f.push(chunk);
                assert!(n > 0 && n <= chunk.len());
                match line {
                    Some(Line::Complete(l)) => seen += l.len() + 1,
                    Some(Line::Oversized { prefix, len }) => {
                        assert_eq!(prefix.len(), 64);
                        assert!(len > 64);
                        seen += len + 1;
                    }
                    None => {}
                }
                chunk = &chunk[n..];
            }
            rest = &rest[split..];
        }
        let newlines = input.iter().filter(|&&b| b == b'\n').count();
        let last_nl = input.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        // Complete lines drop a trailing '\r'; count those back.
        let crs = input[..last_nl].windows(2).filter(|w| w == b"\r\n").count();
        assert!(seen + crs >= last_nl && seen <= last_nl, "{newlines} lines");
    }
}

#[test]
fn kubelet_requests_and_small_parsers_never_panic() {
    let mut rng = Rng(4);
    let seeds: &[&[u8]] = &[
        b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n",
        b"HEAD /memory?x=1 HTTP/1.0\r\n\r\n",
        b"Thu, 26 Nov 2026 15:40:01 GMT",
        br#"{"metadata":{"resourceVersion":"42"}}"#,
    ];
    for input in inputs(&mut rng, seeds, 50_000) {
        let _ = kubelet::parse_request(&input);
        if let Some(t) = parse_http_date(&input) {
            assert!(t.as_secs() < 253_402_300_800, "before year 10000");
        }
        if let Some(rv) = objects::scan_resource_version(&input) {
            assert!(!rv.is_empty() && rv.len() <= 64);
        }
        if let Some(uid) = objects::scan_field(&input, "uid") {
            assert!(!uid.is_empty() && uid.len() <= 64);
        }
    }
}

fn agent() -> Agent<'static> {
    let mut cfg = picolet_core::fixtures::config(ConfigMode::Watch);
    cfg.status_report_interval_ms = Duration::from_ms(10_000);
    Agent::new(cfg, Box::leak(Box::new([0; REGION_SIZE])), Millis::ZERO).unwrap()
}

/// The whole agent fed hostile API responses and watch streams: no panic, and the region
/// changes only when a config was applied.
#[test]
fn the_agent_survives_hostile_responses_and_streams() {
    let mut rng = Rng(5);
    let body_seeds: &[&[u8]] = &[
        br#"{"metadata":{"uid":"u1","resourceVersion":"3"}}"#,
        br#"{"metadata":{"resourceVersion":"40"},"items":[{"metadata":{"name":"pico-config","resourceVersion":"39"},"data":{"memory_values":"0=1,2=3"}}]}"#,
        br#"{"metadata":{"continue":"x"},"items":[{"metadata":{"name":"p","namespace":"n"}}]}"#,
    ];
    let stream_seeds: &[&[u8]] = &[
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"{\"type\":\"MODIFIED\",\"object\":{\"metadata\":{\"name\":\"pico-config\",\"resourceVersion\":\"41\"},\"data\":{\"memory_values\":\"5=5\"}}}\n",
        b"{\"type\":\"ERROR\",\"object\":{\"code\":410}}\n",
        b"{\"type\":\"BOOKMARK\",\"object\":{\"metadata\":{\"resourceVersion\":\"77\"}}}\n",
        b"{\"type\":\"DELETED\",\"object\":{\"metadata\":{\"resourceVersion\":\"78\"}}}\n",
    ];
    let mut buf = vec![0u8; 32 * 1024];
    for round in 0..200 {
        let mut a = agent();
        let mut lines = WatchLines::new();
        let mut now = Millis::ZERO;
        for _ in 0..200 {
            now += Duration::from_ms(rng.below(3_000) as u64);
            let applies = a.metrics().config_applies;
            let before = *a.region();
            if a.poll_request(now, &mut buf).unwrap().is_some() {
                let status = *[200u16, 201, 404, 409, 410, 500, 403]
                    .get(rng.below(7))
                    .unwrap();
                let seed = body_seeds[rng.below(body_seeds.len())];
                let body = mutate(&mut rng, seed);
                let head = ResponseHead {
                    status,
                    content_length: None,
                    chunked: false,
                    close: false,
                    date: None,
                };
                let claimed = if rng.below(10) == 0 {
                    body.len() + 100_000
                } else {
                    body.len()
                };
                a.on_response(now, &head, &body, claimed);
            }
            if a.poll_watch_request(now, &mut buf).unwrap().is_some() || round % 2 == 0 {
                let mut wire = stream_seeds[0].to_vec();
                for _ in 0..rng.below(4) {
                    let seed = stream_seeds[1 + rng.below(stream_seeds.len() - 1)];
                    let ev = mutate(&mut rng, seed);
                    wire.extend_from_slice(format!("{:x}\r\n", ev.len()).as_bytes());
                    wire.extend_from_slice(&ev);
                    wire.extend_from_slice(b"\r\n");
                }
                let mut rest = &wire[..];
                while !rest.is_empty() {
                    let (n, open) = a.on_watch_bytes(now, &mut lines, rest);
                    rest = &rest[n..];
                    if !open || n == 0 {
                        break;
                    }
                }
                a.on_watch_closed(now, rng.below(2) == 0);
            }
            if a.metrics().config_applies == applies {
                assert_eq!(
                    *a.region(),
                    before,
                    "memory changed without an applied config"
                );
            }
        }
    }
}
