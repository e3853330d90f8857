//! Splits a watch stream into newline-terminated JSON documents within a fixed buffer.
//!
//! The API server writes one event per line. An event longer than the buffer (a hostile
//! megabyte ConfigMap) is not stored: its first bytes are kept, the rest is counted and
//! dropped, and it is reported as [`Line::Oversized`] when its newline arrives.

/// A complete line from the stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// The whole line, without the newline.
    Complete(&'a [u8]),
    /// A line longer than the buffer: the bytes that fit, and the full length.
    Oversized {
        /// The first bytes of the line (as many as the buffer holds).
        prefix: &'a [u8],
        /// The line's full length.
        len: usize,
    },
}

/// Line framer over a caller-sized buffer.
pub struct LineFramer<const N: usize> {
    buf: [u8; N],
    len: usize,
    /// Length of the current line when it no longer fits.
    overflow: Option<usize>,
}

impl<const N: usize> Default for LineFramer<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> LineFramer<N> {
    /// An empty framer.
    pub const fn new() -> Self {
        Self {
            buf: [0; N],
            len: 0,
            overflow: None,
        }
    }

    /// Forgets any partial line (after a reconnect).
    pub fn reset(&mut self) {
        self.len = 0;
        self.overflow = None;
    }

    /// Takes bytes from `input` up to and including the first newline. Returns how many bytes
    /// were used and the finished line, if one ended. Call again with the rest of `input`.
    pub fn push<'s>(&'s mut self, input: &[u8]) -> (usize, Option<Line<'s>>) {
        let (take, ends) = match input.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (input.len(), false),
        };
        let data = &input[..if ends { take - 1 } else { take }];
        match self.overflow.as_mut() {
            Some(total) => *total += data.len(),
            None if self.len + data.len() <= N => {
                self.buf[self.len..self.len + data.len()].copy_from_slice(data);
                self.len += data.len();
            }
            None => {
                let room = N - self.len;
                self.buf[self.len..].copy_from_slice(&data[..room]);
                self.overflow = Some(self.len + data.len());
                self.len = N;
            }
        }
        if !ends {
            return (take, None);
        }
        let len = core::mem::take(&mut self.len);
        let line = match self.overflow.take() {
            Some(total) => Line::Oversized {
                prefix: &self.buf[..len],
                len: total,
            },
            None => Line::Complete(trim_cr(&self.buf[..len])),
        };
        (take, Some(line))
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    fn lines<const N: usize>(f: &mut LineFramer<N>, mut input: &[u8]) -> Vec<std::string::String> {
        let mut out = Vec::new();
        while !input.is_empty() {
            let (n, line) = f.push(input);
            match line {
                Some(Line::Complete(l)) => {
                    out.push(std::string::String::from_utf8_lossy(l).into_owned())
                }
                Some(Line::Oversized { prefix, len }) => out.push(std::format!(
                    "OVERSIZED {} {len}",
                    std::string::String::from_utf8_lossy(prefix)
                )),
                None => {}
            }
            input = &input[n..];
        }
        out
    }

    #[test]
    fn splits_lines_across_pushes() {
        let mut f = LineFramer::<16>::new();
        assert!(lines(&mut f, b"{\"a\"").is_empty());
        assert_eq!(
            lines(&mut f, b":1}\r\n{\"b\":2}\n{"),
            ["{\"a\":1}", "{\"b\":2}"]
        );
        assert_eq!(lines(&mut f, b"}\n"), ["{}"]);
    }

    #[test]
    fn oversized_lines_keep_a_prefix_and_the_stream_recovers() {
        let mut f = LineFramer::<8>::new();
        let mut big = std::vec![b'x'; 1 << 20];
        big.extend_from_slice(b"\nok\n");
        assert_eq!(lines(&mut f, &big[..5]), Vec::<std::string::String>::new());
        assert_eq!(
            lines(&mut f, &big[5..]),
            [std::format!("OVERSIZED xxxxxxxx {}", 1 << 20), "ok".into()]
        );
    }
}
