//! What the onboard LED (CYW43 GPIO 0) shows, so a board without a serial cable still tells
//! its state. Each pattern is a repeating sequence of on/off durations.

/// The states the LED distinguishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LedState {
    /// Joining Wi-Fi: fast blink (100 ms on, 100 ms off).
    JoiningWifi,
    /// Wi-Fi up, reaching the API server: slow blink (500 ms on, 500 ms off).
    Connecting,
    /// Registered and heartbeating: a short blink every 2 s.
    Ready,
    /// An error that needs attention (no credentials, TLS refused): three quick blinks, pause.
    Error,
    /// `test-blink`: a steady 1 Hz blink.
    BringUp,
}

/// One step of a pattern: LED on or off for `ms` milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// Whether the LED is lit.
    pub on: bool,
    /// How long, in milliseconds.
    pub ms: u32,
}

const fn s(on: bool, ms: u32) -> Step {
    Step { on, ms }
}

const JOINING_WIFI: [Step; 2] = [s(true, 100), s(false, 100)];
const CONNECTING: [Step; 2] = [s(true, 500), s(false, 500)];
const READY: [Step; 2] = [s(true, 50), s(false, 1950)];
const ERROR: [Step; 6] = [
    s(true, 100),
    s(false, 150),
    s(true, 100),
    s(false, 150),
    s(true, 100),
    s(false, 1400),
];
const BRING_UP: [Step; 2] = [s(true, 500), s(false, 500)];

impl LedState {
    /// The repeating pattern for this state.
    pub fn pattern(self) -> &'static [Step] {
        match self {
            Self::JoiningWifi => &JOINING_WIFI,
            Self::Connecting => &CONNECTING,
            Self::Ready => &READY,
            Self::Error => &ERROR,
            Self::BringUp => &BRING_UP,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_distinct_and_repeat_within_two_seconds() {
        let all = [
            LedState::JoiningWifi,
            LedState::Connecting,
            LedState::Ready,
            LedState::Error,
        ];
        for (i, a) in all.iter().enumerate() {
            let p = a.pattern();
            let period: u32 = p.iter().map(|s| s.ms).sum();
            assert!(
                period <= 2000 && p.iter().any(|s| s.on) && p.iter().any(|s| !s.on),
                "{a:?}"
            );
            for b in &all[i + 1..] {
                assert_ne!(p, b.pattern(), "{a:?} and {b:?} look the same");
            }
        }
    }
}
