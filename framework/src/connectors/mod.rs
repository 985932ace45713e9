//! Built-in sources and sinks.
//!
//! Sources: collections and iterators ([`StreamEnv::from_collection`]), generated sequences
//! ([`StreamEnv::generate`], [`StreamEnv::sequence`]), text file lines split across subtasks
//! ([`StreamEnv::read_text_file`]) and a TCP text socket ([`StreamEnv::socket_text_stream`]).
//! Sinks: print with a subtask prefix, collect (for tests), text files (one part per subtask),
//! count and discard.
//!
//! [`StreamEnv::from_collection`]: crate::StreamEnv::from_collection
//! [`StreamEnv::generate`]: crate::StreamEnv::generate
//! [`StreamEnv::sequence`]: crate::StreamEnv::sequence
//! [`StreamEnv::read_text_file`]: crate::StreamEnv::read_text_file
//! [`StreamEnv::socket_text_stream`]: crate::StreamEnv::socket_text_stream

mod sinks;
mod sources;

pub use sinks::{CollectHandle, CountHandle};
