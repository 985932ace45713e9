//! The job builder: [`StreamEnv`], [`DataStream`], [`KeyedStream`].

use crate::config::{JobConfig, RestartKind};
use crate::data::{Data, Key};
use crate::dead_letter::{DeadLetter, DeadLetterQueue, DeadLetterSource};
use crate::error::{GraphError, UserError};
use crate::exec::{
    AggregateStage, BoxStage, KeyedStage, OperatorStage, Route, Router, RunningAggregate,
    SinkStage, SourceDriver,
};
use crate::graph::{Build, EdgeDef, ExecutionPlan, GraphBuilder, NodeDef, NodeId};
use crate::operator::{KeyedOperator, Operator, Output, Sink, Source, SubtaskInfo};
use crate::typed::{boxed, ops, unbox, EdgeKind, KeyRouterFactory, KeyRouterPlan};
use std::cell::RefCell;
use std::marker::PhantomData;
use std::rc::Rc;
use std::sync::Arc;

/// Builds a job: create sources on it, transform the streams, end them in sinks, then run it
/// with the runtime (`riffle::prelude::*` brings `execute()` into scope).
///
/// ```
/// use riffle_framework::StreamEnv;
///
/// let env = StreamEnv::new();
/// let out = env
///     .from_collection(vec![1u64, 2, 3, 4])
///     .map(|x| x * 10)
///     .filter(|x| *x > 10)
///     .collect();
/// let plan = env.build().unwrap();
/// assert_eq!(plan.chain_count(), 1); // source -> map -> filter -> collect, chained
/// # drop(out);
/// ```
pub struct StreamEnv {
    graph: Rc<RefCell<GraphBuilder>>,
}

impl Default for StreamEnv {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamEnv {
    /// An empty job with the default configuration.
    pub fn new() -> Self {
        Self::with_config(JobConfig::default())
    }

    /// An empty job with `config`.
    pub fn with_config(config: JobConfig) -> Self {
        StreamEnv {
            graph: Rc::new(RefCell::new(GraphBuilder {
                nodes: Vec::new(),
                edges: Vec::new(),
                config,
                dead_letters: DeadLetterQueue::default(),
                errors: Vec::new(),
            })),
        }
    }

    /// Sets the parallelism of every operator that does not set its own.
    pub fn set_parallelism(&self, n: usize) -> &Self {
        self.graph.borrow_mut().config.default_parallelism = n;
        self
    }

    /// Changes the configuration in place.
    pub fn configure(&self, f: impl FnOnce(&mut JobConfig)) -> &Self {
        f(&mut self.graph.borrow_mut().config);
        self
    }

    /// A copy of the current configuration.
    pub fn config(&self) -> JobConfig {
        self.graph.borrow().config.clone()
    }

    /// Adds a source; `factory` builds one instance per subtask.
    pub fn source<S, F>(&self, factory: F) -> DataStream<S::Out>
    where
        S: Source,
        F: Fn(&SubtaskInfo) -> S + Send + Sync + 'static,
    {
        self.add_source("source", None, factory)
    }

    pub(crate) fn add_source<S, F>(
        &self,
        name: &str,
        max_p: Option<usize>,
        factory: F,
    ) -> DataStream<S::Out>
    where
        S: Source,
        F: Fn(&SubtaskInfo) -> S + Send + Sync + 'static,
    {
        let build = Build::Source(Arc::new(move |info, next| {
            let next: BoxStage<S::Out> = unbox(next)?;
            Ok(Box::new(SourceDriver::new(
                factory(info),
                info.clone(),
                next,
            )))
        }));
        let node = self.graph.borrow_mut().nodes.len();
        self.graph.borrow_mut().nodes.push(NodeDef {
            name: name.to_string(),
            keyed: false,
            restart: None,
            flush: None,
            dead_letters: false,
            parallelism: None,
            max_parallelism: max_p,
            build,
            in_ops: None,
            out_ops: Some(ops::<S::Out>()),
        });
        DataStream::new(self.graph.clone(), node)
    }

    pub(crate) fn dead_letter_queue(&self) -> DeadLetterQueue {
        self.graph.borrow().dead_letters.clone()
    }

    /// Validates the job and plans its execution (what the runtime runs).
    ///
    /// # Errors
    /// A [`GraphError`] for a graph that cannot run: parallelism 0, a forward edge between
    /// different parallelisms, a non-parallel source given more than one subtask, no sink, or a
    /// bad configuration value.
    pub fn build(&self) -> Result<ExecutionPlan, GraphError> {
        ExecutionPlan::new(&self.graph.borrow())
    }
}

/// A stream of records of type `T`, the output of one operator.
///
/// Methods that add an operator consume the stream and return the operator's output stream;
/// clone a stream to feed it to several operators.
pub struct DataStream<T> {
    graph: Rc<RefCell<GraphBuilder>>,
    node: NodeId,
    edge: EdgeKind,
    /// How to read a record's event timestamp, where the stream has event time.
    pub(crate) timestamps: Option<crate::TimestampFn<T>>,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for DataStream<T> {
    fn clone(&self) -> Self {
        DataStream {
            graph: self.graph.clone(),
            node: self.node,
            edge: self.edge.clone(),
            timestamps: self.timestamps.clone(),
            _t: PhantomData,
        }
    }
}

impl<T: Data> DataStream<T> {
    fn new(graph: Rc<RefCell<GraphBuilder>>, node: NodeId) -> Self {
        DataStream {
            graph,
            node,
            edge: EdgeKind::Auto,
            timestamps: None,
            _t: PhantomData,
        }
    }

    /// Sets the parallelism of the operator that produces this stream.
    pub fn parallelism(self, n: usize) -> Self {
        self.graph.borrow_mut().nodes[self.node].parallelism = Some(n);
        self
    }

    /// Names the operator that produces this stream (used in logs, errors and results).
    pub fn name(self, name: &str) -> Self {
        self.graph.borrow_mut().nodes[self.node].name = name.to_string();
        self
    }

    /// Overrides the job's restart kind for the operator that produces this stream (and the
    /// chain it runs in).
    pub fn restart_strategy(self, kind: RestartKind) -> Self {
        self.graph.borrow_mut().nodes[self.node].restart = Some(kind);
        self
    }

    /// How long the operator that produces this stream (and the chain it runs in) may hold a
    /// partly filled batch before sending it — Flink's buffer timeout, for this operator
    /// only; the job's default is `JobConfig::flush_interval`. `Duration::ZERO` is latency
    /// mode: it sends what it has after each input batch (or source call).
    pub fn buffer_timeout(self, timeout: std::time::Duration) -> Self {
        self.graph.borrow_mut().nodes[self.node].flush = Some(timeout);
        self
    }

    pub(crate) fn mark_dead_letters(self) -> Self {
        self.graph.borrow_mut().nodes[self.node].dead_letters = true;
        self
    }

    /// The next operator receives records round robin over its subtasks.
    ///
    /// Like every partitioning call, it applies to the edge to the next operator; a later
    /// `rebalance()`, `broadcast()`, `forward()` or `key_by()` replaces it.
    pub fn rebalance(mut self) -> Self {
        self.edge = EdgeKind::Rebalance;
        self
    }

    /// Every subtask of the next operator receives every record.
    pub fn broadcast(mut self) -> Self {
        self.edge = EdgeKind::Broadcast;
        self
    }

    /// Subtask i feeds subtask i of the next operator; both need the same parallelism (checked
    /// when the job is built). This is the default when parallelisms are equal.
    pub fn forward(mut self) -> Self {
        self.edge = EdgeKind::Forward;
        self
    }

    fn add_node<U: Data>(&self, name: &str, build: Build, out: bool) -> NodeId {
        let mut g = self.graph.borrow_mut();
        let id = g.nodes.len();
        g.nodes.push(NodeDef {
            name: name.to_string(),
            keyed: false,
            restart: None,
            flush: None,
            dead_letters: false,
            parallelism: None,
            max_parallelism: None,
            build,
            in_ops: Some(ops::<T>()),
            out_ops: if out { Some(ops::<U>()) } else { None },
        });
        g.edges.push(EdgeDef {
            from: self.node,
            to: id,
            kind: self.edge.clone(),
        });
        id
    }

    /// Adds a user operator; `factory` builds one instance per subtask.
    pub fn process<O, F>(self, factory: F) -> DataStream<O::Out>
    where
        O: Operator<In = T>,
        F: Fn(&SubtaskInfo) -> O + Send + Sync + 'static,
    {
        self.process_named("process", factory)
    }

    fn process_named<O, F>(self, name: &str, factory: F) -> DataStream<O::Out>
    where
        O: Operator<In = T>,
        F: Fn(&SubtaskInfo) -> O + Send + Sync + 'static,
    {
        let build = Build::Operator(Arc::new(move |info, next| {
            let next: BoxStage<O::Out> = unbox(next)?;
            Ok(boxed::<T>(Box::new(OperatorStage::new(
                factory(info),
                info.clone(),
                next,
            ))))
        }));
        let id = self.add_node::<O::Out>(name, build, true);
        DataStream::new(self.graph, id)
    }

    /// Gives the stream event time: every subtask reads its records' timestamps with
    /// `strategy` and sends watermarks downstream, in band, behind the records they cover
    /// (see the crate's `time` module docs). Chained with the operator before it.
    pub fn assign_timestamps_and_watermarks(
        self,
        strategy: crate::WatermarkStrategy<T>,
    ) -> DataStream<T> {
        let timestamps = strategy.timestamp.clone();
        let build = Build::Operator(Arc::new(move |info, next| {
            let next: BoxStage<T> = unbox(next)?;
            let stage = crate::WatermarkStage::new(strategy.clone(), info.clone(), next);
            Ok(boxed::<T>(Box::new(stage)))
        }));
        let id = self.add_node::<T>("watermarks", build, true);
        let mut out = DataStream::new(self.graph, id);
        out.timestamps = Some(timestamps);
        out
    }

    /// Says how to read this stream's event timestamps, for event-time windows downstream:
    /// the timestamps of records are read from the records themselves (Riffle carries no
    /// hidden timestamp beside a record), so a stream whose type changed since
    /// [`DataStream::assign_timestamps_and_watermarks`] (a `map`, a `process`) names its
    /// timestamp again here. Watermarks are not changed: they keep flowing from the assigner.
    pub fn with_timestamps(
        mut self,
        timestamp: impl Fn(&T) -> i64 + Send + Sync + 'static,
    ) -> Self {
        self.timestamps = Some(Arc::new(timestamp));
        self
    }

    /// Applies `f` to every record.
    pub fn map<U: Data>(self, f: impl Fn(T) -> U + Send + Sync + 'static) -> DataStream<U> {
        let f = Arc::new(f);
        self.process_named("map", move |_| Map {
            f: f.clone(),
            _t: PhantomData,
        })
    }

    /// Keeps the records for which `f` is true.
    pub fn filter(self, f: impl Fn(&T) -> bool + Send + Sync + 'static) -> DataStream<T> {
        let f = Arc::new(f);
        let timestamps = self.timestamps.clone();
        let mut out = self.process_named("filter", move |_| Filter {
            f: f.clone(),
            _t: PhantomData,
        });
        out.timestamps = timestamps;
        out
    }

    /// Emits every item `f` returns for a record.
    pub fn flat_map<U: Data, I: IntoIterator<Item = U>>(
        self,
        f: impl Fn(T) -> I + Send + Sync + 'static,
    ) -> DataStream<U> {
        let f = Arc::new(f);
        self.process_named("flat_map", move |_| FlatMap {
            f: f.clone(),
            _t: PhantomData,
        })
    }

    /// Applies a fallible `f`; an `Err` fails the subtask.
    pub fn try_map<U: Data>(
        self,
        f: impl Fn(T) -> Result<U, UserError> + Send + Sync + 'static,
    ) -> DataStream<U> {
        let f = Arc::new(f);
        self.process_named("try_map", move |_| TryMap {
            f: f.clone(),
            _t: PhantomData,
        })
    }

    /// Partitions the stream by key: every record with the same key goes to the same subtask
    /// of the next operator, over one FIFO channel per upstream subtask (so per-key order from
    /// each upstream subtask is kept).
    pub fn key_by<K: Key, F>(self, f: F) -> KeyedStream<T, K, F>
    where
        F: Fn(&T) -> K + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        let kf = f.clone(); // the concrete closure, so the router inlines key and hash
        let factory = move |p: KeyRouterPlan| -> BoxStage<T> {
            let kf = kf.clone();
            let route = Route::Key {
                hash: move |t: &T| kf(t).key_hash(),
                partitioner: p.routing,
                operator: p.to,
            };
            Box::new(Router::new(route, p.base, p.channels, p.batching, p.start))
        };
        let mut stream = self;
        stream.edge = EdgeKind::Key(Arc::new(KeyRouterFactory(Arc::new(factory))));
        KeyedStream {
            stream,
            key_fn: f,
            _k: PhantomData,
        }
    }

    /// Ends the stream in a user sink; `factory` builds one instance per subtask.
    ///
    /// A sink without its own `.parallelism(n)` runs with the parallelism of its input, so no
    /// exchange is put in front of it (each sink subtask sees its input subtask's records in
    /// order).
    pub fn sink<S, F>(self, factory: F) -> SinkStream
    where
        S: Sink<In = T>,
        F: Fn(&SubtaskInfo) -> S + Send + Sync + 'static,
    {
        self.sink_named("sink", factory)
    }

    pub(crate) fn sink_named<S, F>(self, name: &str, factory: F) -> SinkStream
    where
        S: Sink<In = T>,
        F: Fn(&SubtaskInfo) -> S + Send + Sync + 'static,
    {
        let build = Build::Sink(Arc::new(move |info| {
            boxed::<T>(Box::new(SinkStage::new(factory(info), info.clone())))
        }));
        let id = self.add_node::<()>(name, build, false);
        SinkStream {
            graph: self.graph,
            node: id,
        }
    }

    /// Ends the stream in a function called for every record.
    pub fn sink_fn(self, f: impl Fn(T) + Send + Sync + 'static) -> SinkStream {
        let f = Arc::new(f);
        self.sink_named("sink_fn", move |_| FnSink {
            f: f.clone(),
            _t: PhantomData,
        })
    }
}

/// A sink in the job graph; set its parallelism or name.
pub struct SinkStream {
    graph: Rc<RefCell<GraphBuilder>>,
    node: NodeId,
}

impl SinkStream {
    /// Sets the sink's parallelism.
    pub fn parallelism(self, n: usize) -> Self {
        self.graph.borrow_mut().nodes[self.node].parallelism = Some(n);
        self
    }
    /// Names the sink.
    pub fn name(self, name: &str) -> Self {
        self.graph.borrow_mut().nodes[self.node].name = name.to_string();
        self
    }
}

/// A stream partitioned by a key of type `K` (see [`DataStream::key_by`]); `KF` is the type of
/// the key selector, kept so that keyed operators call it directly.
pub struct KeyedStream<T, K, KF> {
    stream: DataStream<T>,
    key_fn: Arc<KF>,
    _k: PhantomData<fn() -> K>,
}

impl<T: Data, K: Key, KF: Fn(&T) -> K + Send + Sync + 'static> KeyedStream<T, K, KF> {
    /// Adds a keyed operator: the runtime keeps one `O::State` per key.
    pub fn process<O, F>(self, factory: F) -> DataStream<O::Out>
    where
        O: KeyedOperator<Key = K, In = T>,
        F: Fn(&SubtaskInfo) -> O + Send + Sync + 'static,
    {
        self.process_named("keyed_process", factory)
    }

    fn process_named<O, F>(self, name: &str, factory: F) -> DataStream<O::Out>
    where
        O: KeyedOperator<Key = K, In = T>,
        F: Fn(&SubtaskInfo) -> O + Send + Sync + 'static,
    {
        let key_fn = self.key_fn;
        let build = Build::Operator(Arc::new(move |info, next| {
            let next: BoxStage<O::Out> = unbox(next)?;
            let stage = KeyedStage::new(factory(info), key_fn.clone(), info.clone(), next);
            Ok(boxed::<T>(Box::new(stage)))
        }));
        let id = self.stream.add_node::<O::Out>(name, build, true);
        self.stream.graph.borrow_mut().nodes[id].keyed = true;
        DataStream::new(self.stream.graph, id)
    }

    /// Adds a built-in running aggregation (one result per record, handed on a batch at a
    /// time; see [`AggregateStage`]).
    fn aggregate_named<A, F>(self, name: &str, factory: F) -> DataStream<A::Out>
    where
        A: RunningAggregate<Key = K, In = T>,
        F: Fn() -> A + Send + Sync + 'static,
    {
        let key_fn = self.key_fn;
        let build = Build::Operator(Arc::new(move |info, next| {
            let next: BoxStage<A::Out> = unbox(next)?;
            let stage = AggregateStage::new(factory(), key_fn.clone(), info.clone(), next);
            Ok(boxed::<T>(Box::new(stage)))
        }));
        let id = self.stream.add_node::<A::Out>(name, build, true);
        self.stream.graph.borrow_mut().nodes[id].keyed = true;
        DataStream::new(self.stream.graph, id)
    }

    /// Applies `f` to every record, in the subtask that owns the record's key.
    pub fn map<U: Data>(self, f: impl Fn(T) -> U + Send + Sync + 'static) -> DataStream<U> {
        self.stream.map(f)
    }

    /// Keeps the records for which `f` is true, in the subtask that owns the record's key.
    pub fn filter(self, f: impl Fn(&T) -> bool + Send + Sync + 'static) -> DataStream<T> {
        self.stream.filter(f)
    }

    /// Emits every item `f` returns for a record, in the subtask that owns the record's key.
    pub fn flat_map<U: Data, I: IntoIterator<Item = U>>(
        self,
        f: impl Fn(T) -> I + Send + Sync + 'static,
    ) -> DataStream<U> {
        self.stream.flat_map(f)
    }

    /// Combines each record with the key's previous result; emits every new result.
    pub fn reduce(self, f: impl Fn(&T, T) -> T + Send + Sync + 'static) -> DataStream<T> {
        let f = Arc::new(f);
        self.aggregate_named("reduce", move || Reduce {
            f: f.clone(),
            _k: PhantomData,
        })
    }

    /// Folds records into a per-key accumulator starting at `init`; emits `(key, acc)` after
    /// every record.
    pub fn fold<A: Data>(
        self,
        init: A,
        f: impl Fn(&mut A, T) + Send + Sync + 'static,
    ) -> DataStream<(K, A)> {
        let f = Arc::new(f);
        self.aggregate_named("fold", move || Fold {
            init: init.clone(),
            f: f.clone(),
            _k: PhantomData,
        })
    }

    /// A running sum of `value(record)` per key; emits `(key, sum)` after every record.
    pub fn sum<V>(self, value: impl Fn(&T) -> V + Send + Sync + 'static) -> DataStream<(K, V)>
    where
        V: Data + Default + std::ops::AddAssign,
    {
        let value = Arc::new(value);
        self.aggregate_named("sum", move || Sum {
            value: value.clone(),
            _k: PhantomData,
        })
    }
}

struct Map<T, U, F> {
    f: Arc<F>,
    _t: PhantomData<fn(T) -> U>,
}
impl<T: Data, U: Data, F: Fn(T) -> U + Send + Sync + 'static> Operator for Map<T, U, F> {
    type In = T;
    type Out = U;
    #[inline]
    fn process(&mut self, r: T, out: &mut Output<'_, U>) -> Result<(), UserError> {
        out.emit((self.f)(r));
        Ok(())
    }
}

struct TryMap<T, U, F> {
    f: Arc<F>,
    _t: PhantomData<fn(T) -> U>,
}
impl<T: Data, U: Data, F> Operator for TryMap<T, U, F>
where
    F: Fn(T) -> Result<U, UserError> + Send + Sync + 'static,
{
    type In = T;
    type Out = U;
    fn process(&mut self, r: T, out: &mut Output<'_, U>) -> Result<(), UserError> {
        out.emit((self.f)(r)?);
        Ok(())
    }
}

struct Filter<T, F> {
    f: Arc<F>,
    _t: PhantomData<fn(T)>,
}
impl<T: Data, F: Fn(&T) -> bool + Send + Sync + 'static> Operator for Filter<T, F> {
    type In = T;
    type Out = T;
    #[inline]
    fn process(&mut self, r: T, out: &mut Output<'_, T>) -> Result<(), UserError> {
        if (self.f)(&r) {
            out.emit(r);
        }
        Ok(())
    }
}

struct FlatMap<T, U, F> {
    f: Arc<F>,
    _t: PhantomData<fn(T) -> U>,
}
impl<T: Data, U: Data, I, F> Operator for FlatMap<T, U, F>
where
    I: IntoIterator<Item = U>,
    F: Fn(T) -> I + Send + Sync + 'static,
{
    type In = T;
    type Out = U;
    fn process(&mut self, r: T, out: &mut Output<'_, U>) -> Result<(), UserError> {
        for u in (self.f)(r) {
            out.emit(u);
        }
        Ok(())
    }
}

struct Reduce<T, K, F> {
    f: Arc<F>,
    _k: PhantomData<fn(K) -> T>,
}
impl<T: Data, K: Key, F: Fn(&T, T) -> T + Send + Sync + 'static> RunningAggregate
    for Reduce<T, K, F>
{
    type Key = K;
    type In = T;
    type Out = T;
    type State = Option<T>;
    #[inline]
    fn apply(&mut self, _k: &K, s: &mut Option<T>, r: T) -> T {
        let v = match s.take() {
            Some(prev) => (self.f)(&prev, r),
            None => r,
        };
        *s = Some(v.clone());
        v
    }
}

struct Fold<T, K, A, F> {
    init: A,
    f: Arc<F>,
    _k: PhantomData<fn(K, T)>,
}
impl<T: Data, K: Key, A: Data, F: Fn(&mut A, T) + Send + Sync + 'static> RunningAggregate
    for Fold<T, K, A, F>
{
    type Key = K;
    type In = T;
    type Out = (K, A);
    type State = Option<A>;
    #[inline]
    fn apply(&mut self, k: &K, s: &mut Option<A>, r: T) -> (K, A) {
        let acc = s.get_or_insert_with(|| self.init.clone());
        (self.f)(acc, r);
        (k.clone(), acc.clone())
    }
}

/// A running sum per key. Its state is the sum itself (not an `Option` as in [`Fold`]): the
/// value type has a default, so a key's entry in the state table is a third smaller.
struct Sum<T, K, V, F> {
    value: Arc<F>,
    _k: PhantomData<fn(K, T) -> V>,
}
impl<T, K, V, F> RunningAggregate for Sum<T, K, V, F>
where
    T: Data,
    K: Key,
    V: Data + Default + std::ops::AddAssign,
    F: Fn(&T) -> V + Send + Sync + 'static,
{
    type Key = K;
    type In = T;
    type Out = (K, V);
    type State = V;
    #[inline]
    fn apply(&mut self, k: &K, sum: &mut V, r: T) -> (K, V) {
        *sum += (self.value)(&r);
        (k.clone(), sum.clone())
    }
}

struct FnSink<T, F> {
    f: Arc<F>,
    _t: PhantomData<fn(T)>,
}
impl<T: Data, F: Fn(T) + Send + Sync + 'static> Sink for FnSink<T, F> {
    type In = T;
    fn write(&mut self, r: T) -> Result<(), UserError> {
        (self.f)(r);
        Ok(())
    }
}

impl StreamEnv {
    /// The job's dead letters as a stream: records that failed an operator
    /// `PoisonPolicy::max_attempts` times (with `PoisonAction::DeadLetter`). The stream ends
    /// when every part of the job that does not read it has finished.
    pub fn dead_letters(&self) -> DataStream<DeadLetter> {
        let queue = self.dead_letter_queue();
        self.add_source("dead_letters", Some(1), move |_| DeadLetterSource {
            queue: queue.clone(),
        })
        .mark_dead_letters()
    }
}

impl<T: Data, K: Key, KF: Fn(&T) -> K + Send + Sync + 'static> KeyedStream<T, K, KF> {
    /// Groups each key's records into windows (see the crate's `window` module docs).
    pub fn window(self, assigner: crate::WindowAssigner) -> WindowedStream<T, K, KF> {
        WindowedStream {
            keyed: self,
            spec: crate::window::WindowSpec {
                assigner,
                lateness: 0,
                trigger: crate::Trigger::default(),
            },
        }
    }
}

/// A keyed stream cut into windows; finish it with `reduce`, `aggregate` or `process` (`KF`
/// is the key selector's type, as in [`KeyedStream`]).
pub struct WindowedStream<T, K, KF> {
    keyed: KeyedStream<T, K, KF>,
    spec: crate::window::WindowSpec,
}

impl<T: Data, K: Key, KF: Fn(&T) -> K + Send + Sync + 'static> WindowedStream<T, K, KF> {
    /// Keeps each window's state for `lateness` after it fired on time: a record that
    /// arrives in that time is added and the window fires again (a late firing). Records
    /// later than that go to the late-data output. Default: zero.
    pub fn allowed_lateness(mut self, lateness: std::time::Duration) -> Self {
        self.spec.lateness = i64::try_from(lateness.as_millis()).unwrap_or(i64::MAX);
        self
    }

    /// Adds early firings (see [`crate::Trigger`]); the on-time firing always happens.
    pub fn trigger(mut self, trigger: crate::Trigger) -> Self {
        self.spec.trigger = trigger;
        self
    }

    /// Each window's value is its records combined with `f`, incrementally.
    pub fn reduce(self, f: impl Fn(&T, T) -> T + Send + Sync + 'static) -> Windowed<K, T, T> {
        self.build("window_reduce", crate::window::ReduceFn(f))
    }

    /// Each window's value is `agg`'s result over an accumulator that records are added to
    /// as they arrive.
    pub fn aggregate<A: crate::AggregateFunction<T>>(self, agg: A) -> Windowed<K, A::Out, T> {
        self.build("window_aggregate", crate::window::AggregateFn(agg))
    }

    /// Each window's value is `f` of the key, the window and all its records (kept until it
    /// fires; in time-slice order, arrival order within a slice).
    pub fn process<R: Data>(
        self,
        f: impl Fn(&K, &crate::TimeWindow, &[T]) -> R + Send + Sync + 'static,
    ) -> Windowed<K, R, T> {
        self.build("window_process", crate::window::ProcessFn(f))
    }

    fn build<F: crate::window::WindowFunction<K, T>>(
        self,
        name: &str,
        f: F,
    ) -> Windowed<K, F::Out, T> {
        let spec = self.spec;
        let timestamp = self.keyed.stream.timestamps.clone();
        if let Some(reason) = spec.check(timestamp.is_some()) {
            let operator = name.to_string();
            let e = GraphError::InvalidWindow { operator, reason };
            self.keyed.stream.graph.borrow_mut().errors.push(e);
        }
        let f = Arc::new(f);
        let raw = self
            .keyed
            .process_named(name, move |info| crate::window::WindowOperator {
                f: f.clone(),
                spec,
                timestamp: timestamp.clone(),
                late: 0,
                operator: info.operator.clone(),
                _k: PhantomData,
            });
        Windowed { raw }
    }
}

/// A window operator's output: its firings ([`Windowed::results`]) and the records that
/// came too late for all their windows ([`Windowed::late_data`]).
pub struct Windowed<K, R, T> {
    raw: DataStream<crate::WindowEvent<K, R, T>>,
}

impl<K: Key, R: Data, T: Data> Windowed<K, R, T> {
    /// Sets the window operator's parallelism.
    pub fn parallelism(mut self, n: usize) -> Self {
        self.raw = self.raw.parallelism(n);
        self
    }

    /// Names the window operator.
    pub fn name(mut self, name: &str) -> Self {
        self.raw = self.raw.name(name);
        self
    }

    /// The records later than the allowed lateness of every window they belong to, in the
    /// order the window operator's subtasks met them.
    pub fn late_data(&self) -> DataStream<T> {
        self.raw
            .clone()
            .flat_map(|e| match e {
                crate::WindowEvent::Late(t) => Some(t),
                crate::WindowEvent::Fired(_) => None,
            })
            .name("late_data")
    }

    /// Every firing of every window. Its records carry no timestamp of their own; a
    /// window's time is its bounds (`window.max_timestamp()` for a later event-time stage).
    pub fn results(self) -> DataStream<crate::WindowResult<K, R>> {
        self.raw
            .flat_map(|e| match e {
                crate::WindowEvent::Fired(r) => Some(r),
                crate::WindowEvent::Late(_) => None,
            })
            .name("window_results")
            .with_timestamps(|r: &crate::WindowResult<K, R>| r.window.max_timestamp())
    }
}
