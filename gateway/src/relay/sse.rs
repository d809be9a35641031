//! Server-sent events as they arrive: frames cut anywhere (a TCP read may end
//! mid-event) become whole events, each ending with its blank line, so the
//! relay only ever forwards, or learns from, an event the client can read.

use bytes::{Bytes, BytesMut};

/// Bytes of an unfinished event past this mean the upstream is not sending
/// SSE (or is hostile): the stream is treated as broken.
pub const MAX_EVENT_BYTES: usize = 4 << 20;

#[derive(Debug, Default)]
pub struct Events {
    /// The start of an event whose end has not arrived.
    partial: BytesMut,
    /// Where in `partial` its last, unfinished line starts: the lines before
    /// it were read already, so each byte is scanned once.
    resume: usize,
}

#[derive(Debug, PartialEq, Eq)]
pub struct TooLong;

impl Events {
    /// The whole events `data` completes, in order. Without a partial event
    /// pending, they are slices of `data` itself.
    pub fn push(&mut self, data: Bytes) -> Result<Vec<Bytes>, TooLong> {
        let mut events = Vec::new();
        if self.partial.is_empty() {
            let mut rest = data;
            loop {
                match event_end(&rest, 0) {
                    Ok(end) => events.push(rest.split_to(end)),
                    Err(line) => {
                        self.resume = line;
                        break;
                    }
                }
            }
            self.partial.extend_from_slice(&rest);
        } else {
            self.partial.extend_from_slice(&data);
            loop {
                match event_end(&self.partial, self.resume) {
                    Ok(end) => {
                        events.push(self.partial.split_to(end).freeze());
                        self.resume = 0;
                    }
                    Err(line) => {
                        self.resume = line;
                        break;
                    }
                }
            }
        }
        if self.partial.len() > MAX_EVENT_BYTES {
            return Err(TooLong);
        }
        Ok(events)
    }

    /// Whether an unfinished event is pending.
    pub fn is_mid_event(&self) -> bool {
        !self.partial.is_empty()
    }
}

/// Where the first event of `data` ends, past its blank line, scanning from
/// `from` (the start of a line): lines end in `\n` or `\r\n`, and an empty
/// line ends an event. Without an end, where the last line starts.
fn event_end(data: &[u8], from: usize) -> Result<usize, usize> {
    let mut line_start = from;
    for (i, &b) in data.iter().enumerate().skip(from) {
        if b != b'\n' {
            continue;
        }
        let line = &data[line_start..i];
        if line.is_empty() || line == b"\r" {
            return Ok(i + 1);
        }
        line_start = i + 1;
    }
    Err(line_start)
}

/// An event's lines, without their line ends.
pub fn lines(event: &[u8]) -> impl Iterator<Item = &[u8]> {
    event
        .split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .filter(|line| !line.is_empty())
}

/// An event's data: its `data:` lines, joined by newlines as SSE says.
pub fn data(event: &[u8]) -> Option<std::borrow::Cow<'_, [u8]>> {
    let mut parts = lines(event).filter_map(|line| {
        let value = line.strip_prefix(b"data:")?;
        Some(value.strip_prefix(b" ").unwrap_or(value))
    });
    let first = parts.next()?;
    match parts.next() {
        None => Some(first.into()),
        Some(second) => {
            let mut joined = [first, b"\n", second].concat();
            for part in parts {
                joined.push(b'\n');
                joined.extend_from_slice(part);
            }
            Some(joined.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str =
        "data: {\"a\":1}\n\n: tokens 3 4\ndata: {\"b\":2}\n\r\ndata: [DONE]\r\n\r\n";

    #[test]
    fn events_come_whole_however_the_bytes_are_cut() {
        let whole = {
            let mut e = Events::default();
            e.push(Bytes::from(STREAM)).unwrap()
        };
        assert_eq!(whole.len(), 3);
        assert_eq!(whole.concat(), STREAM.as_bytes());
        for cut in 0..STREAM.len() {
            let mut e = Events::default();
            let mut got = e.push(Bytes::from(&STREAM[..cut])).unwrap();
            got.extend(e.push(Bytes::from(&STREAM[cut..])).unwrap());
            assert_eq!(got, whole, "cut at {cut}");
            assert!(!e.is_mid_event());
        }
    }

    #[test]
    fn data_lines_are_read_as_sse_says() {
        assert_eq!(data(b"data: x\n\n").as_deref(), Some(&b"x"[..]));
        assert_eq!(data(b"data:x\r\n\r\n").as_deref(), Some(&b"x"[..]));
        assert_eq!(
            data(b": c\ndata: a\ndata: b\n\n").as_deref(),
            Some(&b"a\nb"[..])
        );
        assert_eq!(data(b": only a comment\n\n"), None);
    }

    #[test]
    fn an_event_dribbled_byte_by_byte_comes_whole() {
        let mut e = Events::default();
        let mut got = Vec::new();
        for b in STREAM.bytes() {
            got.extend(e.push(Bytes::from(vec![b])).unwrap());
        }
        assert_eq!(got.concat(), STREAM.as_bytes());
        assert_eq!(got.len(), 3);
    }

    #[test]
    fn an_endless_event_is_refused() {
        let mut e = Events::default();
        let chunk = Bytes::from(vec![b'x'; 1 << 20]);
        let mut result = Ok(Vec::new());
        for _ in 0..5 {
            result = e.push(chunk.clone());
        }
        assert_eq!(result, Err(TooLong));
    }
}
