//! Riffle's integration tests, gathered in one test binary (one link of the runtime instead
//! of one per file): a module per area and topic, `tests/<area>_<topic>.rs`, and shared
//! helpers in `tests/common/`. Run one area or topic with a filter, e.g.
//! `cargo test --release --test riffle_tests cluster_` or `-- checkpoint_process::`.
//!
//! Tests that start copies of this binary as node or child processes run only the named
//! entry test in them (`--exact <module>::node_process_entry`), which does nothing unless its
//! environment variable is set.

mod common;

mod checkpoint_alignment;
mod checkpoint_exactly_once;
mod checkpoint_process;
mod cli_examples;
mod cluster_bad_input;
mod cluster_data_path;
mod cluster_deadlines;
mod cluster_errors;
mod cluster_etcd_outage;
mod cluster_etcd_secure;
mod cluster_failover;
mod cluster_handshake_flood;
mod cluster_job;
mod cluster_link_reset;
mod cluster_membership;
mod cluster_partial_partition;
mod cluster_partition;
mod cluster_remote;
mod cluster_rescale;
mod cluster_security;
mod connectors_io;
mod errors_bad_input;
mod observe_cli;
mod observe_console;
mod observe_metrics;
mod observe_rest;
mod rescale_in_place;
mod rescale_running;
mod rescale_savepoint;
mod rescale_weights;
mod routing_golden;
mod routing_ring;
mod runtime_backpressure;
mod runtime_latency_mode;
mod runtime_order;
mod supervision_chaos;
mod supervision_strategies;
mod time_timers;
mod time_watermarks;
mod time_windows;
mod time_windows_chaos;
mod time_windows_idle;
mod time_windows_rescale;
mod wordcount_property;
