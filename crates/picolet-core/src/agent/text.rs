//! Bounded text: the messages of reports and Events, and names built from parts, within
//! fixed-size strings.

use core::fmt;

use heapless::String;

/// Longest message of a report or an Event.
pub(super) const MESSAGE_MAX: usize = 256;

/// Formats into a bounded string, cutting at the capacity (messages may be long, never fatal).
pub(super) fn bounded<const N: usize>(args: fmt::Arguments<'_>) -> String<N> {
    struct Cut<'s, const N: usize>(&'s mut String<N>);
    impl<const N: usize> fmt::Write for Cut<'_, N> {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            for c in s.chars() {
                if self.0.push(c).is_err() {
                    return Err(fmt::Error);
                }
            }
            Ok(())
        }
    }
    let mut out = String::new();
    let _ = fmt::write(&mut Cut(&mut out), args);
    out
}

/// Formats a message for a report or an Event within `N` bytes. One that does not fit is cut
/// after its last whole word and ends with "…": a reader should see that something is missing,
/// not half a word. (A word longer than half the room is cut inside, so that most of the text
/// stays.)
pub(super) fn sentence<const N: usize>(args: fmt::Arguments<'_>) -> String<N> {
    struct Fill<'s, const N: usize> {
        out: &'s mut String<N>,
        full: bool,
    }
    impl<const N: usize> fmt::Write for Fill<'_, N> {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            if self.out.push_str(s).is_ok() {
                return Ok(());
            }
            for c in s.chars() {
                if self.out.push(c).is_err() {
                    self.full = true;
                    return Err(fmt::Error);
                }
            }
            Ok(())
        }
    }
    let mut out = String::new();
    let mut fill = Fill {
        out: &mut out,
        full: false,
    };
    let _ = fmt::write(&mut fill, args);
    if fill.full {
        shorten(&mut out);
    }
    out
}

/// Cuts `out` (text that overflowed) at a word boundary and appends an ellipsis.
fn shorten<const N: usize>(out: &mut String<N>) {
    const ELLIPSIS: &str = "…";
    let room = N.saturating_sub(ELLIPSIS.len());
    let mut end = room.min(out.len());
    while !out.is_char_boundary(end) {
        end -= 1;
    }
    let at_word_end = out[end..].starts_with(char::is_whitespace);
    let cut = if at_word_end {
        end
    } else {
        out[..end]
            .rfind(char::is_whitespace)
            .filter(|&i| i >= room / 2)
            .unwrap_or(end)
    };
    // Punctuation left dangling before the ellipsis reads as a typo.
    let kept = out[..cut]
        .trim_end_matches(|c: char| c.is_whitespace() || matches!(c, ',' | ';' | ':' | '(' | '\''))
        .len();
    out.truncate(kept);
    let _ = out.push_str(ELLIPSIS);
}
