//! `produce`'s input: lines read on their own thread and turned into batches of messages.
//!
//! Reading happens on a plain thread with a blocking buffered reader: it is the fastest way to
//! split lines, it reads the next batch while the previous one is being sent, and a thread
//! blocked on a quiet stdin does not keep the process alive when sending fails.

use std::io::{self, BufRead, BufReader, Read};

use bytes::Bytes;
use omstream::oms::Message;
use serde_json::Value;
use tokio::sync::mpsc;

use super::args::InputFormat;

/// Why the input stopped early.
#[derive(Debug)]
pub(crate) enum InputError {
    /// A line is not a message (1-based line number, reason).
    BadLine {
        /// The line number, counting every line from 1.
        line: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// Reading the input failed.
    Read(io::Error),
}

/// What the reader thread sends: a batch of messages, or why it stopped.
pub(crate) type InputItem = Result<Vec<Message>, InputError>;

/// Turns one line into a message for `queue`, applying the flags' key, properties and partition
/// where the message does not set its own.
#[derive(Debug, Clone)]
pub(crate) struct LineParser {
    /// How lines are read.
    pub(crate) format: InputFormat,
    /// The queue every message goes to.
    pub(crate) queue: String,
    /// `--key`.
    pub(crate) key: Option<String>,
    /// `--property`, in order.
    pub(crate) properties: Vec<(String, String)>,
    /// `--partition`.
    pub(crate) partition: Option<i32>,
}

impl LineParser {
    /// The message of `line` (without its line ending); `None` for a blank line in JSON input,
    /// which is skipped so that hand-written files may use blank lines.
    pub(crate) fn parse(&self, line: &[u8]) -> Result<Option<Message>, String> {
        let mut message = match self.format {
            InputFormat::Lines => Message::new(self.queue.clone(), Bytes::copy_from_slice(line)),
            InputFormat::Json => {
                if line.iter().all(u8::is_ascii_whitespace) {
                    return Ok(None);
                }
                self.parse_json(line)?
            }
        };
        let ext = &mut message.extension_header;
        if ext.message_key.is_none() {
            ext.message_key.clone_from(&self.key);
        }
        if ext.partition.is_none() {
            ext.partition = self.partition;
        }
        for (k, v) in &self.properties {
            if !message.properties.contains_key(k) {
                message.properties.put(k.clone(), v);
            }
        }
        Ok(Some(message))
    }

    fn parse_json(&self, line: &[u8]) -> Result<Message, String> {
        // serde_json counts lines within the text; there is only one, so keep just the column.
        let mut value: Value = serde_json::from_slice(line)
            .map_err(|e| e.to_string().replace(" at line 1 column ", " at column "))?;
        let object = value
            .as_object_mut()
            .ok_or("a message must be a JSON object, like {\"data\":\"hello\"}")?;
        // `header.destination` is required by the message format, but a line may leave it out.
        // The queue on the command line wins over one the line names: it was checked to exist,
        // and `consume a | produce b` must copy to b, not back into a.
        let header = object
            .entry("header")
            .or_insert_with(|| Value::Object(Default::default()));
        if header.is_null() {
            *header = Value::Object(Default::default());
        }
        if let Some(header) = header.as_object_mut() {
            header.insert("destination".into(), Value::String(self.queue.clone()));
        }
        serde_json::from_value(value).map_err(|e| e.to_string())
    }
}

/// Strips a trailing `\n` or `\r\n`.
fn strip_line_ending(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Reads `source` line by line on a new thread and sends batches of at most `batch` messages.
///
/// A batch is also sent whenever the buffered input runs dry, so that a slow writer (`tail -f`)
/// gets its lines sent at once instead of waiting for a full batch. A bad line sends the
/// messages before it first, then the error, and stops.
pub(crate) fn spawn_reader(
    source: Box<dyn Read + Send>,
    parser: LineParser,
    batch: usize,
    tx: mpsc::Sender<InputItem>,
) {
    std::thread::spawn(move || {
        let mut reader = BufReader::with_capacity(1 << 16, source);
        let mut line = Vec::new();
        let mut messages = Vec::with_capacity(batch.min(4096));
        let mut number = 0u64;
        // The receiver is gone only when sending failed; its error is what gets reported.
        let flush = |messages: &mut Vec<Message>| {
            messages.is_empty() || tx.blocking_send(Ok(std::mem::take(messages))).is_ok()
        };
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if flush(&mut messages) {
                        let _ = tx.blocking_send(Err(InputError::Read(e)));
                    }
                    return;
                }
            }
            number += 1;
            match parser.parse(strip_line_ending(&line)) {
                Ok(Some(message)) => messages.push(message),
                Ok(None) => {}
                Err(reason) => {
                    if flush(&mut messages) {
                        let _ = tx.blocking_send(Err(InputError::BadLine {
                            line: number,
                            reason,
                        }));
                    }
                    return;
                }
            }
            if (messages.len() >= batch || reader.buffer().is_empty()) && !flush(&mut messages) {
                return;
            }
        }
        flush(&mut messages);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parser(format: InputFormat) -> LineParser {
        LineParser {
            format,
            queue: "q".into(),
            key: Some("k".into()),
            properties: vec![("source".into(), "cli".into())],
            partition: None,
        }
    }

    #[test]
    fn lines_take_the_flags() {
        let m = parser(InputFormat::Lines).parse(b"hello").unwrap().unwrap();
        assert_eq!(
            (m.destination(), &m.data[..], m.key()),
            ("q", &b"hello"[..], Some("k"))
        );
        assert_eq!(m.properties.get_str("source"), Some("cli"));
        let empty = parser(InputFormat::Lines).parse(b"").unwrap().unwrap();
        assert!(empty.data.is_empty());
    }

    #[test]
    fn json_messages_keep_their_own_settings() {
        let p = parser(InputFormat::Json);
        let m = p.parse(br#"{"data":"x"}"#).unwrap().unwrap();
        assert_eq!((m.destination(), m.key()), ("q", Some("k")));
        let m = p
            .parse(br#"{"header":{"destination":""},"extensionHeader":{"messageKey":"own","partition":2},"properties":{"source":"web"},"data":{"a":1}}"#)
            .unwrap()
            .unwrap();
        assert_eq!(
            (m.destination(), m.key(), m.partition()),
            ("q", Some("own"), Some(2))
        );
        assert_eq!(m.properties.get_str("source"), Some("web"));
        assert_eq!(&m.data[..], br#"{"a":1}"#);
        let m = p
            .parse(br#"{"header":{"destination":"other"}}"#)
            .unwrap()
            .unwrap();
        assert_eq!(m.destination(), "q");
        let m = p.parse(br#"{"header":null}"#).unwrap().unwrap();
        assert_eq!(m.destination(), "q");
        assert!(p.parse(b"   ").unwrap().is_none());
    }

    #[test]
    fn malformed_json_says_why() {
        let p = parser(InputFormat::Json);
        assert!(p.parse(b"{nope").unwrap_err().contains("at column 2"));
        assert!(p
            .parse(b"[1]")
            .unwrap_err()
            .contains("must be a JSON object"));
        assert!(p
            .parse(br#"{"header":{"qos":9}}"#)
            .unwrap_err()
            .contains("qos 9"));
    }

    #[test]
    fn line_endings_are_stripped() {
        assert_eq!(strip_line_ending(b"a\r\n"), b"a");
        assert_eq!(strip_line_ending(b"a\n"), b"a");
        assert_eq!(strip_line_ending(b"a"), b"a");
    }

    #[test]
    fn the_thread_sends_what_came_before_a_bad_line() {
        let (tx, mut rx) = mpsc::channel(8);
        let input = b"{\"data\":\"1\"}\n\n{\"data\":\"2\"}\nbad\n{\"data\":\"3\"}\n".to_vec();
        spawn_reader(
            Box::new(io::Cursor::new(input)),
            parser(InputFormat::Json),
            1,
            tx,
        );
        let mut bodies = Vec::new();
        let mut error = None;
        while let Some(item) = rx.blocking_recv() {
            match item {
                Ok(batch) => bodies.extend(batch.into_iter().map(|m| m.data)),
                Err(e) => error = Some(e),
            }
        }
        assert_eq!(bodies, vec![Bytes::from("1"), Bytes::from("2")]);
        assert!(
            matches!(error, Some(InputError::BadLine { line: 4, .. })),
            "{error:?}"
        );
    }
}
