//! JSON string escapes, decoded lazily.
//!
//! serde-json-core borrows a string value straight out of the raw JSON, escapes and all: a
//! ConfigMap value written as a YAML block scalar arrives as `0=1\n1=2\n` with a backslash and
//! an `n`. Decoding into a second buffer would cost as much RAM as the watch line itself, so
//! the decoders here read the escaped text once, one character at a time, and hold nothing but
//! a position (and, for [`UnescapedBytes`], the up-to-four bytes of the character being
//! returned).
//!
//! Every escape of RFC 8259 is decoded: `\" \\ \/ \b \f \n \r \t` and `\uXXXX`, including
//! surrogate pairs. A malformed escape (unknown letter, too few hex digits, a lone surrogate)
//! is an [`EscapeError`], never a panic.

use core::fmt;

/// Where an escaped JSON string stops being decodable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EscapeError {
    /// Offset of the offending backslash in the escaped text.
    pub raw_position: usize,
}

impl fmt::Display for EscapeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid JSON escape at byte {} of the escaped text",
            self.raw_position
        )
    }
}

/// The characters of an escaped JSON string's contents (the text between the quotes).
/// Yields one error at most, then ends.
#[derive(Clone, Debug)]
pub struct Unescape<'a> {
    raw: &'a str,
    pos: usize,
}

impl<'a> Unescape<'a> {
    /// Decodes `raw`, the contents of a JSON string as they appear in the document.
    #[must_use]
    pub fn new(raw: &'a str) -> Self {
        Self { raw, pos: 0 }
    }

    /// The text not decoded yet, as it appears in the document.
    #[must_use]
    pub fn rest(&self) -> &'a str {
        self.raw.get(self.pos..).unwrap_or("")
    }

    /// Four hex digits at `at`, as a number.
    fn hex4(&self, at: usize) -> Option<u32> {
        let digits = self.raw.as_bytes().get(at..at + 4)?;
        digits
            .iter()
            .try_fold(0u32, |n, &b| Some(n * 16 + char::from(b).to_digit(16)?))
    }

    /// Decodes the escape at `self.pos` (a backslash), returning the character and its length.
    fn escape(&self) -> Option<(char, usize)> {
        let b = self.raw.as_bytes();
        let simple = match b.get(self.pos + 1)? {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let first = self.hex4(self.pos + 2)?;
                return match first {
                    0xD800..=0xDBFF => {
                        // A high surrogate must be followed by an escaped low one.
                        let tail = b.get(self.pos + 6..self.pos + 8)?;
                        if tail != b"\\u" {
                            return None;
                        }
                        let second = self.hex4(self.pos + 8)?;
                        if !(0xDC00..=0xDFFF).contains(&second) {
                            return None;
                        }
                        let c = 0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00);
                        Some((char::from_u32(c)?, 12))
                    }
                    0xDC00..=0xDFFF => None,
                    _ => Some((char::from_u32(first)?, 6)),
                };
            }
            _ => return None,
        };
        Some((simple, 2))
    }
}

impl Iterator for Unescape<'_> {
    type Item = Result<char, EscapeError>;

    fn next(&mut self) -> Option<Self::Item> {
        let c = self.rest().chars().next()?;
        if c != '\\' {
            self.pos += c.len_utf8();
            return Some(Ok(c));
        }
        match self.escape() {
            Some((c, len)) => {
                self.pos += len;
                Some(Ok(c))
            }
            None => {
                let raw_position = self.pos;
                self.pos = self.raw.len();
                Some(Err(EscapeError { raw_position }))
            }
        }
    }
}

/// The UTF-8 bytes of a decoded JSON string, for byte-oriented grammars.
#[derive(Clone, Debug)]
pub struct UnescapedBytes<'a> {
    chars: Unescape<'a>,
    utf8: [u8; 4],
    at: u8,
    len: u8,
}

impl<'a> UnescapedBytes<'a> {
    /// Decodes `raw`, the contents of a JSON string as they appear in the document.
    #[must_use]
    pub fn new(raw: &'a str) -> Self {
        Self {
            chars: Unescape::new(raw),
            utf8: [0; 4],
            at: 0,
            len: 0,
        }
    }
}

impl Iterator for UnescapedBytes<'_> {
    type Item = Result<u8, EscapeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.at == self.len {
            match self.chars.next()? {
                Ok(c) => {
                    self.len = c.encode_utf8(&mut self.utf8).len() as u8;
                    self.at = 0;
                }
                Err(e) => return Some(Err(e)),
            }
        }
        let b = self.utf8[usize::from(self.at)];
        self.at += 1;
        Some(Ok(b))
    }
}

/// Displays an escaped JSON string decoded; text after a malformed escape is shown as it is
/// (a message is better shown raw than dropped).
#[derive(Clone, Copy, Debug)]
pub struct Unescaped<'a>(pub &'a str);

impl fmt::Display for Unescaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut chars = Unescape::new(self.0);
        for c in chars.by_ref() {
            match c {
                Ok(c) => fmt::Write::write_char(f, c)?,
                Err(e) => return f.write_str(self.0.get(e.raw_position..).unwrap_or("")),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::{String, ToString};
    use std::vec::Vec;

    fn decode(raw: &str) -> Result<String, EscapeError> {
        Unescape::new(raw).collect()
    }

    #[test]
    fn decodes_every_escape() {
        assert_eq!(
            decode(r#"a\"b\\c\/d\be\ff\ng\rh\ti"#).unwrap(),
            "a\"b\\c/d\u{8}e\u{c}f\ng\rh\ti"
        );
        assert_eq!(decode(r"\u0030=\u00e9\u20AC").unwrap(), "0=é€");
        assert_eq!(decode(r"\ud83d\ude00!").unwrap(), "😀!");
        assert_eq!(decode("plain é").unwrap(), "plain é");
        assert_eq!(decode("").unwrap(), "");
    }

    #[test]
    fn refuses_malformed_escapes_with_their_position() {
        for (raw, at) in [
            (r"ab\x", 2),
            (r"\u12", 0),
            (r"1\u12g4", 1),
            (r"\", 0),
            (r"x\ud83d", 1),
            (r"x\ud83d\n", 1),
            (r"\ud83d\u0041", 0),
            (r"\ude00", 0),
        ] {
            assert_eq!(decode(raw), Err(EscapeError { raw_position: at }), "{raw}");
        }
        // One error, then the end.
        let mut it = Unescape::new(r"\q\n");
        assert!(matches!(it.next(), Some(Err(_))));
        assert!(it.next().is_none());
    }

    #[test]
    fn bytes_are_the_utf8_of_the_decoded_text() {
        let bytes: Result<Vec<u8>, _> = UnescapedBytes::new(r"0=1\n\u00e9\ud83d\ude00").collect();
        assert_eq!(bytes.unwrap(), "0=1\né😀".as_bytes());
    }

    #[test]
    fn displays_decoded_and_keeps_a_malformed_tail() {
        assert_eq!(
            Unescaped(r#"configmaps \"pico-config\" is forbidden"#).to_string(),
            r#"configmaps "pico-config" is forbidden"#
        );
        assert_eq!(
            Unescaped(r"ok \n then \x bad").to_string(),
            "ok \n then \\x bad"
        );
    }
}
