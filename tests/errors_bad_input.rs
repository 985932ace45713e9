//! Bad input gets a typed error with a clear message; nothing panics, nothing hangs.

use riffle::errors::{ConnectorError, ErrorKind, FailureCause, GraphError};
use riffle::prelude::*;

fn connector_error(e: &JobError) -> &ConnectorError {
    match e {
        JobError::SubtaskFailed {
            cause: FailureCause::Error(err),
            ..
        }
        | JobError::RestartLimit {
            cause: FailureCause::Error(err),
            ..
        } => err
            .downcast_ref::<ConnectorError>()
            .expect("a connector error"),
        other => panic!("expected a connector failure, got {other:?}"),
    }
}

/// A job that fails fast instead of restarting.
fn fail_fast() -> StreamEnv {
    let env = StreamEnv::new();
    env.configure(|c| c.restart = RestartStrategy::never());
    env
}

#[test]
fn missing_input_file() {
    let env = fail_fast();
    env.read_text_file("/definitely/not/here.txt").count();
    let err = env.execute().expect_err("must fail");
    assert!(
        matches!(connector_error(&err), ConnectorError::ReadFile { path, .. } if path == "/definitely/not/here.txt")
    );
    let msg = err.to_string();
    assert!(
        msg.contains("cannot read input file /definitely/not/here.txt"),
        "{msg}"
    );
    assert_eq!(err.kind(), ErrorKind::User);

    // With the default strategy too: a missing file is permanent, so the job fails at once
    // with the same root cause instead of restarting the source until the intensity limit.
    let env = StreamEnv::new();
    env.configure(|c| c.restart.backoff.initial = std::time::Duration::ZERO);
    env.read_text_file("/definitely/not/here.txt").count();
    let err = env.execute().expect_err("must fail");
    assert!(matches!(err, JobError::SubtaskFailed { .. }), "{err:?}");
    assert!(matches!(
        connector_error(&err),
        ConnectorError::ReadFile { .. }
    ));
}

/// An operator error wrapped in `Permanent` fails the job at once; the same error unwrapped
/// is retried as the restart strategy and the poison policy say.
#[test]
fn a_permanent_error_is_not_retried() {
    use riffle::errors::Permanent;
    use std::sync::atomic::{AtomicU32, Ordering};
    static CALLS: [AtomicU32; 2] = [AtomicU32::new(0), AtomicU32::new(0)];
    for permanent in [true, false] {
        let calls = &CALLS[usize::from(permanent)];
        let env = StreamEnv::new();
        env.configure(|c| {
            c.restart.backoff.initial = std::time::Duration::ZERO;
            c.restart.backoff.max = std::time::Duration::ZERO;
        });
        env.from_collection(vec![1u64, 2, 3])
            .parallelism(1)
            .try_map(move |x: u64| -> Result<u64, UserError> {
                if x != 2 {
                    return Ok(x);
                }
                calls.fetch_add(1, Ordering::SeqCst);
                Err(if permanent {
                    Permanent::new("no such table").into()
                } else {
                    "no such table".into()
                })
            })
            .count();
        let outcome = env.execute();
        let n = calls.load(Ordering::SeqCst);
        if permanent {
            let err = outcome.expect_err("fails");
            assert!(err.to_string().contains("no such table"), "{err}");
            assert!(matches!(err, JobError::SubtaskFailed { .. }), "{err:?}");
            assert_eq!(n, 1, "tried once");
        } else {
            // The default poison policy: 3 attempts, then the record is a dead letter.
            let result = outcome.expect("finishes");
            assert_eq!(result.dead_letters.len(), 1);
            assert_eq!(n, 3, "tried 3 times");
        }
    }
}

#[test]
fn unreachable_socket() {
    // A port that was just free: bind, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let env = fail_fast();
    env.socket_text_stream(&addr).count();
    let err = env.execute().expect_err("must fail");
    assert!(matches!(connector_error(&err), ConnectorError::Connect { addr: a, .. } if *a == addr));
    assert!(
        err.to_string()
            .contains(&format!("cannot connect to {addr}")),
        "{err}"
    );
}

#[test]
fn zero_parallelism() {
    let env = StreamEnv::new();
    env.sequence(0..10).map(|x| x + 1).parallelism(0).discard();
    let err = env.execute().expect_err("must fail");
    assert!(
        matches!(&err, JobError::Graph(GraphError::ZeroParallelism { operator }) if operator == "map")
    );
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(
        err.to_string().contains("operator `map` has parallelism 0"),
        "{err}"
    );

    let env = StreamEnv::new();
    env.set_parallelism(0);
    env.sequence(0..10).discard();
    assert!(matches!(
        env.execute(),
        Err(JobError::Graph(GraphError::ZeroParallelism { .. }))
    ));
}

#[test]
fn forward_edge_between_different_parallelisms() {
    let env = StreamEnv::new();
    env.sequence(0..10)
        .parallelism(2)
        .forward()
        .map(|x| x)
        .parallelism(3)
        .discard();
    let err = env.execute().expect_err("must fail");
    match &err {
        JobError::Graph(GraphError::ForwardParallelismMismatch {
            from,
            to,
            from_parallelism: 2,
            to_parallelism: 3,
        }) => {
            assert_eq!((from.as_str(), to.as_str()), ("sequence", "map"));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("use rebalance()"), "{err}");
    // Without an explicit forward() the same job rebalances and runs.
    let env = StreamEnv::new();
    let n = env
        .sequence(0..10)
        .parallelism(2)
        .map(|x| x)
        .parallelism(3)
        .count();
    env.execute().expect("rebalanced job");
    assert_eq!(n.get(), 10);
}

#[test]
fn panicking_user_function_names_the_operator() {
    let env = fail_fast();
    env.set_parallelism(2);
    env.sequence(0..1000)
        .map(|x| if x == 500 { panic!("boom at {x}") } else { x })
        .name("exploding")
        .discard();
    let err = env.execute().expect_err("must fail");
    match &err {
        JobError::SubtaskFailed {
            operator,
            cause: FailureCause::Panic(m),
            ..
        } => {
            assert_eq!(operator, "exploding");
            assert_eq!(m, "boom at 500");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn error_returned_by_user_code() {
    let env = fail_fast();
    env.sequence(0..100)
        .try_map(|x| {
            if x == 7 {
                Err(format!("bad record {x}").into())
            } else {
                Ok(x)
            }
        })
        .discard();
    let err = env.execute().expect_err("must fail");
    assert!(
        err.to_string()
            .contains("operator `try_map` returned error: bad record 7"),
        "{err}"
    );
}

#[test]
fn graph_without_sink_and_non_parallel_source() {
    let env = StreamEnv::new();
    let _ = env.sequence(0..10).map(|x| x);
    assert!(matches!(
        env.execute(),
        Err(JobError::Graph(GraphError::NoSink))
    ));

    let env = StreamEnv::new();
    env.socket_text_stream("127.0.0.1:9")
        .parallelism(2)
        .discard();
    assert!(matches!(
        env.execute(),
        Err(JobError::Graph(GraphError::NonParallel {
            parallelism: 2,
            ..
        }))
    ));
}

#[test]
fn invalid_configuration() {
    for f in [
        (|c: &mut JobConfig| c.batch_size = 0) as fn(&mut JobConfig),
        |c| c.credits = 0,
        |c| c.workers = Some(0),
    ] {
        let env = StreamEnv::new();
        env.configure(f);
        env.sequence(0..10).discard();
        assert!(matches!(
            env.execute(),
            Err(JobError::Graph(GraphError::InvalidConfig { .. }))
        ));
    }
}
