//! An incremental reader of `text/event-stream` bodies (the WHATWG server-sent events format),
//! fed whatever chunks the socket hands over.
//!
//! Only `data:` matters to the admin API, so this keeps the data lines of an event (joined by
//! `\n`, as the format says) and drops `event:`, `id:`, `retry:` and `:` comments. Lines end in
//! `\n`, `\r\n` or a lone `\r`, and any of them may be split across two chunks. The size cap
//! covers the event being assembled *and* the unfinished line, so a server that never sends a
//! newline cannot grow the buffer without bound either.

use std::collections::VecDeque;

/// The largest event this reader accepts, in bytes of data.
pub const MAX_EVENT_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    #[error("an event is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("an event is not UTF-8")]
    NotUtf8,
}

#[derive(Debug)]
pub struct SseParser {
    max_event_bytes: usize,
    /// The line being read, without its terminator.
    line: Vec<u8>,
    /// The data lines of the event being assembled, joined by `\n`.
    data: Vec<u8>,
    has_data: bool,
    /// The previous chunk ended in `\r`: a `\n` first in the next one ends no further line.
    after_cr: bool,
    ready: VecDeque<String>,
}

impl Default for SseParser {
    fn default() -> Self {
        SseParser::new(MAX_EVENT_BYTES)
    }
}

impl SseParser {
    pub fn new(max_event_bytes: usize) -> Self {
        SseParser {
            max_event_bytes,
            line: Vec::new(),
            data: Vec::new(),
            has_data: false,
            after_cr: false,
            ready: VecDeque::new(),
        }
    }

    /// Reads a chunk; complete events become available from [`SseParser::next_event`]. After an
    /// error the stream is out of step and should be dropped.
    pub fn push(&mut self, mut chunk: &[u8]) -> Result<(), SseError> {
        if self.after_cr && chunk.first() == Some(&b'\n') {
            chunk = &chunk[1..];
        }
        self.after_cr = false;
        while !chunk.is_empty() {
            match chunk.iter().position(|&b| b == b'\n' || b == b'\r') {
                None => {
                    self.line.extend_from_slice(chunk);
                    self.check_size()?;
                    return Ok(());
                }
                Some(end) => {
                    self.line.extend_from_slice(&chunk[..end]);
                    self.check_size()?;
                    let cr = chunk[end] == b'\r';
                    chunk = &chunk[end + 1..];
                    if cr {
                        match chunk.first() {
                            Some(b'\n') => chunk = &chunk[1..],
                            None => self.after_cr = true,
                            Some(_) => {}
                        }
                    }
                    self.end_line()?;
                }
            }
        }
        Ok(())
    }

    pub fn next_event(&mut self) -> Option<String> {
        self.ready.pop_front()
    }

    fn check_size(&self) -> Result<(), SseError> {
        // The unfinished line may still turn out to be a comment, but a line this long is not
        // one a sane server sends.
        if self.data.len() + self.line.len() > self.max_event_bytes {
            return Err(SseError::TooLarge {
                limit: self.max_event_bytes,
            });
        }
        Ok(())
    }

    fn end_line(&mut self) -> Result<(), SseError> {
        let line = std::mem::take(&mut self.line);
        if line.is_empty() {
            return self.dispatch();
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(0) => return Ok(()), // a comment
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (&line[..], &b""[..]),
        };
        if field == b"data" {
            if self.has_data {
                self.data.push(b'\n');
            }
            self.data.extend_from_slice(value);
            self.has_data = true;
        }
        Ok(())
    }

    fn dispatch(&mut self) -> Result<(), SseError> {
        if !std::mem::take(&mut self.has_data) {
            return Ok(());
        }
        let data = std::mem::take(&mut self.data);
        let event = String::from_utf8(data).map_err(|_| SseError::NotUtf8)?;
        self.ready.push_back(event);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(parser: &mut SseParser) -> Vec<String> {
        std::iter::from_fn(|| parser.next_event()).collect()
    }

    #[test]
    fn events_split_at_every_byte_read_the_same() {
        let stream = b": hello\r\nevent: frame\r\ndata: {\"a\":1}\r\n\r\ndata:x\ndata: y\n\nid: 3\n\ndata: z\r\r";
        let mut whole = SseParser::default();
        whole.push(stream).unwrap();
        let expected = events(&mut whole);
        assert_eq!(expected, vec![r#"{"a":1}"#, "x\ny", "z"]);
        for split in 0..=stream.len() {
            let mut parser = SseParser::default();
            parser.push(&stream[..split]).unwrap();
            parser.push(&stream[split..]).unwrap();
            assert_eq!(events(&mut parser), expected, "split at {split}");
        }
        let mut bytewise = SseParser::default();
        for byte in stream {
            bytewise.push(std::slice::from_ref(byte)).unwrap();
        }
        assert_eq!(events(&mut bytewise), expected);
    }

    #[test]
    fn an_unfinished_event_waits_for_its_blank_line() {
        let mut parser = SseParser::default();
        parser.push(b"data: {\"dropped\":").unwrap();
        assert_eq!(parser.next_event(), None);
        parser.push(b" 4}\n").unwrap();
        assert_eq!(parser.next_event(), None);
        parser.push(b"\n").unwrap();
        assert_eq!(parser.next_event().as_deref(), Some(r#"{"dropped": 4}"#));
    }

    #[test]
    fn oversized_events_are_refused() {
        let mut parser = SseParser::new(16);
        parser.push(b"data: 0123456789\n\n").unwrap();
        assert_eq!(parser.next_event().as_deref(), Some("0123456789"));
        // Many small data lines add up to one event.
        let err = parser
            .push(b"data: 0123456789\ndata: 0123456789\n")
            .unwrap_err();
        assert_eq!(err, SseError::TooLarge { limit: 16 });
        // A line that never ends is refused before it is complete.
        let mut parser = SseParser::new(16);
        parser.push(b"data: 01234").unwrap();
        assert!(parser.push(b"56789abcdef").is_err());
    }

    #[test]
    fn the_default_cap_is_one_mebibyte() {
        let mut parser = SseParser::default();
        let mut big = b"data: ".to_vec();
        big.resize(MAX_EVENT_BYTES + 100, b'x');
        assert!(matches!(
            parser.push(&big),
            Err(SseError::TooLarge { limit }) if limit == 1 << 20
        ));
    }

    #[test]
    fn invalid_utf8_is_an_error() {
        let mut parser = SseParser::default();
        assert_eq!(parser.push(b"data: \xff\n\n"), Err(SseError::NotUtf8));
    }
}
