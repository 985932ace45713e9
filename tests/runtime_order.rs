//! Per-key order: one key always travels one FIFO channel from each upstream subtask, so the
//! records of a key that one source subtask produced arrive everywhere downstream in the order
//! they were produced — through chains, key_by exchanges and changes of parallelism.
//!
//! What is *not* promised (as in Flink): order between records of a key that took different
//! paths. A `rebalance()` between a source and a `key_by` spreads one key's records over several
//! subtasks, and they meet again at the keyed operator through different channels; this test
//! therefore keys every exchange that must keep order. `rebalance().key_by(..)` is fine: the
//! last partitioning of a stream wins, as in Flink.

use riffle::prelude::*;
use riffle::testing::run_local;
use std::collections::HashMap;

/// (key, origin subtask, sequence number of the key at that origin)
type Rec = (u32, u32, u64);

#[test]
fn every_key_arrives_in_source_order_through_key_by_exchanges() {
    const PER_SOURCE: u64 = 200_000;
    const KEYS: u64 = 97;
    let out = run_local(|env| {
        env.set_parallelism(4);
        env.configure(|c| c.batch_size = 64); // many batches, many interleavings
        env.source(|info: &SubtaskInfo| SeqSource {
            origin: info.index as u32,
            next: 0,
        })
        .name("numbered")
        // Chained, equal parallelism: each source subtask feeds its own mapper.
        .map(|r: Rec| r)
        .key_by(|r: &Rec| r.0)
        .process(|_: &SubtaskInfo| Check)
        .map(|r: Rec| r)
        .key_by(|r: &Rec| r.0)
        .map_keyed_identity()
    });
    assert_eq!(out.len() as u64, 4 * PER_SOURCE);
    let mut last: HashMap<(u32, u32), u64> = HashMap::new();
    let mut per_key_origin: HashMap<(u32, u32), u64> = HashMap::new();
    for (key, origin, seq) in out {
        let prev = last.insert((key, origin), seq);
        if let Some(p) = prev {
            assert!(seq > p, "key {key} from source {origin}: {seq} after {p}");
        }
        *per_key_origin.entry((key, origin)).or_default() += 1;
    }
    assert_eq!(per_key_origin.len() as u64, 4 * KEYS);

    struct SeqSource {
        origin: u32,
        next: u64,
    }
    impl Source for SeqSource {
        type Out = Rec;
        fn produce(&mut self, out: &mut Output<'_, Rec>) -> Result<SourceStatus, UserError> {
            for _ in 0..out.budget() {
                if self.next == PER_SOURCE {
                    return Ok(SourceStatus::Finished);
                }
                let key = (self.next % KEYS) as u32;
                out.emit((key, self.origin, self.next / KEYS));
                self.next += 1;
            }
            Ok(SourceStatus::More)
        }
    }
}

/// Checks order inside the job too: the keyed operator sees each (key, origin) in order.
#[derive(Default)]
struct Check;

impl KeyedOperator for Check {
    type Key = u32;
    type In = Rec;
    type Out = Rec;
    type State = HashMap<u32, u64>;
    fn process(
        &mut self,
        _key: &u32,
        last: &mut HashMap<u32, u64>,
        r: Rec,
        out: &mut Output<'_, Rec>,
    ) -> Result<(), UserError> {
        if let Some(prev) = last.insert(r.1, r.2) {
            if r.2 <= prev {
                return Err(format!("out of order inside the job: {r:?} after {prev}").into());
            }
        }
        out.emit(r);
        Ok(())
    }
}

trait KeyedIdentity {
    fn map_keyed_identity(self) -> DataStream<Rec>;
}

impl<F: Fn(&Rec) -> u32 + Send + Sync + 'static> KeyedIdentity for KeyedStream<Rec, u32, F> {
    fn map_keyed_identity(self) -> DataStream<Rec> {
        self.process(|_: &SubtaskInfo| Check).parallelism(2)
    }
}

/// The load report: records and distinct keys per keyed subtask add up.
#[test]
fn the_load_report_counts_records_and_distinct_keys_per_subtask() {
    let env = StreamEnv::new();
    env.set_parallelism(3);
    env.sequence(0..90_000)
        .key_by(|x: &u64| x % 1_000)
        .sum(|x| *x)
        .discard();
    let result = env.execute().expect("job");
    let keyed = result.chain("sum");
    assert_eq!(keyed.len(), 3);
    assert_eq!(keyed.iter().map(|m| m.distinct_keys).sum::<u64>(), 1_000);
    assert_eq!(keyed.iter().map(|m| m.records_in).sum::<u64>(), 90_000);
    assert!(
        keyed.iter().all(|m| m.distinct_keys > 250),
        "balanced: {keyed:?}"
    );
    print!("{}", result.load_table());
}

/// Counts records per key and emits each key's total only when the input ends: `on_close`
/// sees the state of every key its subtask holds.
struct TotalsAtClose;

impl KeyedOperator for TotalsAtClose {
    type Key = u64;
    type In = u64;
    type Out = (u64, u64);
    type State = u64;

    fn process(
        &mut self,
        _key: &u64,
        count: &mut u64,
        _record: u64,
        _out: &mut Output<'_, (u64, u64)>,
    ) -> Result<(), UserError> {
        *count += 1;
        Ok(())
    }

    fn on_close(
        &mut self,
        states: KeyedStates<'_, u64, u64>,
        out: &mut Output<'_, (u64, u64)>,
    ) -> Result<(), UserError> {
        for (key, count) in states.iter() {
            out.emit((*key, *count));
        }
        Ok(())
    }
}

#[test]
fn a_keyed_operator_sees_every_keys_state_when_its_input_ends() {
    let mut totals = run_local(|env| {
        env.set_parallelism(3);
        env.sequence(0..10_000)
            .key_by(|x: &u64| x % 7)
            .process(|_: &SubtaskInfo| TotalsAtClose)
    });
    totals.sort_unstable();
    let expected: Vec<(u64, u64)> = (0..7)
        .map(|k| (k, (0..10_000u64).filter(|x| x % 7 == k).count() as u64))
        .collect();
    assert_eq!(totals, expected);
}
