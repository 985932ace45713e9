//! Word count, the hello-world of stream processing.
//!
//! ```text
//! cargo run --release --example wordcount                      # built-in text
//! cargo run --release --example wordcount -- FILE [-p N]       # a text file, N subtasks
//! cargo run --release --example wordcount -- --help
//! ```
//!
//! Reads lines (split across subtasks), splits them into lowercase words, keys by word and keeps
//! a running count per word; a user sink keeps each word's latest count. Prints the top words
//! and the records each subtask handled.

use riffle::prelude::*;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

const TEXT: &str = "To be, or not to be,--that is the question:--
Whether 'tis nobler in the mind to suffer
The slings and arrows of outrageous fortune
Or to take arms against a sea of troubles,
And by opposing end them?--To die,--to sleep,--
No more; and by a sleep to say we end
The heartache, and the thousand natural shocks
That flesh is heir to,--'tis a consummation
Devoutly to be wish'd. To die,--to sleep;--
To sleep! perchance to dream:--ay, there's the rub;
For in that sleep of death what dreams may come,
When we have shuffled off this mortal coil,
Must give us pause: there's the respect
That makes calamity of so long life;";

/// Keeps the latest running count of each word it sees; merges them when its input ends.
struct LatestCounts {
    local: HashMap<String, u64>,
    all: Arc<Mutex<HashMap<String, u64>>>,
}

impl Sink for LatestCounts {
    type In = (String, u64);
    fn write(&mut self, (word, count): (String, u64)) -> Result<(), UserError> {
        self.local.insert(word, count);
        Ok(())
    }
    fn on_close(&mut self) -> Result<(), UserError> {
        let mut all = self.all.lock().map_err(|_| "counts lock poisoned")?;
        all.extend(self.local.drain());
        Ok(())
    }
}

/// Word count: reads lines, splits them into words, keeps a running count per word and
/// prints the top words and the records each subtask handled.
#[derive(clap::Parser)]
#[command(name = "wordcount")]
struct Args {
    /// A text file to count (default: a built-in text).
    file: Option<std::path::PathBuf>,
    /// Parallel subtasks of each operator (default: the number of cores).
    #[arg(short, long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    parallelism: Option<u32>,
}

fn main() -> std::process::ExitCode {
    riffle::cli::init_logging();
    let args = <Args as clap::Parser>::parse();
    riffle::cli::exit(run(args))
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let parallelism = match args.parallelism {
        Some(p) => p as usize,
        None => std::thread::available_parallelism().map_or(2, |n| n.get()),
    };
    let file = args.file.map(|f| f.display().to_string());
    let env = StreamEnv::new();
    env.set_parallelism(parallelism);
    let lines = match &file {
        Some(path) => env.read_text_file(path),
        None => env.from_collection(TEXT.lines().map(String::from).collect()),
    };
    let counts = Arc::new(Mutex::new(HashMap::new()));
    let sink_counts = counts.clone();
    lines
        .flat_map(|line: String| {
            line.split(|c: char| !c.is_alphanumeric() && c != '\'')
                .filter(|w| !w.is_empty())
                .map(str::to_lowercase)
                .collect::<Vec<_>>()
        })
        .name("tokenize")
        .key_by(|word: &String| word.clone())
        .sum(|_| 1u64)
        .name("count")
        .sink(move |_: &SubtaskInfo| LatestCounts {
            local: HashMap::new(),
            all: sink_counts.clone(),
        })
        .name("latest");

    let job = env.start()?;
    // Records/s on a terminal, for a long file.
    let progress = riffle::cli::show_progress(job.control(), None);
    let result = job.wait()?;
    drop(progress);
    let counts = counts.lock().map_err(|_| "counts lock poisoned")?;
    let mut top: Vec<(&String, &u64)> = counts.iter().collect();
    top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let total: u64 = counts.values().sum();
    println!(
        "{} words, {} distinct, from {} (parallelism {parallelism})\n",
        total,
        counts.len(),
        file.as_deref().unwrap_or("the built-in text")
    );
    println!("top words:");
    for (word, n) in top.iter().take(10) {
        println!("  {n:>8}  {word}");
    }
    println!("\nper-subtask load ({} ms):", result.elapsed.as_millis());
    print!("{}", result.load_table());
    Ok(())
}
