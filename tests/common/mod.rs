//! Helpers shared by the integration tests.
#![allow(dead_code)]

use riffle::prelude::*;
use std::time::Duration;

/// A restart strategy for chaos runs: many restarts allowed, short backoff.
pub fn chaos_restarts(kind: RestartKind) -> RestartStrategy {
    let mut s = RestartStrategy {
        kind,
        max_restarts: 10_000,
        window: Duration::from_secs(600),
        ..RestartStrategy::default()
    };
    s.backoff.initial = Duration::from_micros(200);
    s.backoff.max = Duration::from_millis(5);
    s
}

/// The seed for a chaos test: `RIFFLE_CHAOS_SEED` if set, else `default`.
pub fn seed(default: u64) -> u64 {
    std::env::var("RIFFLE_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Sorted copy.
pub fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

/// Logs to stderr when `RIFFLE_LOG` is set (e.g. `RIFFLE_LOG=debug`).
pub fn init_logging() {
    if let Ok(filter) = std::env::var("RIFFLE_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .try_init();
    }
}
