//! # riffle-framework — the user API and the job graph
//!
//! This is the bottom layer of Riffle (framework ← actors ← cluster ← riffle). It owns
//! everything a job *is*, with no actor library and no sockets of its own:
//!
//! - the operator traits users implement ([`Source`], [`Operator`], [`KeyedOperator`],
//!   [`Sink`]) and the closures that are sugar over them (`map`, `filter`, `flat_map`,
//!   `key_by(..).reduce/fold/sum`, `sink_fn`);
//! - the builder ([`StreamEnv`], [`DataStream`], [`KeyedStream`]) and its validation
//!   ([`GraphError`]);
//! - partitioning: the specified key hash ([`Key`]), the consistent-hash [`KeyRing`] compiled
//!   into a lookup table, and the `hash mod N` baseline ([`ModuloPartitioner`]);
//! - the execution plan ([`ExecutionPlan`]): chains of operators, channel layout, and the
//!   type-erased operator chains ([`exec`]) that a runtime drives, whose output is staged per
//!   unit of work so that a failed unit can be rolled back;
//! - checkpoint data and stores ([`TaskSnapshot`], [`FsStore`], [`MemoryStore`]) and restoring a
//!   checkpoint at other parallelisms ([`ExecutionPlan::adapt_checkpoint`]);
//! - event time: watermarks and clocks ([`WatermarkStrategy`], [`InputClock`]), timers of keyed
//!   operators ([`timers`]) and windows built on them ([`WindowAssigner`], [`WindowedStream`]);
//! - the built-in connectors.
//!
//! The runtime that runs a plan — one actix actor per subtask, credit-based channels — lives in
//! `riffle-actors`. Users normally import `riffle::prelude::*` rather than this crate.

mod checkpoint;
mod columns;
mod config;
mod connectors;
mod data;
mod dead_letter;
mod error;
mod event;
pub mod exec;
mod graph;
mod operator;
mod partition;
mod rescale;
mod stream;
mod time;
pub mod timers;
mod typed;
mod window;

pub use checkpoint::{
    Checkpoint, CheckpointId, CheckpointStore, FsStore, MemoryStore, StoreError, TaskSnapshot,
};
pub use config::{
    Backoff, Batching, CheckpointConfig, CheckpointStorage, JobConfig, PoisonAction, PoisonPolicy,
    RestartKind, RestartStrategy, RestoreFrom, DEFAULT_BATCH_BYTES, DEFAULT_BATCH_SIZE,
    DEFAULT_CREDITS, DEFAULT_FLUSH_INTERVAL, DEFAULT_REMOTE_BATCH_SCALE, DEFAULT_REMOTE_CREDITS,
    REMOTE_BATCH_BYTES,
};
pub use connectors::{CollectHandle, CountHandle};
pub use data::{canonical_key_bytes, Data, Key};
pub use dead_letter::{DeadLetter, DeadLetterQueue};
pub use error::{
    panic_message, CodecError, ConnectorError, FailureCause, GraphError, Permanent, StageError,
    UserError,
};
pub use event::{recycle, ChannelEvent, GiveBack, RecordBatch};
pub use graph::{ChannelTarget, ExecutionPlan, TaskChain, TaskId};
pub use operator::{
    Encoded, KeyedOperator, KeyedStates, Operator, Output, Position, Sink, Snapshot, Source,
    SourceStatus, SubtaskInfo,
};
pub use partition::{
    BucketWord, KeyRing, ModuloPartitioner, PartitionScheme, Partitioner, RingHasher, RingTable,
    RingTableOf, Routing, SubtaskNode, DEFAULT_VNODES,
};
pub use rescale::{ChainRescale, FitError, FitProblem, Gained, InPlaceSplit, RescaleReport};
pub use stream::{DataStream, KeyedStream, SinkStream, StreamEnv, Windowed, WindowedStream};
pub use time::{GeneratorFn, InputClock, TimestampFn, WatermarkStage, WatermarkStrategy};
pub use timers::{KeyTimers, TimeDomain, Timer, Timers};
pub use typed::BatchCodec;
pub use window::{
    AggregateFunction, Firing, TimeWindow, Trigger, WindowAssigner, WindowEvent, WindowResult,
    WindowState,
};
