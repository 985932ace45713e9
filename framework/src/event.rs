//! What travels on a channel, in every layer: one type.
//!
//! A channel (upstream subtask → downstream subtask) carries [`ChannelEvent`]s in order:
//! batches of records, checkpoint barriers and its end. The type is generic over what a batch
//! *is* where it travels — typed records moved without serialization inside a process
//! ([`RecordBatch`], the default), or their encoding on the wire (`Vec<u8>`, in
//! `riffle-cluster`) — so the router that queues an event, the runtime that sends it, the
//! subtask that handles it and the link that carries it all match on the same arms. A new
//! arm (a watermark) is added here once; crossing a boundary is [`ChannelEvent::try_map_batch`],
//! which passes every control arm through unchanged.

use serde::{Deserialize, Serialize};
use std::any::Any;
use std::sync::Arc;

/// A batch of records of some type (`Vec<T>`), moved between subtasks without serialization.
pub type Payload = Box<dyn Any + Send>;

/// One event of a channel, in the channel's order. `B` is the batch: [`RecordBatch`] in a
/// process, encoded bytes on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChannelEvent<B = RecordBatch> {
    /// A batch of records.
    Batch(B),
    /// Checkpoint barrier `n`: the sender's records before it belong to checkpoint `n`.
    Barrier(u64),
    /// The sender will send nothing more on this channel.
    EndOfInput,
    /// Event time: the sender will send no record with a timestamp at or below this one
    /// (milliseconds; `i64::MAX` at the end of input). A receiver's clock is the minimum of
    /// its open inputs' watermarks.
    Watermark(i64),
    /// Event time: the sender has had no records for a while (it is idle, not blocked): its
    /// watermark holds the receiver's clock back no more, until it sends again.
    Idle,
}

impl<B> ChannelEvent<B> {
    /// The same event with its batch converted by `f` (a control event passes unchanged);
    /// the one place where an event crosses from one representation to another.
    ///
    /// # Errors
    /// What `f` returns for the batch.
    pub fn try_map_batch<C, E>(
        self,
        f: impl FnOnce(B) -> Result<C, E>,
    ) -> Result<ChannelEvent<C>, E> {
        Ok(match self {
            ChannelEvent::Batch(b) => ChannelEvent::Batch(f(b)?),
            ChannelEvent::Barrier(n) => ChannelEvent::Barrier(n),
            ChannelEvent::EndOfInput => ChannelEvent::EndOfInput,
            ChannelEvent::Watermark(t) => ChannelEvent::Watermark(t),
            ChannelEvent::Idle => ChannelEvent::Idle,
        })
    }

    /// Whether this is a batch of records (which counts as data; the rest is control).
    pub fn is_batch(&self) -> bool {
        matches!(self, ChannelEvent::Batch(_))
    }
}

/// Where the buffer of a batch goes once its records are consumed: back to the router that
/// filled it, which fills it again instead of allocating (as Flink's network buffers return
/// to their pool). Implemented by the router's buffer pool for its record type.
pub trait GiveBack: Send + Sync {
    /// Takes back `payload` (a `Vec<T>` of the pool's type; any other is dropped). Its records
    /// are dropped here, on the consumer's thread.
    fn give_back(&self, payload: Payload);
}

/// A batch of records of one type inside a process: `Vec<T>`, boxed, and how many.
pub struct RecordBatch {
    /// The records (`Vec<T>` of the channel's record type).
    pub payload: Payload,
    /// How many records.
    pub len: usize,
    /// Where the buffer goes once the records are consumed (`None`: it is freed).
    pub home: Option<Arc<dyn GiveBack>>,
}

impl RecordBatch {
    /// A batch whose buffer is freed once consumed.
    pub fn new(payload: Payload, len: usize) -> Self {
        RecordBatch {
            payload,
            len,
            home: None,
        }
    }

    /// The records are consumed: the buffer goes back to its pool (or is freed).
    pub fn recycle(self) {
        recycle(self.payload, self.home);
    }
}

/// Gives a consumed batch's buffer back to `home`, or frees it.
pub fn recycle(payload: Payload, home: Option<Arc<dyn GiveBack>>) {
    if let Some(home) = home {
        home.give_back(payload);
    }
}

impl std::fmt::Debug for RecordBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RecordBatch({})", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_a_batch_passes_control_events_through() {
        let encode = |b: RecordBatch| Ok::<_, String>(vec![0u8; b.len]);
        let batch = ChannelEvent::Batch(RecordBatch::new(Box::new(vec![1u64, 2, 3]), 3));
        assert_eq!(
            batch.try_map_batch(encode),
            Ok(ChannelEvent::Batch(vec![0; 3]))
        );
        let barrier: ChannelEvent = ChannelEvent::Barrier(7);
        assert_eq!(barrier.try_map_batch(encode), Ok(ChannelEvent::Barrier(7)));
        let end: ChannelEvent = ChannelEvent::EndOfInput;
        assert!(!end.is_batch());
        assert_eq!(end.try_map_batch(encode), Ok(ChannelEvent::EndOfInput));
        let wm: ChannelEvent = ChannelEvent::Watermark(-5);
        assert_eq!(wm.try_map_batch(encode), Ok(ChannelEvent::Watermark(-5)));
    }
}
