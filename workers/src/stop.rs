//! Stop strings: text is released only once it cannot be the start of a stop
//! string, so a client never sees any part of one.

/// Applies a request's stop strings to generated text as it arrives.
#[derive(Debug)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Text received but not released: a suffix that may begin a stop string.
    held: String,
}

/// What [`StopMatcher::push`] found.
#[derive(Debug, PartialEq, Eq)]
pub struct Matched {
    /// Text safe to send.
    pub text: String,
    /// A stop string was hit; nothing after `text` may be sent.
    pub stopped: bool,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        StopMatcher {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
        }
    }

    pub fn push(&mut self, text: &str) -> Matched {
        self.held.push_str(text);
        // A stop string cannot begin in released text (that text would have been held),
        // so searching the held text alone finds every match.
        let first = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(at) = first {
            let text = self.held[..at].to_string();
            self.held.clear();
            return Matched {
                text,
                stopped: true,
            };
        }
        let keep = self
            .stops
            .iter()
            .map(|s| longest_partial_match(&self.held, s))
            .max()
            .unwrap_or(0);
        let text = self.held.drain(..self.held.len() - keep).collect();
        Matched {
            text,
            stopped: false,
        }
    }

    /// The held text, released because generation ended without a stop string.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

/// Length of the longest suffix of `text` that is a proper prefix of `stop`.
fn longest_partial_match(text: &str, stop: &str) -> usize {
    (1..stop.len())
        .rev()
        .find(|&n| stop.is_char_boundary(n) && text.ends_with(&stop[..n]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            let r = m.push(p);
            out.push_str(&r.text);
            if r.stopped {
                return (out, true);
            }
        }
        out.push_str(&m.flush());
        (out, false)
    }

    #[test]
    fn stops_across_pieces_without_leaking() {
        assert_eq!(
            run(&["END"], &["abc E", "N", "Dxyz"]),
            ("abc ".to_string(), true)
        );
        let mut m = StopMatcher::new(vec!["END".to_string()]);
        assert_eq!(m.push("abc EN").text, "abc ");
    }

    #[test]
    fn earliest_stop_wins() {
        assert_eq!(run(&["zz", "b"], &["abzz"]), ("a".to_string(), true));
    }

    #[test]
    fn partial_match_is_released_at_the_end() {
        assert_eq!(run(&["END"], &["abc EN"]), ("abc EN".to_string(), false));
        assert_eq!(run(&[], &["a", "b"]), ("ab".to_string(), false));
    }

    #[test]
    fn multibyte_stop_strings() {
        assert_eq!(run(&["日本"], &["x日", "本y"]), ("x".to_string(), true));
        assert_eq!(run(&["日本"], &["x日", "y"]), ("x日y".to_string(), false));
    }
}
