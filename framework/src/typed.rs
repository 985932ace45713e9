//! The type-erased side of a stream's record type: what the plan needs to build input
//! stages, routers and tees for records it cannot name, and to encode batches for remote
//! channels ([`BatchCodec`]). Each stream keeps an `Arc<dyn TypeOps>` made by [`ops`]; the
//! edges between streams say how records cross them ([`EdgeKind`]).

use crate::data::Data;
use crate::error::{CodecError, FailureCause, StageError};
use crate::exec::{BoxStage, ErasedInput, InputStage, Payload, Route, Router, Stage, StageCx, Tee};
use crate::partition::Routing;
use std::any::Any;
use std::marker::PhantomData;
use std::sync::Arc;

/// A stage whose record type is erased (a `BoxStage<T>` in a box).
pub(crate) type AnyStage = Box<dyn Any>;

/// Typed helpers for the record type of a stream, kept behind a trait object.
pub(crate) trait TypeOps: Send + Sync {
    fn input(&self, head: AnyStage, name: Arc<str>) -> Result<Box<dyn ErasedInput>, StageError>;
    fn router(&self, edge: &EdgeKind, p: RouterPlan) -> Result<AnyStage, StageError>;
    fn tee(&self, branches: Vec<AnyStage>) -> Result<AnyStage, StageError>;
    fn discard(&self) -> AnyStage;
    fn encode_batch(&self, batch: &Payload) -> Result<Vec<u8>, CodecError>;
    fn decode_batch(&self, bytes: &[u8]) -> Result<(Payload, usize), CodecError>;
}

/// Encodes and decodes batches of a stream's record type for remote channels: in columns for
/// integers, `f64`, `String` and pairs of them (see the `columns` module), else rmp-serde.
#[derive(Clone)]
pub struct BatchCodec(pub(crate) Arc<dyn TypeOps>);

impl std::fmt::Debug for BatchCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BatchCodec")
    }
}

impl BatchCodec {
    /// The codec of batches of `T`.
    pub fn of<T: Data>() -> Self {
        BatchCodec(ops::<T>())
    }

    /// Encodes a batch (a `Vec<T>` payload).
    ///
    /// # Errors
    /// The payload is not a batch of this codec's type, or does not serialize.
    pub fn encode(&self, batch: &Payload) -> Result<Vec<u8>, CodecError> {
        self.0.encode_batch(batch)
    }

    /// Decodes bytes written by [`BatchCodec::encode`]; returns the payload and its length.
    ///
    /// # Errors
    /// The bytes are not a batch of this codec's type.
    pub fn decode(&self, bytes: &[u8]) -> Result<(Payload, usize), CodecError> {
        self.0.decode_batch(bytes)
    }
}

/// Where a router writes: which output queues, how many records per batch.
pub(crate) struct RouterPlan {
    /// The operator the edge feeds (a key selector's failure is that operator's).
    pub(crate) to: Arc<str>,
    pub(crate) base: usize,
    pub(crate) channels: usize,
    pub(crate) batching: crate::config::Batching,
    pub(crate) start: usize,
    pub(crate) partitioner: Option<Routing>,
}

pub(crate) struct Ops<T>(PhantomData<fn() -> T>);

pub(crate) fn ops<T: Data>() -> Arc<dyn TypeOps> {
    Arc::new(Ops::<T>(PhantomData))
}

pub(crate) fn internal(what: &'static str) -> StageError {
    StageError {
        operator: "<runtime>".to_string(),
        cause: FailureCause::Internal(what),
    }
}

/// Unpacks a type-erased stage.
pub(crate) fn unbox<T: 'static>(b: AnyStage) -> Result<T, StageError> {
    b.downcast::<T>()
        .map(|b| *b)
        .map_err(|_| internal("operator chain built with mismatched record types"))
}

/// Packs a stage for the type-erased chain builder.
pub(crate) fn boxed<T: 'static>(stage: BoxStage<T>) -> AnyStage {
    Box::new(stage)
}

struct Discard;
impl<T: Data> Stage<T> for Discard {
    fn push(&mut self, _r: T, _cx: &mut StageCx) -> Result<(), StageError> {
        Ok(())
    }
    fn open(&mut self, _cx: &mut StageCx) -> Result<(), StageError> {
        Ok(())
    }
    fn commit(&mut self, _cx: &mut StageCx) -> Result<(), StageError> {
        Ok(())
    }
    fn rollback(&mut self) {}
    fn snapshot(&mut self, _checkpoint: u64, _out: &mut Vec<Vec<u8>>) -> Result<(), StageError> {
        Ok(())
    }
    fn restore(
        &mut self,
        _states: &mut std::slice::Iter<'_, Vec<u8>>,
        _last_completed: Option<u64>,
    ) -> Result<(), StageError> {
        Ok(())
    }
    fn checkpoint_complete(&mut self, _checkpoint: u64) -> Result<(), StageError> {
        Ok(())
    }
    fn flush(&mut self, _cx: &mut StageCx) {}
    fn on_watermark(&mut self, _watermark: i64, _cx: &mut StageCx) -> Result<(), StageError> {
        Ok(())
    }
    fn on_processing_time(&mut self, _now: i64, _cx: &mut StageCx) -> Result<(), StageError> {
        Ok(())
    }
    fn resume_clock(&mut self, _watermark: i64) {}
    fn on_idle(&mut self, _cx: &mut StageCx) {}
    fn close(&mut self, _cx: &mut StageCx) -> Result<(), StageError> {
        Ok(())
    }
}

impl<T: Data> TypeOps for Ops<T> {
    fn input(&self, head: AnyStage, name: Arc<str>) -> Result<Box<dyn ErasedInput>, StageError> {
        let next: BoxStage<T> = unbox(head)?;
        Ok(Box::new(InputStage::new(next, name)))
    }
    fn router(&self, edge: &EdgeKind, p: RouterPlan) -> Result<AnyStage, StageError> {
        let route: Route<fn(&T) -> u64> = match edge {
            EdgeKind::Auto | EdgeKind::Forward => Route::Forward,
            EdgeKind::Rebalance => Route::Rebalance,
            EdgeKind::Broadcast => Route::Broadcast,
            EdgeKind::Key(f) => {
                let factory = f
                    .clone()
                    .downcast::<KeyRouterFactory<T>>()
                    .map_err(|_| internal("key function of the wrong record type"))?;
                let routing = p
                    .partitioner
                    .ok_or_else(|| internal("keyed edge without partitioner"))?;
                let plan = KeyRouterPlan {
                    to: p.to.clone(),
                    routing,
                    base: p.base,
                    channels: p.channels,
                    batching: p.batching,
                    start: p.start,
                };
                return Ok(boxed((factory.0)(plan)));
            }
        };
        let r: BoxStage<T> = Box::new(Router::new(route, p.base, p.channels, p.batching, p.start));
        Ok(boxed(r))
    }
    fn tee(&self, branches: Vec<AnyStage>) -> Result<AnyStage, StageError> {
        let b = branches
            .into_iter()
            .map(unbox::<BoxStage<T>>)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(boxed::<T>(Box::new(Tee::new(b))))
    }
    fn discard(&self) -> AnyStage {
        boxed::<T>(Box::new(Discard))
    }
    fn encode_batch(&self, batch: &Payload) -> Result<Vec<u8>, CodecError> {
        let records = batch
            .downcast_ref::<Vec<T>>()
            .ok_or(CodecError::WrongType)?;
        match crate::columns::encode::<T>(records) {
            Some(bytes) => Ok(bytes),
            None => Ok(rmp_serde::to_vec(records)?),
        }
    }
    fn decode_batch(&self, bytes: &[u8]) -> Result<(Payload, usize), CodecError> {
        if let Some(decoded) = crate::columns::decode::<T>(bytes) {
            return decoded;
        }
        let records: Vec<T> = rmp_serde::from_slice(bytes)?;
        let len = records.len();
        Ok((Box::new(records), len))
    }
}

/// What a keyed edge's router is built from.
pub(crate) struct KeyRouterPlan {
    /// The keyed operator the edge feeds.
    pub to: Arc<str>,
    pub routing: Routing,
    pub base: usize,
    pub channels: usize,
    pub batching: crate::config::Batching,
    pub start: usize,
}

/// Builds the router of a keyed edge with the concrete key closure (stored type-erased on the
/// edge), so that extracting and hashing a key costs no virtual call.
pub(crate) struct KeyRouterFactory<T>(pub Arc<dyn Fn(KeyRouterPlan) -> BoxStage<T> + Send + Sync>);

/// How records cross an edge.
#[derive(Clone)]
pub(crate) enum EdgeKind {
    /// Forward if parallelisms match, else rebalance (resolved by the plan).
    Auto,
    Forward,
    Rebalance,
    Broadcast,
    /// Holds a `KeyRouterFactory<T>`.
    Key(Arc<dyn Any + Send + Sync>),
}

impl EdgeKind {
    pub(crate) fn is_forward(&self) -> bool {
        matches!(self, EdgeKind::Forward)
    }
    pub(crate) fn label(&self) -> &'static str {
        match self {
            EdgeKind::Auto => "AUTO",
            EdgeKind::Forward => "FORWARD",
            EdgeKind::Rebalance => "REBALANCE",
            EdgeKind::Broadcast => "BROADCAST",
            EdgeKind::Key(_) => "HASH",
        }
    }
}
