//! Where a source takes each record's event time from.

use std::fmt;
use std::sync::Arc;

use crate::oms::Message;
use crate::runtime::EventTime;

type ExtractFn<T> = dyn Fn(&T) -> EventTime + Send + Sync;

/// Where an OMS source takes a record's event time from (milliseconds since the epoch).
///
/// A header that a driver did not fill in falls back: `bornTimestamp` to `storeTimestamp`, and
/// either to the processing time at which the source read the message.
#[derive(Default)]
#[non_exhaustive]
pub enum EventTimeFrom<T> {
    /// The `bornTimestamp` header: when the producer sent the message (the default).
    #[default]
    BornTimestamp,
    /// The `storeTimestamp` extension header: when the queue stored the message. It never
    /// decreases within a partition, so it suits a watermark with no out-of-orderness.
    StoreTimestamp,
    /// A function of the decoded record, such as a field of it.
    Extract(Arc<ExtractFn<T>>),
}

impl<T> EventTimeFrom<T> {
    /// The event time is `extract(record)`.
    pub fn extract(extract: impl Fn(&T) -> EventTime + Send + Sync + 'static) -> Self {
        EventTimeFrom::Extract(Arc::new(extract))
    }

    /// The event time of `record`, read from `message` at processing time `now`.
    #[inline]
    pub(crate) fn of(&self, message: &Message, record: &T, now: EventTime) -> EventTime {
        let store = message.extension_header.store_timestamp;
        match self {
            EventTimeFrom::BornTimestamp => message.header.born_timestamp.or(store).unwrap_or(now),
            EventTimeFrom::StoreTimestamp => store.unwrap_or(now),
            EventTimeFrom::Extract(extract) => extract(record),
        }
    }
}

impl<T> Clone for EventTimeFrom<T> {
    fn clone(&self) -> Self {
        match self {
            EventTimeFrom::BornTimestamp => EventTimeFrom::BornTimestamp,
            EventTimeFrom::StoreTimestamp => EventTimeFrom::StoreTimestamp,
            EventTimeFrom::Extract(f) => EventTimeFrom::Extract(f.clone()),
        }
    }
}

impl<T> fmt::Debug for EventTimeFrom<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EventTimeFrom::BornTimestamp => "BornTimestamp",
            EventTimeFrom::StoreTimestamp => "StoreTimestamp",
            EventTimeFrom::Extract(_) => "Extract(..)",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_fall_back_to_the_store_time_then_to_processing_time() {
        let mut message = Message::new("q", "x");
        let born = EventTimeFrom::<()>::BornTimestamp;
        let store = EventTimeFrom::<()>::StoreTimestamp;
        assert_eq!(born.of(&message, &(), 7), 7);
        message.extension_header.store_timestamp = Some(20);
        assert_eq!(born.of(&message, &(), 7), 20);
        message.header.born_timestamp = Some(10);
        assert_eq!(born.of(&message, &(), 7), 10);
        assert_eq!(store.of(&message, &(), 7), 20);
        let field = EventTimeFrom::extract(|v: &i64| v * 2);
        assert_eq!(field.of(&message, &21, 7), 42);
    }
}
