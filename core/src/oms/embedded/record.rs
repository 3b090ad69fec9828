//! The on-disk record format of a partition segment.
//!
//! ```text
//! u32 len      bytes after the crc field (so a record is 8 + len bytes)
//! u32 crc      CRC-32 of those bytes
//! u64 offset   the record's offset in the partition (for a roll marker: the next segment's base)
//! i64 stored   store timestamp, ms since the epoch, non-decreasing in a partition
//! u8  kind     0 = message, 1 = roll marker (the segment ends; continue in the next one);
//!              bit 7 set: the last record of its batch (roll markers are batches of their own)
//! ... payload  for a message, see `encode_payload`
//! ```
//! All integers are little-endian. The CRC covers the offset and timestamp too, so a record whose
//! header was written but whose body was torn is detected.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::oms::{ExtensionHeader, Header, KeyValue, Message, Qos, MESSAGE_VERSION};

/// Bytes before the payload.
pub(crate) const HEADER_LEN: usize = 25;
/// A message record.
pub(crate) const KIND_MESSAGE: u8 = 0;
/// The end of a segment: the next record is at the start of segment `offset`.
pub(crate) const KIND_ROLL: u8 = 1;
/// Flag in the kind byte: the last record of a batch.
pub(crate) const LAST_IN_BATCH: u8 = 0x80;

const F_MESSAGE_ID: u16 = 1;
const F_BORN_HOST: u16 = 1 << 1;
const F_QOS: u16 = 1 << 2;
const F_COMPRESSION: u16 = 1 << 3;
const F_KEY: u16 = 1 << 4;
const F_CORRELATION: u16 = 1 << 5;
const F_TRANSACTION: u16 = 1 << 6;
const F_DELAY: u16 = 1 << 7;
const F_EXPIRE: u16 = 1 << 8;
const F_TRACE: u16 = 1 << 9;
const F_PRIORITY: u16 = 1 << 10;
const F_PROPERTIES: u16 = 1 << 11;
const F_KNOWN: u16 = (1 << 12) - 1;

/// The fixed part of a record, as read from disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordHeader {
    /// Total record length, prefix included.
    pub(crate) total_len: usize,
    pub(crate) crc: u32,
    pub(crate) offset: i64,
    pub(crate) stored: i64,
    pub(crate) kind: u8,
    /// Whether this record ends its batch: a batch is served (and kept after a crash) only
    /// whole, up to and including such a record.
    pub(crate) ends_batch: bool,
}

/// What a byte slice at a record boundary holds.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// A whole, valid record.
    Record(RecordHeader),
    /// Not enough bytes yet for the record (or its header).
    Incomplete,
    /// Bytes that are not a valid record: a bad length or a CRC mismatch.
    Invalid(&'static str),
}

/// Parses the record that starts at `buf[0]`, checking its CRC when `verify` is set.
pub(crate) fn parse(buf: &[u8], max_record: usize, verify: bool) -> Parsed {
    if buf.len() < 8 {
        return Parsed::Incomplete;
    }
    let len = u32::from_le_bytes(buf[0..4].try_into().unwrap_or_default()) as usize;
    if len < HEADER_LEN - 8 || len > max_record {
        return Parsed::Invalid("impossible record length");
    }
    let total_len = 8 + len;
    if buf.len() < total_len {
        return Parsed::Incomplete;
    }
    let crc = u32::from_le_bytes(buf[4..8].try_into().unwrap_or_default());
    if verify && crc32fast::hash(&buf[8..total_len]) != crc {
        return Parsed::Invalid("checksum mismatch");
    }
    let kind = buf[24] & !LAST_IN_BATCH;
    if kind != KIND_MESSAGE && kind != KIND_ROLL {
        return Parsed::Invalid("unknown record kind");
    }
    Parsed::Record(RecordHeader {
        total_len,
        crc,
        offset: i64::from_le_bytes(buf[8..16].try_into().unwrap_or_default()),
        stored: i64::from_le_bytes(buf[16..24].try_into().unwrap_or_default()),
        kind,
        ends_batch: kind == KIND_ROLL || buf[24] & LAST_IN_BATCH != 0,
    })
}

/// Records encoded outside the partition lock; offsets, timestamps and CRCs are filled in under
/// it by [`EncodedBatch::seal`].
#[derive(Debug, Default)]
pub(crate) struct EncodedBatch {
    pub(crate) buf: Vec<u8>,
    pub(crate) starts: Vec<usize>,
}

impl EncodedBatch {
    /// An empty batch with room for `records` records of `bytes` bytes in all.
    pub(crate) fn with_capacity(bytes: usize, records: usize) -> Self {
        Self {
            buf: Vec::with_capacity(bytes),
            starts: Vec::with_capacity(records),
        }
    }

    /// Appends `message` as a message record with placeholders for offset, time and CRC.
    pub(crate) fn push_message(&mut self, message: &Message, explicit_id: bool) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0u8; HEADER_LEN]);
        self.buf[start + 24] = KIND_MESSAGE;
        encode_payload(&mut self.buf, message, explicit_id);
        let len = (self.buf.len() - start - 8) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
        self.starts.push(start);
    }

    /// Appends a roll marker pointing at segment `next_base`.
    pub(crate) fn push_roll(&mut self, next_base: i64, stored: i64) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0u8; HEADER_LEN]);
        self.buf[start..start + 4].copy_from_slice(&((HEADER_LEN - 8) as u32).to_le_bytes());
        self.buf[start + 8..start + 16].copy_from_slice(&next_base.to_le_bytes());
        self.buf[start + 16..start + 24].copy_from_slice(&stored.to_le_bytes());
        self.buf[start + 24] = KIND_ROLL;
        let crc = crc32fast::hash(&self.buf[start + 8..]);
        self.buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
        self.starts.push(start);
    }

    /// The number of records.
    pub(crate) fn len(&self) -> usize {
        self.starts.len()
    }

    /// Gives the message records consecutive offsets from `first_offset`, the store time
    /// `stored`, and their CRCs.
    pub(crate) fn seal(&mut self, first_offset: i64, stored: i64) {
        let last = self.starts.len().saturating_sub(1);
        for (i, &start) in self.starts.iter().enumerate() {
            let end = self.starts.get(i + 1).copied().unwrap_or(self.buf.len());
            let rec = &mut self.buf[start..end];
            // Only the last record carries the flag: the batch is whole once it is there.
            rec[24] = if i == last {
                rec[24] | LAST_IN_BATCH
            } else {
                rec[24] & !LAST_IN_BATCH
            };
            rec[8..16].copy_from_slice(&(first_offset + i as i64).to_le_bytes());
            rec[16..24].copy_from_slice(&stored.to_le_bytes());
            let crc = crc32fast::hash(&rec[8..]);
            rec[4..8].copy_from_slice(&crc.to_le_bytes());
        }
    }
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u32).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

/// Encodes the parts of a message the store keeps. Destination, partition, offset and store
/// time are known from where the record sits; the id is kept only when `explicit_id` (staged
/// messages get theirs before they have an offset).
pub(crate) fn encode_payload(buf: &mut Vec<u8>, m: &Message, explicit_id: bool) {
    let h = &m.header;
    let x = &m.extension_header;
    let mut flags = 0u16;
    let explicit_id = if explicit_id {
        h.message_id.as_deref()
    } else {
        None
    };
    let opt = |flag: u16, present: bool, flags: &mut u16| {
        if present {
            *flags |= flag;
        }
    };
    opt(F_MESSAGE_ID, explicit_id.is_some(), &mut flags);
    opt(F_BORN_HOST, h.born_host.is_some(), &mut flags);
    opt(F_QOS, h.qos.is_some(), &mut flags);
    opt(F_COMPRESSION, h.compression.is_some(), &mut flags);
    opt(F_KEY, x.message_key.is_some(), &mut flags);
    opt(F_CORRELATION, x.correlation_id.is_some(), &mut flags);
    opt(F_TRANSACTION, x.transaction_id.is_some(), &mut flags);
    opt(F_DELAY, x.delay_time.is_some(), &mut flags);
    opt(F_EXPIRE, x.expire_time.is_some(), &mut flags);
    opt(F_TRACE, x.trace_id.is_some(), &mut flags);
    opt(F_PRIORITY, x.priority.is_some(), &mut flags);
    opt(F_PROPERTIES, !m.properties.is_empty(), &mut flags);
    buf.extend_from_slice(&flags.to_le_bytes());
    buf.extend_from_slice(&h.born_timestamp.unwrap_or(0).to_le_bytes());
    if let Some(id) = explicit_id {
        put_str(buf, id);
    }
    if let Some(v) = &h.born_host {
        put_str(buf, v);
    }
    if let Some(q) = h.qos {
        buf.push(u8::from(q));
    }
    for v in [
        &h.compression,
        &x.message_key,
        &x.correlation_id,
        &x.transaction_id,
    ]
    .into_iter()
    .flatten()
    {
        put_str(buf, v);
    }
    if let Some(d) = x.delay_time {
        buf.extend_from_slice(&(d.as_millis() as u64).to_le_bytes());
    }
    if let Some(e) = x.expire_time {
        buf.extend_from_slice(&e.to_le_bytes());
    }
    if let Some(v) = &x.trace_id {
        put_str(buf, v);
    }
    if let Some(p) = x.priority {
        buf.push(p);
    }
    if !m.properties.is_empty() {
        buf.extend_from_slice(&(m.properties.len() as u32).to_le_bytes());
        for (k, v) in m.properties.iter() {
            put_str(buf, k);
            put_str(buf, v);
        }
    }
    buf.extend_from_slice(&(m.data.len() as u32).to_le_bytes());
    buf.extend_from_slice(&m.data);
}

/// The size of the payload of `m` once encoded, without the record header.
pub(crate) fn encoded_len(m: &Message) -> usize {
    fn s(v: &Option<impl AsRef<str>>) -> usize {
        v.as_ref().map_or(0, |s| 4 + s.as_ref().len())
    }
    let h = &m.header;
    let x = &m.extension_header;
    2 + 8
        + s(&h.message_id)
        + s(&h.born_host)
        + 1
        + s(&h.compression)
        + s(&x.message_key)
        + s(&x.correlation_id)
        + s(&x.transaction_id)
        + 8
        + 8
        + s(&x.trace_id)
        + 1
        + 4
        + m.properties
            .iter()
            .map(|(k, v)| 8 + k.len() + v.len())
            .sum::<usize>()
        + 4
        + m.data.len()
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or("payload ends early")?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, &'static str> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, &'static str> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().map_err(|_| "short u32")?,
        ))
    }
    fn i64(&mut self) -> Result<i64, &'static str> {
        Ok(i64::from_le_bytes(
            self.take(8)?.try_into().map_err(|_| "short i64")?,
        ))
    }
    /// A length-prefixed UTF-8 string, borrowed from the record.
    fn str(&mut self) -> Result<&'a str, &'static str> {
        let n = self.u32()? as usize;
        std::str::from_utf8(self.take(n)?).map_err(|_| "a header is not UTF-8")
    }
    fn string(&mut self) -> Result<String, &'static str> {
        self.str().map(str::to_owned)
    }
    /// A string shared as [`Arc<str>`], made straight from the record's bytes.
    fn opt_shared(&mut self, present: bool) -> Result<Option<Arc<str>>, &'static str> {
        present.then(|| self.str().map(Arc::from)).transpose()
    }
    fn opt_string(&mut self, present: bool) -> Result<Option<String>, &'static str> {
        if present {
            self.string().map(Some)
        } else {
            Ok(None)
        }
    }
}

/// Where a decoded message sits, to fill in its server-side headers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Placement<'a> {
    pub(crate) queue: &'a Arc<str>,
    pub(crate) queue_id: u32,
    pub(crate) partition: i32,
    pub(crate) store_host: &'a Arc<str>,
}

/// The id of a message stored at `offset` (28 upper-case hex digits: the queue id, the partition
/// as a `u16` and the offset, each zero-padded: `{queue_id:08X}{partition:04X}{offset:016X}`).
pub(crate) fn message_id(queue_id: u32, partition: i32, offset: i64) -> String {
    // Written by hand: `format!` is a large part of decoding a small message.
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    fn put_hex(out: &mut [u8], value: u64) {
        let digits = out.len();
        for (i, d) in out.iter_mut().enumerate() {
            *d = HEX[((value >> (4 * (digits - 1 - i))) & 0xF) as usize];
        }
    }
    let mut id = [0u8; 28];
    put_hex(&mut id[..8], u64::from(queue_id));
    put_hex(&mut id[8..12], u64::from(partition as u16));
    put_hex(&mut id[12..], offset as u64);
    // Only ASCII hex digits were written: the check cannot fail.
    std::str::from_utf8(&id)
        .map(str::to_owned)
        .unwrap_or_default()
}

/// Decodes the message record `rec` found at the start of `chunk` (whose body is shared, not
/// copied, when `chunk` is a `Bytes`).
pub(crate) fn decode_message(
    chunk: &Bytes,
    rec: &RecordHeader,
    at: Placement<'_>,
) -> Result<Message, &'static str> {
    let mut out = Vec::with_capacity(1);
    decode_message_into(chunk, rec, at, None, &mut out)?;
    out.pop().ok_or("the record holds no message")
}

/// Decodes the message record `rec` found at the start of `chunk` and appends it to `out`,
/// unless it expired at or before `now`. Returns whether it was appended.
///
/// Appending here saves copies of the (large) `Message` on the hot read path.
pub(crate) fn decode_message_into(
    chunk: &Bytes,
    rec: &RecordHeader,
    at: Placement<'_>,
    now: Option<i64>,
    out: &mut Vec<Message>,
) -> Result<bool, &'static str> {
    let payload = &chunk[HEADER_LEN..rec.total_len];
    let mut c = Cursor {
        buf: payload,
        pos: 0,
    };
    let flags = u16::from_le_bytes(c.take(2)?.try_into().map_err(|_| "short flags")?);
    if flags & !F_KNOWN != 0 {
        return Err("unknown header flags (written by a newer omstream?)");
    }
    let has = |f: u16| flags & f != 0;
    // Fields are read in their on-disk order into locals, and the message is built once at the
    // end: a `Message` is large, and every move of it is a copy.
    let born_timestamp = Some(c.i64()?);
    let message_id = Some(if has(F_MESSAGE_ID) {
        c.string()?
    } else {
        message_id(at.queue_id, at.partition, rec.offset)
    });
    let born_host = c.opt_shared(has(F_BORN_HOST))?;
    let qos = if has(F_QOS) {
        Some(Qos::try_from(c.u8()?).map_err(|_| "bad qos")?)
    } else {
        None
    };
    let compression = c.opt_string(has(F_COMPRESSION))?;
    let message_key = c.opt_string(has(F_KEY))?;
    let correlation_id = c.opt_string(has(F_CORRELATION))?;
    let transaction_id = c.opt_string(has(F_TRANSACTION))?;
    let delay_time = if has(F_DELAY) {
        Some(Duration::from_millis(c.i64()? as u64))
    } else {
        None
    };
    let expire_time = if has(F_EXPIRE) { Some(c.i64()?) } else { None };
    let trace_id = c.opt_string(has(F_TRACE))?;
    let priority = if has(F_PRIORITY) { Some(c.u8()?) } else { None };
    let properties = if has(F_PROPERTIES) {
        let n = c.u32()? as usize;
        // Collected rather than `put`, which would copy every value once more.
        (0..n)
            .map(|_| Ok((c.string()?, c.string()?)))
            .collect::<Result<KeyValue, &'static str>>()?
    } else {
        KeyValue::new()
    };
    let n = c.u32()? as usize;
    let start = HEADER_LEN + c.pos;
    c.take(n)?;
    if c.pos != payload.len() {
        return Err("trailing bytes after the body");
    }
    if expire_time.is_some_and(|e| now.is_some_and(|now| e <= now)) {
        return Ok(false);
    }
    out.push(Message {
        version: std::borrow::Cow::Borrowed(MESSAGE_VERSION),
        header: Header {
            destination: Arc::clone(at.queue),
            message_id,
            born_timestamp,
            born_host,
            qos,
            compression,
        },
        extension_header: ExtensionHeader {
            partition: Some(at.partition),
            offset: Some(rec.offset),
            store_timestamp: Some(rec.stored),
            store_host: Some(Arc::clone(at.store_host)),
            message_key,
            correlation_id,
            transaction_id,
            delay_time,
            expire_time,
            trace_id,
            delivery_count: 0,
            priority,
        },
        properties,
        data: chunk.slice(start..start + n),
        receipt: None,
    });
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full_message() -> Message {
        let mut m = Message::new("q", "body")
            .with_key("k")
            .with_property("a", "1")
            .with_property("b", "two")
            .with_delay(Duration::from_millis(1500))
            .with_expire_time(99);
        m.header.born_timestamp = Some(123);
        m.header.born_host = Some("h:1".into());
        m.header.qos = Some(Qos::AtMostOnce);
        m.header.compression = Some("gzip".into());
        m.header.message_id = Some("ID".into());
        m.extension_header.correlation_id = Some("c".into());
        m.extension_header.transaction_id = Some("t".into());
        m.extension_header.trace_id = Some("tr".into());
        m.extension_header.priority = Some(7);
        m
    }

    #[test]
    fn round_trip_keeps_every_field() {
        let m = full_message();
        let mut batch = EncodedBatch::default();
        batch.push_message(&m, true);
        batch.seal(41, 1000);
        let chunk = Bytes::from(batch.buf.clone());
        let Parsed::Record(rec) = parse(&chunk, 1 << 20, true) else {
            panic!("not a record")
        };
        assert_eq!(
            (rec.offset, rec.stored, rec.kind, rec.total_len),
            (41, 1000, KIND_MESSAGE, chunk.len())
        );
        assert_eq!(encoded_len(&m), chunk.len() - HEADER_LEN);
        let at = Placement {
            queue: &Arc::from("q"),
            queue_id: 7,
            partition: 3,
            store_host: &Arc::from("s"),
        };
        let back = decode_message(&chunk, &rec, at).unwrap();
        let mut expected = m.clone();
        expected.extension_header.partition = Some(3);
        expected.extension_header.offset = Some(41);
        expected.extension_header.store_timestamp = Some(1000);
        expected.extension_header.store_host = Some("s".into());
        assert_eq!(back, expected);
    }

    #[test]
    fn implicit_ids_come_from_the_position() {
        let mut batch = EncodedBatch::default();
        batch.push_message(&Message::new("q", "x"), false);
        batch.seal(255, 1);
        let chunk = Bytes::from(batch.buf);
        let Parsed::Record(rec) = parse(&chunk, 1 << 20, true) else {
            panic!()
        };
        let at = Placement {
            queue: &Arc::from("q"),
            queue_id: 1,
            partition: 2,
            store_host: &Arc::from("s"),
        };
        assert_eq!(
            decode_message(&chunk, &rec, at).unwrap().message_id(),
            Some("00000001000200000000000000FF")
        );
    }

    #[test]
    fn message_ids_match_their_documented_format() {
        for (queue_id, partition, offset) in [
            (0, 0, 0),
            (1, 2, 255),
            (u32::MAX, 65_535, i64::MAX),
            (0xDEAD_BEEF, 70_000, -1),
            (7, -1, 1 << 40),
        ] {
            let expected = format!("{queue_id:08X}{:04X}{offset:016X}", partition as u16);
            assert_eq!(message_id(queue_id, partition, offset), expected);
        }
    }

    #[test]
    fn expired_messages_are_not_appended() {
        let mut batch = EncodedBatch::default();
        batch.push_message(&Message::new("q", "x").with_expire_time(100), false);
        batch.seal(0, 1);
        let chunk = Bytes::from(batch.buf);
        let Parsed::Record(rec) = parse(&chunk, 1 << 20, true) else {
            panic!()
        };
        let at = Placement {
            queue: &Arc::from("q"),
            queue_id: 1,
            partition: 0,
            store_host: &Arc::from("s"),
        };
        let mut out = Vec::new();
        assert_eq!(
            decode_message_into(&chunk, &rec, at, Some(100), &mut out),
            Ok(false)
        );
        assert_eq!(
            decode_message_into(&chunk, &rec, at, Some(99), &mut out),
            Ok(true)
        );
        assert_eq!(out[0].extension_header.expire_time, Some(100));
    }

    #[test]
    fn torn_and_corrupt_records_are_detected() {
        let mut batch = EncodedBatch::default();
        batch.push_message(&full_message(), false);
        batch.seal(0, 0);
        let bytes = batch.buf;
        for cut in 0..bytes.len() {
            assert_eq!(
                parse(&bytes[..cut], 1 << 20, true),
                Parsed::Incomplete,
                "cut at {cut}"
            );
        }
        for i in 4..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[i] ^= 0x40;
            assert!(
                matches!(parse(&flipped, 1 << 20, true), Parsed::Invalid(_)),
                "flip at {i}"
            );
        }
        let mut huge = bytes.clone();
        huge[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            parse(&huge, 1 << 20, true),
            Parsed::Invalid("impossible record length")
        );
    }

    #[test]
    fn roll_markers_parse() {
        let mut batch = EncodedBatch::default();
        batch.push_roll(77, 5);
        let Parsed::Record(rec) = parse(&batch.buf, 1 << 20, true) else {
            panic!()
        };
        assert_eq!((rec.kind, rec.offset, rec.stored), (KIND_ROLL, 77, 5));
    }
}
