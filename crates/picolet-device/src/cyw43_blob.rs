//! Facts read from the CYW43439 firmware blob, for the bring-up report.

/// The blob's version, e.g. `7.95.61 (abcd531 CY)`: the text after `Version: ` up to the next
/// `" CRC"` or NUL. `None` if the blob carries no such string (a wrong or truncated blob).
pub fn version(blob: &[u8]) -> Option<&str> {
    const KEY: &[u8] = b"Version: ";
    let start = blob.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let rest = &blob[start..blob.len().min(start + 64)];
    let end = rest
        .windows(4)
        .position(|w| w == b" CRC")
        .or_else(|| rest.iter().position(|&b| b == 0))
        .unwrap_or(rest.len());
    let v = core::str::from_utf8(&rest[..end]).ok()?.trim();
    (!v.is_empty() && v.bytes().all(|b| b.is_ascii_graphic() || b == b' ')).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_version_in_a_blob_like_string() {
        let blob = b"\x00\x01junk 43439a0-roml/sdio Version: 7.95.61 (abcd531 CY) CRC: 4528a809 Date: Wed\x00";
        assert_eq!(version(blob), Some("7.95.61 (abcd531 CY)"));
        assert_eq!(version(b"Version: 1.2\x00tail"), Some("1.2"));
        assert_eq!(version(b"no version here"), None);
        assert_eq!(version(b"Version: \xff\xfe CRC"), None);
    }
}
