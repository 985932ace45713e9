//! Dead letters: records set aside because they kept failing an operator.

use crate::error::UserError;
use crate::operator::{Output, Source, SourceStatus};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// A record that failed the same operator `PoisonPolicy::max_attempts` times.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The operator it failed in.
    pub operator: String,
    /// The subtask index.
    pub subtask: usize,
    /// The last failure, as text.
    pub cause: String,
    /// How many times it failed.
    pub attempts: u32,
    /// The record, encoded with rmp-serde; see [`DeadLetter::decode`].
    pub record: Vec<u8>,
}

impl DeadLetter {
    /// Decodes the record as a `T` (the input type of the operator it failed in).
    ///
    /// # Errors
    /// The bytes are not a `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, UserError> {
        Ok(rmp_serde::from_slice(&self.record)?)
    }
}

/// Where the runtime puts dead letters for the job's dead-letter stream.
#[derive(Clone, Default, Debug)]
pub struct DeadLetterQueue {
    inner: Arc<(Mutex<VecDeque<DeadLetter>>, AtomicBool)>,
}

impl DeadLetterQueue {
    fn lock(&self) -> MutexGuard<'_, VecDeque<DeadLetter>> {
        self.inner.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a letter.
    pub fn push(&self, letter: DeadLetter) {
        self.lock().push_back(letter);
    }

    /// No more letters will come: the stream ends once it has emitted the queued ones.
    pub fn close(&self) {
        self.inner.1.store(true, Ordering::Release);
    }

    fn is_closed(&self) -> bool {
        self.inner.1.load(Ordering::Acquire)
    }
}

/// The source behind `StreamEnv::dead_letters`.
pub(crate) struct DeadLetterSource {
    pub(crate) queue: DeadLetterQueue,
}

impl Source for DeadLetterSource {
    type Out = DeadLetter;
    fn produce(&mut self, out: &mut Output<'_, DeadLetter>) -> Result<SourceStatus, UserError> {
        // Read the flag first: a letter queued before the close is then surely seen below.
        let closed = self.queue.is_closed();
        let letters: Vec<DeadLetter> = self.queue.lock().drain(..).collect();
        let any = !letters.is_empty();
        for l in letters {
            out.emit(l);
        }
        Ok(match (any, closed) {
            (_, true) => SourceStatus::Finished,
            (true, false) => SourceStatus::More,
            (false, false) => SourceStatus::Idle,
        })
    }
}
