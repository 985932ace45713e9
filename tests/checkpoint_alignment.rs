//! Barrier alignment: a keyed operator with two input channels, one fed by a slow source.
//! Every checkpoint's snapshot of the operator must hold exactly the records each source
//! emitted before its barrier — nothing that followed a barrier on the fast channel.

use riffle::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Duration;

const PER_SOURCE: u64 = 30_000;
const JOB: &str = "alignment";

/// Emits (origin, seq) for seq in 0..PER_SOURCE; subtask 1 is slow.
struct Numbered {
    origin: u64,
    next: u64,
}

impl Source for Numbered {
    type Out = (u64, u64);
    fn produce(&mut self, out: &mut Output<'_, (u64, u64)>) -> Result<SourceStatus, UserError> {
        if self.origin == 1 {
            // The slow input (workload shape, not synchronisation).
            std::thread::sleep(Duration::from_micros(300));
        }
        for _ in 0..64 {
            if self.next == PER_SOURCE {
                return Ok(SourceStatus::Finished);
            }
            out.emit((self.origin, self.next));
            self.next += 1;
        }
        Ok(SourceStatus::More)
    }
    fn position(&self) -> Result<Option<Position>, UserError> {
        Position::encode(&self.next).map(Some)
    }
    fn seek(&mut self, p: &Position) -> Result<(), UserError> {
        self.next = p.decode()?;
        Ok(())
    }
}

/// Per key and origin: how many records, and the largest seq.
#[derive(Default, Serialize, Deserialize)]
struct Seen(HashMap<u64, (u64, u64)>);

struct Track;

impl KeyedOperator for Track {
    type Key = u64;
    type In = (u64, u64);
    type Out = u64;
    type State = Seen;
    fn process(
        &mut self,
        _key: &u64,
        seen: &mut Seen,
        (origin, seq): (u64, u64),
        _out: &mut Output<'_, u64>,
    ) -> Result<(), UserError> {
        let e = seen.0.entry(origin).or_default();
        *e = (e.0 + 1, e.1.max(seq));
        Ok(())
    }
}

#[test]
fn snapshots_hold_exactly_the_records_before_each_barrier() {
    let dir = tempfile::tempdir().expect("tempdir");
    let env = StreamEnv::new();
    env.configure(|c| {
        c.name = JOB.to_string();
        c.batch_size = 64;
        let mut cp = CheckpointConfig::every(Duration::from_millis(5)).in_dir(dir.path());
        cp.keep = 10_000;
        c.checkpoint = Some(cp);
    });
    env.source(|info: &SubtaskInfo| Numbered {
        origin: info.index as u64,
        next: 0,
    })
    .parallelism(2)
    .key_by(|r: &(u64, u64)| r.1 % 16)
    .process(|_: &SubtaskInfo| Track)
    .parallelism(1)
    .discard();
    env.execute().expect("job");

    let root = dir.path().join(JOB);
    let mut checked = 0;
    let mut skewed = 0;
    for entry in std::fs::read_dir(&root).expect("checkpoints").flatten() {
        let cp = FsStore::load_dir(&entry.path()).expect("checkpoint loads");
        let pos = |s: usize| -> u64 {
            let t = cp.task(0, s).expect("source snapshot");
            t.position
                .as_ref()
                .expect("position")
                .decode()
                .expect("u64")
        };
        let (p0, p1) = (pos(0), pos(1));
        let keyed = cp.task(1, 0).expect("operator snapshot");
        let entries: Vec<(u64, u64, Seen)> =
            rmp_serde::from_slice(&keyed.states[0]).expect("keyed state");
        let mut totals: HashMap<u64, (u64, u64)> = HashMap::new();
        for (_, _, seen) in entries {
            for (origin, (n, max)) in seen.0 {
                let t = totals.entry(origin).or_default();
                *t = (t.0 + n, t.1.max(max));
            }
        }
        for (origin, p) in [(0, p0), (1, p1)] {
            let (n, max) = totals.get(&origin).copied().unwrap_or((0, 0));
            assert_eq!(n, p, "checkpoint {}: origin {origin} had emitted {p} before its barrier, the snapshot holds {n}", cp.id);
            if n > 0 {
                assert!(
                    max < p,
                    "checkpoint {}: a record after the barrier is in the snapshot",
                    cp.id
                );
            }
        }
        checked += 1;
        if p0.abs_diff(p1) > 1_000 {
            skewed += 1;
        }
    }
    println!("{checked} checkpoints checked, {skewed} taken while the inputs were far apart");
    assert!(
        checked >= 5,
        "too few checkpoints ({checked}) to say anything"
    );
    assert!(
        skewed >= 1,
        "the inputs never drifted apart; the test would prove nothing"
    );
}
