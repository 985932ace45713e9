//! The consistent-hash ring: balance, movement on rescale, and the compiled table.

use riffle::prelude::Key;
use riffle::routing::{canonical_key_bytes, KeyRing, ModuloPartitioner, Partitioner};

const KEYS: usize = 100_000;

fn keys() -> Vec<u64> {
    (0..KEYS).map(|i| format!("key-{i}").key_hash()).collect()
}

fn loads(p: &dyn Partitioner, hashes: &[u64]) -> Vec<usize> {
    let mut l = vec![0; p.parallelism()];
    for &h in hashes {
        l[p.route(h)] += 1;
    }
    l
}

fn max_over_mean(l: &[usize]) -> f64 {
    let mean = l.iter().sum::<usize>() as f64 / l.len() as f64;
    *l.iter().max().unwrap_or(&0) as f64 / mean
}

fn moved(a: &dyn Partitioner, b: &dyn Partitioner, hashes: &[u64]) -> usize {
    hashes.iter().filter(|&&h| a.route(h) != b.route(h)).count()
}

#[test]
fn balance_is_within_ten_percent_for_every_parallelism_up_to_16() {
    let hashes = keys();
    let mut worst = (0, 0.0);
    for n in 2..=16 {
        let ratio = max_over_mean(&loads(&KeyRing::new(n), &hashes));
        println!("N = {n:2}: max/mean = {ratio:.3}");
        if ratio > worst.1 {
            worst = (n, ratio);
        }
        assert!(ratio <= 1.10, "N = {n}: max/mean load {ratio:.3} > 1.10");
    }
    println!("worst: N = {} with {:.3}", worst.0, worst.1);
}

#[test]
fn rescale_moves_about_one_share_and_far_less_than_modulo() {
    let hashes = keys();
    for n in 1..=15 {
        let (a, b) = (KeyRing::new(n), KeyRing::new(n + 1));
        let ring = moved(&a, &b, &hashes);
        let modulo = moved(
            &ModuloPartitioner::new(n),
            &ModuloPartitioner::new(n + 1),
            &hashes,
        );
        let ideal = KEYS as f64 / (n + 1) as f64;
        println!(
            "{n:2} -> {:2}: ring moved {ring:6} ({:.3} of ideal), modulo moved {modulo:6}",
            n + 1,
            ring as f64 / ideal
        );
        assert!(
            ring as f64 <= 1.25 * ideal,
            "{n} -> {}: ring moved {ring} keys, ideal {ideal:.0}",
            n + 1
        );
        // From 1 to 2 subtasks both must move half of the keys; past that the ring wins.
        if n >= 2 {
            assert!(
                ring < modulo,
                "{n} -> {}: ring moved {ring} >= modulo {modulo}",
                n + 1
            );
        }
        // Keys only move to the new subtask when growing.
        for &h in &hashes {
            let (from, to) = (a.route(h), b.route(h));
            assert!(
                from == to || to == n,
                "a key moved between old subtasks {from} -> {to}"
            );
        }
    }
}

#[test]
fn migrated_ranges_list_exactly_the_moving_keys() {
    let hashes = keys();
    let (a, b) = (KeyRing::new(4), KeyRing::new(5));
    let ranges = a.migrated_ranges(&b);
    for &h in &hashes {
        let listed = ranges.iter().find(|(r, _, _)| r.contains(&h));
        match listed {
            Some((_, src, dst)) => {
                assert_eq!((*src, *dst), (a.route(h), b.route(h)));
            }
            None => assert_eq!(a.route(h), b.route(h)),
        }
    }
}

#[test]
fn compiled_table_agrees_with_the_crate() {
    for n in [1, 2, 4, 7, 8, 16] {
        let ring = KeyRing::new(n);
        for i in 0..20_000u64 {
            let s = format!("data-{i}");
            assert_eq!(
                ring.route_hash(s.key_hash()),
                ring.route_with_crate(&canonical_key_bytes(&s))
            );
            assert_eq!(
                ring.route_hash(i.key_hash()),
                ring.route_with_crate(&canonical_key_bytes(&i))
            );
            let h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            assert_eq!(ring.route_hash(h), ring.route_hash_slow(h));
        }
    }
}
