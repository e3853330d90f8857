//! The 1 KB memory region and the `data.memory_values` grammar that fills it.
//!
//! Grammar: `OFFSET=VALUE` entries separated by a comma or a line break. Each number is decimal
//! (`42`) or hex with a `0x`/`0X` prefix (`0x2A`); offsets are 0–1023, values 0–255. Spaces,
//! tabs, CR and LF are allowed around numbers, `=` and `,`, so a YAML block scalar with one
//! entry per line works, with or without commas at the line ends.
//! An empty (or all-whitespace) string is valid and sets nothing: every byte becomes 0.
//!
//! ConfigMap values arrive JSON-encoded, and serde-json-core hands them out with their escapes
//! (`0=1\n1=2` with a backslash). [`parse_memory_values_json`] decodes the escapes as it reads
//! (no second buffer) and the grammar sees the decoded text; [`parse_memory_values`] takes text
//! that is already decoded.
//!
//! Semantics (chosen here, documented in the README):
//! - **Declarative**: the ConfigMap describes the whole region. Offsets not listed are 0, so the
//!   same ConfigMap always yields the same bytes and the same checksum.
//! - **Duplicate offsets are an error**: `1=2,1=3` has no single obvious meaning, so the update
//!   is rejected rather than guessing "last wins".
//! - **Empty entries are errors** (`1=2,,3=4` or a trailing comma): they are usually typos.
//! - Anything else (non-ASCII bytes, also when they came from a `\u` escape; malformed escapes,
//!   signs, overflow) is rejected with the byte position in the decoded text, and the region
//!   keeps its old contents: parsing finishes before anything is written.

use core::fmt;

use crate::json_string::UnescapedBytes;

/// Size of the region in bytes: offsets run from 0 to `REGION_SIZE - 1`.
pub const REGION_SIZE: usize = 1024;

/// Why a `memory_values` string was rejected. Positions are byte offsets into the (decoded)
/// string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValuesError {
    /// A byte that cannot appear at that point of the grammar.
    Unexpected {
        /// Where it is.
        position: usize,
        /// The byte found.
        byte: u8,
        /// What the grammar wanted there.
        expected: &'static str,
    },
    /// The string ended in the middle of an entry.
    UnexpectedEnd {
        /// What the grammar wanted next.
        expected: &'static str,
    },
    /// An entry with nothing in it (`,,` or a trailing comma).
    EmptyEntry {
        /// Where the empty entry starts.
        position: usize,
    },
    /// An offset outside 0–1023 (saturates at `u32::MAX` for huge numbers).
    OffsetOutOfRange {
        /// Where the number starts.
        position: usize,
        /// The offset given.
        offset: u32,
    },
    /// A value outside 0–255.
    ValueOutOfRange {
        /// Where the number starts.
        position: usize,
        /// The value given.
        value: u32,
    },
    /// The same offset appears twice.
    DuplicateOffset {
        /// Where the second entry starts.
        position: usize,
        /// The repeated offset.
        offset: u16,
    },
    /// A JSON escape that does not decode (unknown letter, short `\u`, lone surrogate); only
    /// from [`parse_memory_values_json`].
    InvalidEscape {
        /// Where its text would start in the decoded string.
        position: usize,
    },
}

impl fmt::Display for ValuesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Unexpected {
                position,
                byte,
                expected,
            } if byte.is_ascii_graphic() || byte == b' ' => {
                write!(
                    f,
                    "unexpected '{}' at byte {position}, expected {expected}",
                    byte as char
                )
            }
            Self::Unexpected {
                position,
                byte,
                expected,
            } => {
                write!(
                    f,
                    "unexpected byte 0x{byte:02x} at byte {position}, expected {expected}"
                )
            }
            Self::UnexpectedEnd { expected } => {
                write!(f, "unexpected end of input, expected {expected}")
            }
            Self::EmptyEntry { position } => write!(f, "empty entry at byte {position}"),
            Self::OffsetOutOfRange { position, offset } => write!(
                f,
                "offset {offset} at byte {position} is outside the region (0-{})",
                REGION_SIZE - 1
            ),
            Self::ValueOutOfRange { position, value } => {
                write!(
                    f,
                    "value {value} at byte {position} does not fit in a byte (0-255)"
                )
            }
            Self::DuplicateOffset { position, offset } => {
                write!(f, "offset {offset} at byte {position} is set twice")
            }
            Self::InvalidEscape { position } => {
                write!(f, "invalid JSON escape at byte {position}")
            }
        }
    }
}

/// A fully validated region image: what the region will hold once applied.
#[derive(Clone, PartialEq, Eq)]
pub struct MemoryImage {
    /// The bytes of the region.
    pub bytes: [u8; REGION_SIZE],
    /// How many entries the string had.
    pub entries: u16,
}

impl fmt::Debug for MemoryImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "MemoryImage {{ entries: {}, crc32: {:08x} }}",
            self.entries,
            checksum(&self.bytes)
        )
    }
}

/// Parses and validates a whole `memory_values` string (already decoded text). Memory use is
/// fixed (one image and a 128-byte bitmap) whatever the input's length, and the input is read
/// once.
pub fn parse_memory_values(input: &[u8]) -> Result<MemoryImage, ValuesError> {
    parse(Cursor::new(input.iter().map(|&b| Ok(b))))
}

/// Parses `memory_values` as it appears inside a JSON document (the contents of the string,
/// escapes kept, as serde-json-core borrows it), decoding the escapes while reading: no copy
/// of the decoded text is made. Positions in errors count the decoded text.
pub fn parse_memory_values_json(escaped: &str) -> Result<MemoryImage, ValuesError> {
    parse(Cursor::new(UnescapedBytes::new(escaped)))
}

fn parse<I: Iterator<Item = Result<u8, crate::json_string::EscapeError>>>(
    mut cur: Cursor<I>,
) -> Result<MemoryImage, ValuesError> {
    let mut image = MemoryImage {
        bytes: [0; REGION_SIZE],
        entries: 0,
    };
    let mut seen = [0u32; REGION_SIZE / 32];
    cur.skip_ws()?;
    if cur.peek()?.is_none() {
        return Ok(image);
    }
    loop {
        cur.skip_ws()?;
        if matches!(cur.peek()?, Some(b',') | None) {
            return Err(ValuesError::EmptyEntry { position: cur.pos });
        }
        let offset_pos = cur.pos;
        let offset = cur.number("an offset")?;
        if offset as usize >= REGION_SIZE {
            return Err(ValuesError::OffsetOutOfRange {
                position: offset_pos,
                offset,
            });
        }
        cur.skip_ws()?;
        cur.expect(b'=', "'='")?;
        cur.skip_ws()?;
        let value_pos = cur.pos;
        let value = cur.number("a value")?;
        let byte = u8::try_from(value).map_err(|_| ValuesError::ValueOutOfRange {
            position: value_pos,
            value,
        })?;
        let (word, bit) = (offset as usize / 32, 1u32 << (offset % 32));
        if seen[word] & bit != 0 {
            return Err(ValuesError::DuplicateOffset {
                position: offset_pos,
                offset: offset as u16,
            });
        }
        seen[word] |= bit;
        image.bytes[offset as usize] = byte;
        // At most REGION_SIZE distinct offsets exist, so this cannot overflow.
        image.entries += 1;
        // A comma or a line break ends the entry (a comma after the line break is the same
        // separator, not an empty entry).
        let mut line_break = false;
        while let Some(b) = cur.peek()?.filter(u8::is_ascii_whitespace) {
            line_break |= b == b'\n' || b == b'\r';
            cur.bump();
        }
        match cur.peek()? {
            None => return Ok(image),
            Some(b',') => cur.bump(),
            Some(_) if line_break => {}
            Some(byte) => {
                return Err(ValuesError::Unexpected {
                    position: cur.pos,
                    byte,
                    expected: "',', a line break or end",
                });
            }
        }
    }
}

/// The grammar's reader: one byte of lookahead over any byte source, so that decoded JSON
/// is read as it is decoded.
struct Cursor<I> {
    src: I,
    /// The byte at `pos` (`None` at the end), or the decoding error found there.
    cur: Result<Option<u8>, ValuesError>,
    pos: usize,
}

impl<I: Iterator<Item = Result<u8, crate::json_string::EscapeError>>> Cursor<I> {
    fn new(src: I) -> Self {
        let mut cur = Self {
            src,
            cur: Ok(None),
            pos: 0,
        };
        cur.cur = cur.read();
        cur
    }

    fn read(&mut self) -> Result<Option<u8>, ValuesError> {
        self.src
            .next()
            .transpose()
            .map_err(|_| ValuesError::InvalidEscape { position: self.pos })
    }

    fn peek(&self) -> Result<Option<u8>, ValuesError> {
        self.cur
    }

    /// Moves past the current byte (only called after `peek` returned one).
    fn bump(&mut self) {
        self.pos += 1;
        self.cur = self.read();
    }

    fn skip_ws(&mut self) -> Result<(), ValuesError> {
        while matches!(self.peek()?, Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.bump();
        }
        Ok(())
    }

    fn expect(&mut self, want: u8, expected: &'static str) -> Result<(), ValuesError> {
        match self.peek()? {
            Some(b) if b == want => {
                self.bump();
                Ok(())
            }
            Some(byte) => Err(ValuesError::Unexpected {
                position: self.pos,
                byte,
                expected,
            }),
            None => Err(ValuesError::UnexpectedEnd { expected }),
        }
    }

    /// Decimal or `0x`/`0X` hex; saturates at `u32::MAX` so that range errors report a number.
    fn number(&mut self, what: &'static str) -> Result<u32, ValuesError> {
        let mut radix = 10;
        let mut digits = 0usize;
        if self.peek()? == Some(b'0') {
            self.bump();
            digits = 1;
            if matches!(self.peek()?, Some(b'x' | b'X')) {
                self.bump();
                radix = 16;
                digits = 0;
            }
        }
        let mut n: u32 = 0;
        while let Some(d) = self.peek()?.and_then(|b| char::from(b).to_digit(radix)) {
            n = n.saturating_mul(radix).saturating_add(d);
            digits += 1;
            self.bump();
        }
        if digits == 0 {
            let expected = if radix == 16 {
                "hex digits after 0x"
            } else {
                what
            };
            return match self.peek()? {
                Some(byte) => Err(ValuesError::Unexpected {
                    position: self.pos,
                    byte,
                    expected,
                }),
                None => Err(ValuesError::UnexpectedEnd { expected }),
            };
        }
        Ok(n)
    }
}

const CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

/// CRC-32 (IEEE, as in zlib and `crc32` tools) of the region: the figure the Node annotation,
/// `/metrics` and `/memory` report, so a user can check a device against a ConfigMap.
pub fn checksum(bytes: &[u8; REGION_SIZE]) -> u32 {
    CRC32.checksum(bytes)
}

/// The live region. Writes only ever happen as a whole validated [`MemoryImage`].
pub struct MemoryRegion<'r> {
    bytes: &'r mut [u8; REGION_SIZE],
}

impl<'r> MemoryRegion<'r> {
    /// Wraps the storage the platform provides (a linker-placed static on the Pico).
    pub fn new(bytes: &'r mut [u8; REGION_SIZE]) -> Self {
        Self { bytes }
    }

    /// Replaces the whole region with a validated image.
    pub fn apply(&mut self, image: &MemoryImage) {
        self.bytes.copy_from_slice(&image.bytes);
    }

    /// The current contents.
    pub fn bytes(&self) -> &[u8; REGION_SIZE] {
        self.bytes
    }

    /// CRC-32 of the current contents.
    pub fn checksum(&self) -> u32 {
        checksum(self.bytes)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::ToString;

    fn ok(s: &str) -> MemoryImage {
        parse_memory_values(s.as_bytes()).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn err(s: &[u8]) -> ValuesError {
        parse_memory_values(s).expect_err("should be rejected")
    }

    #[test]
    fn parses_the_design_example() {
        let img = ok("0=0x42,1=0x43,2=0xFF");
        assert_eq!(&img.bytes[..4], &[0x42, 0x43, 0xff, 0]);
        assert_eq!(img.entries, 3);
        assert!(img.bytes[3..].iter().all(|&b| b == 0));
    }

    #[test]
    fn accepts_decimal_hex_whitespace_and_the_edges() {
        let img = ok(" 1023 = 255 ,\n0X0a=0xfF,\t7=007 ");
        assert_eq!(img.bytes[1023], 255);
        assert_eq!(img.bytes[10], 0xff);
        assert_eq!(img.bytes[7], 7);
        assert_eq!(ok("").entries, 0);
        assert_eq!(ok("  \n ").entries, 0);
    }

    #[test]
    fn rejects_bad_input_with_positions() {
        assert_eq!(
            err(b"1024=1"),
            ValuesError::OffsetOutOfRange {
                position: 0,
                offset: 1024
            }
        );
        assert_eq!(
            err(b"1=256"),
            ValuesError::ValueOutOfRange {
                position: 2,
                value: 256
            }
        );
        assert_eq!(
            err(b"1=1,2=2,1=3"),
            ValuesError::DuplicateOffset {
                position: 8,
                offset: 1
            }
        );
        assert_eq!(err(b"1=1,,2=2"), ValuesError::EmptyEntry { position: 4 });
        assert_eq!(err(b"1=1,"), ValuesError::EmptyEntry { position: 4 });
        assert_eq!(err(b"1"), ValuesError::UnexpectedEnd { expected: "'='" });
        assert_eq!(
            err(b"1="),
            ValuesError::UnexpectedEnd {
                expected: "a value"
            }
        );
        assert_eq!(
            err(b"0x=1"),
            ValuesError::Unexpected {
                position: 2,
                byte: b'=',
                expected: "hex digits after 0x"
            }
        );
        assert_eq!(
            err(b"-1=2"),
            ValuesError::Unexpected {
                position: 0,
                byte: b'-',
                expected: "an offset"
            }
        );
        assert_eq!(
            err(b"1=2 3=4"),
            ValuesError::Unexpected {
                position: 4,
                byte: b'3',
                expected: "',', a line break or end"
            }
        );
        assert_eq!(
            err(b"1=\xff"),
            ValuesError::Unexpected {
                position: 2,
                byte: 0xff,
                expected: "a value"
            }
        );
        assert_eq!(
            err(b"\\u0031=1"),
            ValuesError::Unexpected {
                position: 0,
                byte: b'\\',
                expected: "an offset"
            }
        );
        assert_eq!(
            err(b"99999999999999999999=1"),
            ValuesError::OffsetOutOfRange {
                position: 0,
                offset: u32::MAX
            }
        );
    }

    fn ok_json(s: &str) -> MemoryImage {
        parse_memory_values_json(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    #[test]
    fn json_escapes_are_decoded_before_the_grammar() {
        // As the API server sends `memory_values: |` (YAML block scalar), and friends.
        assert_eq!(
            &ok_json(r"0=0x42,\n1=0x43,\n2=0XFF\n").bytes[..4],
            &[0x42, 0x43, 0xff, 0]
        );
        assert_eq!(ok_json(r"0=9\n").bytes[0], 9);
        assert_eq!(&ok_json(r"0=1,\t1=2").bytes[..2], &[1, 2]);
        assert_eq!(ok_json(r"0=1\r").bytes[0], 1);
        assert_eq!(
            &ok_json(r"\r\n 0 = 1 ,\r\n1=\u0032\r\n").bytes[..2],
            &[1, 2]
        );
        assert_eq!(ok_json(r"\u0031\u0030=0x\u0046f").bytes[10], 0xff);
        assert_eq!(ok_json("").entries, 0);
        assert_eq!(ok_json(r"\n\t").entries, 0);
        assert_eq!(ok_json(r"0=1").entries, 1);
        // Plain text decodes to itself.
        assert_eq!(
            ok_json("0=0x42,1=0x43").bytes[..2],
            ok("0=0x42,1=0x43").bytes[..2]
        );
    }

    #[test]
    fn json_errors_count_decoded_bytes_and_keep_refusing_non_ascii() {
        let e = |s: &str| parse_memory_values_json(s).expect_err("should be rejected");
        let e_ok = |s: &str| parse_memory_values_json(s).expect("should be accepted");
        // "0=1,\n5000=1": the offset starts at byte 5 of the decoded text (6 escaped).
        assert_eq!(
            e(r"0=1,\n5000=1"),
            ValuesError::OffsetOutOfRange {
                position: 5,
                offset: 5000
            }
        );
        assert_eq!(
            e(r"0=\u00e9"),
            ValuesError::Unexpected {
                position: 2,
                byte: 0xc3,
                expected: "a value"
            }
        );
        assert_eq!(
            e("0=é"),
            ValuesError::Unexpected {
                position: 2,
                byte: 0xc3,
                expected: "a value"
            }
        );
        assert_eq!(
            e(r"0=\\"),
            ValuesError::Unexpected {
                position: 2,
                byte: b'\\',
                expected: "a value"
            }
        );
        assert_eq!(e(r"0=1,\q"), ValuesError::InvalidEscape { position: 4 });
        assert_eq!(e(r"0=1\ud800"), ValuesError::InvalidEscape { position: 3 });
        assert_eq!(e(r"0=1\ud800").to_string(), "invalid JSON escape at byte 3");
        assert_eq!(e(r"1=1\n,\n"), ValuesError::EmptyEntry { position: 6 });
        // A line break separates entries as a comma does: a YAML block scalar needs no commas.
        let image = e_ok(r"0=1\n1=2\r\n 2 = 3 \n");
        assert_eq!((image.entries, &image.bytes[..3]), (3, &[1, 2, 3][..]));
        let image = e_ok(r"0=1,\n1=2\n,2=3");
        assert_eq!((image.entries, &image.bytes[..3]), (3, &[1, 2, 3][..]));
        assert_eq!(
            e(r"0=1 1=2"),
            ValuesError::Unexpected {
                position: 4,
                byte: b'1',
                expected: "',', a line break or end"
            }
        );
    }

    #[test]
    fn error_messages_are_readable() {
        assert_eq!(
            err(b"1=256").to_string(),
            "value 256 at byte 2 does not fit in a byte (0-255)"
        );
        assert_eq!(
            err(b"5=1,5=2").to_string(),
            "offset 5 at byte 4 is set twice"
        );
        assert_eq!(
            err(b"1=\xff").to_string(),
            "unexpected byte 0xff at byte 2, expected a value"
        );
    }

    #[test]
    fn hostile_sizes_are_handled_in_fixed_memory() {
        // Every offset once: the largest valid input.
        let mut all = std::string::String::new();
        for i in 0..REGION_SIZE {
            if i > 0 {
                all.push(',');
            }
            all.push_str(&std::format!("{i}=0x{:02x}", i % 256));
        }
        let img = ok(&all);
        assert_eq!(img.entries as usize, REGION_SIZE);
        // One entry more must repeat an offset.
        all.push_str(",0=1");
        assert!(matches!(
            err(all.as_bytes()),
            ValuesError::DuplicateOffset { offset: 0, .. }
        ));
        // A megabyte of digits saturates instead of overflowing.
        let huge = std::vec![b'9'; 1 << 20];
        assert!(matches!(err(&huge), ValuesError::OffsetOutOfRange { .. }));
    }

    #[test]
    fn region_applies_whole_images_and_checksums_like_zlib() {
        let mut storage = [0xEEu8; REGION_SIZE];
        let mut region = MemoryRegion::new(&mut storage);
        region.apply(&ok("0=0x42"));
        assert_eq!(region.bytes()[0], 0x42);
        assert!(
            region.bytes()[1..].iter().all(|&b| b == 0),
            "unlisted offsets are zero"
        );
        // zlib.crc32(bytes(1024)) == 0xefb5af2e
        assert_eq!(checksum(&[0; REGION_SIZE]), 0xefb5_af2e);
    }
}
