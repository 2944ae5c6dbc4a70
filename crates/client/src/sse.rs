//! A parser for `text/event-stream` (server-sent events), the format the API follows a job's
//! live output in. It is fed the body in whatever pieces the network delivers and hands back
//! whole events; a piece may end anywhere, even inside a UTF-8 character or between `\r`
//! and `\n`.

/// One event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// `event:` (empty for the default `message`).
    pub event: String,
    /// `data:` lines joined with `\n`.
    pub data: String,
    /// `id:`, when the event set one.
    pub id: Option<String>,
}

/// The parser's state between pieces.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    event: String,
    data: Vec<String>,
    id: Option<String>,
    has_field: bool,
}

/// Lines longer than this (no newline in sight) are cut off; a server never sends them.
const MAX_LINE: usize = 8 << 20;

impl SseParser {
    /// Feed a piece of the body; returns the events it completed.
    pub fn push(&mut self, piece: &[u8]) -> Vec<SseEvent> {
        self.buf.extend_from_slice(piece);
        let mut out = Vec::new();
        loop {
            let Some(nl) = self.buf.iter().position(|&b| b == b'\n') else {
                if self.buf.len() > MAX_LINE {
                    self.buf.clear();
                }
                break;
            };
            let mut line: Vec<u8> = self.buf.drain(..=nl).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8_lossy(&line).into_owned();
            if let Some(ev) = self.line(&line) {
                out.push(ev);
            }
        }
        out
    }

    fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            if !self.has_field {
                return None;
            }
            self.has_field = false;
            return Some(SseEvent {
                event: std::mem::take(&mut self.event),
                data: std::mem::take(&mut self.data).join("\n"),
                id: self.id.take(),
            });
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = value.to_string(),
            "data" => self.data.push(value.to_string()),
            "id" => self.id = Some(value.to_string()),
            _ => return None,
        }
        self.has_field = true;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_anywhere_come_back_whole() {
        let body = b": keep-alive\n\nid: 6\ndata: a\ndata: b\n\nevent: end\r\ndata: {\"state\":\"succeeded\"}\r\n\r\n";
        for cut in 0..body.len() {
            let mut p = SseParser::default();
            let mut evs = p.push(&body[..cut]);
            evs.extend(p.push(&body[cut..]));
            assert_eq!(
                evs,
                vec![
                    SseEvent {
                        event: String::new(),
                        data: "a\nb".into(),
                        id: Some("6".into())
                    },
                    SseEvent {
                        event: "end".into(),
                        data: "{\"state\":\"succeeded\"}".into(),
                        id: None
                    }
                ],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn an_empty_data_line_keeps_a_trailing_newline() {
        let mut p = SseParser::default();
        let evs = p.push(b"data: x\ndata:\n\n");
        assert_eq!(evs[0].data, "x\n");
    }
}
