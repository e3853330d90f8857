//! Formatting into caller-owned byte buffers: the core has no heap, so every response body,
//! request and metric page is written through [`SliceWriter`].

use core::fmt;

/// A `fmt::Write` sink over a fixed byte slice that fails (instead of truncating silently)
/// when the slice is full.
pub struct SliceWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> SliceWriter<'a> {
    /// Starts writing at the beginning of `buf`.
    pub fn new(buf: &'a mut [u8]) -> Self {
        Self { buf, len: 0 }
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends raw bytes, failing with `fmt::Error` when they do not fit.
    pub fn write_bytes(&mut self, bytes: &[u8]) -> fmt::Result {
        let end = self.len.checked_add(bytes.len()).ok_or(fmt::Error)?;
        let dst = self.buf.get_mut(self.len..end).ok_or(fmt::Error)?;
        dst.copy_from_slice(bytes);
        self.len = end;
        Ok(())
    }
}

impl fmt::Write for SliceWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.write_bytes(s.as_bytes())
    }
}

/// Keeps one window of a longer text: bytes `skip..skip + buf.len()` of everything written.
/// A page longer than the buffer is sent in parts by rendering it once per part; the write
/// that fills the window fails, which ends that rendering early.
pub struct WindowWriter<'a> {
    buf: &'a mut [u8],
    skip: usize,
    seen: usize,
    len: usize,
}

impl<'a> WindowWriter<'a> {
    /// A window over `buf` that starts `skip` bytes into the text.
    pub fn new(buf: &'a mut [u8], skip: usize) -> Self {
        Self {
            buf,
            skip,
            seen: 0,
            len: 0,
        }
    }

    /// Bytes of the window filled so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing of the window was filled.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl fmt::Write for WindowWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let (start, bytes) = (self.seen, s.as_bytes());
        self.seen = start.saturating_add(bytes.len());
        let end = self.skip.saturating_add(self.buf.len());
        let (from, to) = (self.skip.max(start), end.min(self.seen));
        if from < to {
            self.buf[from - self.skip..to - self.skip]
                .copy_from_slice(&bytes[from - start..to - start]);
            self.len = to - self.skip;
        }
        if self.seen >= end {
            Err(fmt::Error)
        } else {
            Ok(())
        }
    }
}

/// Counts the bytes of a text without keeping them (a page's `Content-Length`).
#[derive(Default)]
pub struct CountingWriter(pub usize);

impl fmt::Write for CountingWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0 = self.0.saturating_add(s.len());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use core::fmt::Write;

    #[test]
    fn writes_until_full_then_errors() {
        let mut buf = [0u8; 8];
        let mut w = SliceWriter::new(&mut buf);
        write!(w, "abc{}", 12).unwrap();
        assert_eq!(w.len(), 5);
        assert!(write!(w, "toolong").is_err());
        assert_eq!(w.len(), 5, "a failed write leaves earlier output intact");
        assert_eq!(&buf[..5], b"abc12");
    }

    #[test]
    fn windows_cut_a_text_into_parts_that_join_up() {
        let text = "0123456789abcdefghij";
        for cap in 1..=text.len() + 1 {
            let mut joined = std::vec::Vec::new();
            let mut skip = 0;
            while skip < text.len() {
                let mut buf = std::vec![0u8; cap];
                let mut w = WindowWriter::new(&mut buf, skip);
                let _ = write!(w, "{}{}", &text[..7], &text[7..]);
                assert!(!w.is_empty(), "cap {cap} skip {skip}");
                let n = w.len();
                joined.extend_from_slice(&buf[..n]);
                skip += n;
            }
            assert_eq!(joined, text.as_bytes(), "cap {cap}");
        }
        let mut c = CountingWriter::default();
        write!(c, "{text}{}", 42).unwrap();
        assert_eq!(c.0, 22);
    }
}
