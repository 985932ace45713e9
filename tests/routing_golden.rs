//! Golden routing: fixed keys map to fixed subtasks. The key hash (XXH3-64 over the canonical
//! encoding) and the ring layout are part of Riffle's contract — two processes or two builds
//! must agree on every route — so any change to either breaks this test on purpose.

use riffle::prelude::Key;
use riffle::routing::KeyRing;

fn string_keys() -> Vec<String> {
    [
        "data-0",
        "data-1",
        "data-2",
        "data-42",
        "data-99",
        "apple",
        "banana",
        "",
        "ü-unicode",
        "riffle",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn int_keys() -> Vec<u64> {
    vec![0, 1, 2, 3, 42, 1000, 65_535, 1 << 32, u64::MAX]
}

fn routes(n: usize) -> (Vec<usize>, Vec<usize>) {
    let ring = KeyRing::new(n);
    let s = string_keys()
        .iter()
        .map(|k| ring.route_hash(k.key_hash()))
        .collect();
    let i = int_keys()
        .iter()
        .map(|k| ring.route_hash(k.key_hash()))
        .collect();
    (s, i)
}

#[test]
fn key_hashes_are_pinned() {
    let got: Vec<u64> = vec![
        "data-0".to_string().key_hash(),
        42u64.key_hash(),
        42u32.key_hash(),
        (-1i64).key_hash(),
    ];
    println!("{got:?}");
    assert_eq!(got, GOLDEN_HASHES);
}

#[test]
fn routes_are_pinned_for_4_and_8_subtasks() {
    let (s4, i4) = routes(4);
    let (s8, i8) = routes(8);
    println!("N=4 strings {s4:?} ints {i4:?}");
    println!("N=8 strings {s8:?} ints {i8:?}");
    assert_eq!(s4, GOLDEN_STR_4);
    assert_eq!(i4, GOLDEN_INT_4);
    assert_eq!(s8, GOLDEN_STR_8);
    assert_eq!(i8, GOLDEN_INT_8);
}

// XXH3-64 (seed 0) of b"data-0", of 42 as u64 little-endian (so also 42u32), of -1 as i64 LE;
// the same values as the reference implementation (e.g. Python's `xxhash.xxh3_64_intdigest`).
const GOLDEN_HASHES: [u64; 4] = [
    2671723122391971039,
    15395265915043915720,
    15395265915043915720,
    5841669975847748627,
];
const GOLDEN_STR_4: [usize; 10] = [0, 1, 2, 3, 2, 3, 3, 2, 3, 1];
const GOLDEN_INT_4: [usize; 9] = [3, 1, 1, 2, 2, 0, 3, 0, 1];
const GOLDEN_STR_8: [usize; 10] = [4, 1, 4, 6, 4, 3, 3, 7, 3, 1];
const GOLDEN_INT_8: [usize; 9] = [3, 5, 1, 6, 2, 0, 4, 6, 1];
