//! Wordcount equals a sequential count for random texts and parallelisms 1..=4.

use proptest::prelude::*;
use riffle::prelude::*;
use std::collections::HashMap;

fn riffle_counts(lines: Vec<String>, p: usize, batch: usize) -> HashMap<String, u64> {
    let env = StreamEnv::new();
    env.set_parallelism(p);
    env.configure(|c| c.batch_size = batch);
    let out = env
        .from_collection(lines)
        .flat_map(|l: String| {
            l.split_whitespace()
                .map(str::to_lowercase)
                .collect::<Vec<_>>()
        })
        .key_by(|w: &String| w.clone())
        .sum(|_| 1u64)
        .collect();
    env.execute().expect("wordcount job");
    // The running sums only grow, so each word's count is its largest update.
    let mut counts = HashMap::new();
    for (w, n) in out.take() {
        let c = counts.entry(w).or_insert(0);
        *c = n.max(*c);
    }
    counts
}

fn sequential(lines: &[String]) -> HashMap<String, u64> {
    let mut counts = HashMap::new();
    for w in lines.iter().flat_map(|l| l.split_whitespace()) {
        *counts.entry(w.to_lowercase()).or_insert(0) += 1;
    }
    counts
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn wordcount_matches_a_sequential_count(
        lines in prop::collection::vec("[a-eA-E ]{0,40}", 0..200),
        p in 1usize..=4,
        batch in prop::sample::select(vec![1usize, 3, 64, 1024]),
    ) {
        prop_assert_eq!(riffle_counts(lines.clone(), p, batch), sequential(&lines));
    }
}
