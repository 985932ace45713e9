//! Built-in connectors: file lines split across subtasks, file parts, TCP socket, collections.

use riffle::prelude::*;
use riffle::testing::run_local;
use std::io::Write;
use std::net::TcpListener;

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

#[test]
fn file_lines_are_read_exactly_once_at_any_parallelism() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("input.txt");
    // Lines of very different lengths, empty lines, a CRLF line, no final newline.
    let mut lines: Vec<String> = (0..5000)
        .map(|i| "x".repeat(i % 97) + &i.to_string())
        .collect();
    lines.insert(10, String::new());
    lines.insert(20, String::new());
    let mut text = lines.join("\n");
    text = text.replacen("\n", "\r\n", 1);
    std::fs::write(&path, &text).expect("write input");
    for p in 1..=5 {
        let path = path.clone();
        let got = run_local(move |env| env.read_text_file(path).parallelism(p));
        assert_eq!(sorted(got), sorted(lines.clone()), "parallelism {p}");
    }
}

#[test]
fn file_sink_writes_one_part_per_subtask() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let env = StreamEnv::new();
    env.sequence(0..10_000).parallelism(3).write_text_file(&out);
    env.execute().expect("job");
    let mut all = Vec::new();
    for i in 0..3 {
        let part = std::fs::read_to_string(out.join(format!("part-{i}"))).expect("part file");
        let nums: Vec<u64> = part.lines().map(|l| l.parse().expect("number")).collect();
        assert!(!nums.is_empty(), "part {i} is empty");
        all.extend(nums);
    }
    assert!(!out.join("part-3").exists());
    assert_eq!(sorted(all), (0..10_000).collect::<Vec<_>>());
}

#[test]
fn socket_text_stream_reads_until_the_peer_closes() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let sent: Vec<String> = (0..20_000).map(|i| format!("line {i}")).collect();
    let to_send = sent.clone();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        for l in to_send {
            writeln!(conn, "{l}").expect("write");
        }
    });
    let got = run_local(move |env| env.socket_text_stream(&addr).map(|l: String| l));
    server.join().expect("server");
    // One subtask, one connection: the order is kept too.
    assert_eq!(got, sent);
}

#[test]
fn collections_generators_and_counts() {
    let got = run_local(|env| env.from_iter((0..1000u32).map(|i| i * 2)).parallelism(3));
    assert_eq!(sorted(got), (0..1000).map(|i| i * 2).collect::<Vec<u32>>());

    let env = StreamEnv::new();
    env.set_parallelism(4);
    let evens = env.sequence(10..1_000_010).filter(|x| x % 2 == 0).count();
    let all = env.generate(12345, |i| i).count();
    env.execute().expect("job");
    assert_eq!(evens.get(), 500_000);
    assert_eq!(all.get(), 12345);
}

#[test]
fn broadcast_reaches_every_subtask_and_streams_can_fan_out() {
    let env = StreamEnv::new();
    let source = env.sequence(0..100).parallelism(1);
    let copies = source
        .clone()
        .broadcast()
        .map(|x| x)
        .parallelism(3)
        .collect();
    let doubled = source.map(|x| x * 2).collect();
    env.execute().expect("job");
    let mut expect: Vec<u64> = (0..100).flat_map(|x| [x, x, x]).collect();
    expect.sort();
    assert_eq!(sorted(copies.take()), expect);
    assert_eq!(
        sorted(doubled.take()),
        (0..100).map(|x| x * 2).collect::<Vec<_>>()
    );
}

#[test]
fn reduce_fold_and_operator_hooks() {
    struct Total {
        sum: u64,
    }
    impl Operator for Total {
        type In = u64;
        type Out = u64;
        fn process(&mut self, r: u64, _out: &mut Output<'_, u64>) -> Result<(), UserError> {
            self.sum += r;
            Ok(())
        }
        fn on_close(&mut self, out: &mut Output<'_, u64>) -> Result<(), UserError> {
            out.emit(self.sum);
            Ok(())
        }
    }
    let totals = run_local(|env| {
        env.sequence(1..101)
            .parallelism(4)
            .process(|_: &SubtaskInfo| Total { sum: 0 })
            .parallelism(1)
    });
    assert_eq!(totals, vec![5050]);

    let maxes = run_local(|env| {
        env.from_collection(vec![(1u8, 5u64), (2, 1), (1, 9), (2, 7), (1, 3)])
            .parallelism(1)
            .key_by(|r: &(u8, u64)| r.0)
            .reduce(|a, b| (a.0, a.1.max(b.1)))
            .parallelism(2)
    });
    let last = |k: u8| maxes.iter().filter(|r| r.0 == k).map(|r| r.1).max();
    assert_eq!((last(1), last(2)), (Some(9), Some(7)));

    let folded = run_local(|env| {
        env.from_collection(vec!["a", "b", "a"].into_iter().map(String::from).collect())
            .key_by(|s: &String| s.clone())
            .fold(String::new(), |acc, s| acc.push_str(&s))
    });
    assert!(folded.contains(&("a".to_string(), "aa".to_string())));
}
