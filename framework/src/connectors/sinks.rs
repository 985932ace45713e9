use crate::data::Data;
use crate::error::{ConnectorError, UserError};
use crate::operator::{Sink, SubtaskInfo};
use crate::stream::{DataStream, SinkStream};
use std::fmt::{Debug, Display};
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// The records a [`DataStream::collect`] sink received, readable after the job ran.
///
/// Without checkpointing each subtask appends the records of every completed batch. With
/// checkpointing the sink is transactional: records written between two barriers are staged
/// under the checkpoint and become visible only when that checkpoint completes, so the handle
/// shows exactly-once output through any failure. Either way the records one subtask received
/// appear in their arrival order.
pub struct CollectHandle<T> {
    inner: Arc<Mutex<Collected<T>>>,
}

/// The collect sink's "external system": committed records and open transactions.
struct Collected<T> {
    committed: Vec<T>,
    /// (checkpoint, subtask) → records staged by that subtask's `pre_commit`.
    staged: Staged<Vec<T>>,
}

impl<T> Clone for CollectHandle<T> {
    fn clone(&self) -> Self {
        CollectHandle {
            inner: self.inner.clone(),
        }
    }
}

impl<T> CollectHandle<T> {
    fn lock(&self) -> MutexGuard<'_, Collected<T>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes every committed record collected so far.
    pub fn take(&self) -> Vec<T> {
        std::mem::take(&mut self.lock().committed)
    }

    /// How many records are committed.
    pub fn len(&self) -> usize {
        self.lock().committed.len()
    }

    /// Whether no record is committed.
    pub fn is_empty(&self) -> bool {
        self.lock().committed.is_empty()
    }
}

/// How many records a [`DataStream::count`] sink received (committed ones, with
/// checkpointing; see [`CollectHandle`]).
#[derive(Clone, Default)]
pub struct CountHandle {
    inner: Arc<Counted>,
}

impl CountHandle {
    /// The count (complete once the job finished).
    pub fn get(&self) -> u64 {
        self.inner.committed.load(Ordering::Acquire)
    }
}

struct CollectSink<T> {
    local: Vec<T>,
    subtask: usize,
    parallelism: usize,
    shared: Arc<Mutex<Collected<T>>>,
}

/// Whether subtask `index` of `parallelism` answers for the transactions of subtask `s`: its
/// own, and those of subtasks a lower parallelism no longer runs (`s mod parallelism`), so
/// that every transaction a restored checkpoint covers is committed, whoever staged it.
fn answers_for(index: usize, parallelism: usize, s: usize) -> bool {
    s == index || (s >= parallelism && s % parallelism.max(1) == index)
}

/// The open transactions of an in-memory sink: (checkpoint, subtask) → what it staged.
type Staged<V> = std::collections::BTreeMap<(u64, usize), V>;

/// Takes out, in checkpoint order, the transactions of checkpoints up to `checkpoint` staged
/// by the subtasks `ours` says.
fn take_ready<V>(staged: &mut Staged<V>, checkpoint: u64, ours: impl Fn(usize) -> bool) -> Vec<V> {
    let ready: Vec<(u64, usize)> = staged
        .keys()
        .filter(|(c, s)| *c <= checkpoint && ours(*s))
        .copied()
        .collect();
    ready
        .into_iter()
        .filter_map(|k| staged.remove(&k))
        .collect()
}

/// A subtask's recovery to `last_completed`: takes out the transactions it answers for that
/// the checkpoint covers (to be committed) and drops the ones staged after it.
fn recover_staged<V>(
    staged: &mut Staged<V>,
    last_completed: Option<u64>,
    ours: impl Fn(usize) -> bool,
) -> Vec<V> {
    let ready = match last_completed {
        Some(c) => take_ready(staged, c, &ours),
        None => Vec::new(),
    };
    let after = last_completed.unwrap_or(0);
    staged.retain(|(c, s), _| !ours(*s) || *c <= after);
    ready
}

impl<T> CollectSink<T> {
    fn lock(&self) -> MutexGuard<'_, Collected<T>> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<T: Data> Sink for CollectSink<T> {
    type In = T;
    fn on_start(&mut self, info: &SubtaskInfo) -> Result<(), UserError> {
        (self.subtask, self.parallelism) = (info.index, info.parallelism);
        Ok(())
    }
    #[inline]
    fn write(&mut self, r: T) -> Result<(), UserError> {
        self.local.push(r);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), UserError> {
        let mut local = std::mem::take(&mut self.local);
        self.lock().committed.append(&mut local);
        Ok(())
    }
    fn pre_commit(&mut self, checkpoint: u64) -> Result<(), UserError> {
        let mut local = std::mem::take(&mut self.local);
        let key = (checkpoint, self.subtask);
        self.lock()
            .staged
            .entry(key)
            .or_default()
            .append(&mut local);
        Ok(())
    }
    fn commit(&mut self, checkpoint: u64) -> Result<(), UserError> {
        let subtask = self.subtask;
        let mut guard = self.lock();
        let all = &mut *guard;
        for mut v in take_ready(&mut all.staged, checkpoint, |s| s == subtask) {
            all.committed.append(&mut v);
        }
        Ok(())
    }
    fn recover(&mut self, last_completed: Option<u64>) -> Result<(), UserError> {
        let (index, parallelism) = (self.subtask, self.parallelism);
        let ours = move |s| answers_for(index, parallelism, s);
        {
            let mut guard = self.lock();
            let all = &mut *guard;
            for mut v in recover_staged(&mut all.staged, last_completed, ours) {
                all.committed.append(&mut v);
            }
        }
        self.local.clear();
        Ok(())
    }
}

struct TypedCount<T> {
    local: u64,
    subtask: usize,
    parallelism: usize,
    shared: Arc<Counted>,
    _t: std::marker::PhantomData<fn(T)>,
}

/// The count sink's "external system": the committed count and open transactions.
#[derive(Default)]
struct Counted {
    committed: AtomicU64,
    staged: Mutex<Staged<u64>>,
}

impl<T: Data> Sink for TypedCount<T> {
    type In = T;
    fn on_start(&mut self, info: &SubtaskInfo) -> Result<(), UserError> {
        (self.subtask, self.parallelism) = (info.index, info.parallelism);
        Ok(())
    }
    #[inline]
    fn write(&mut self, _r: T) -> Result<(), UserError> {
        self.local += 1;
        Ok(())
    }
    fn flush(&mut self) -> Result<(), UserError> {
        let n = std::mem::take(&mut self.local);
        self.shared.committed.fetch_add(n, Ordering::AcqRel);
        Ok(())
    }
    fn pre_commit(&mut self, checkpoint: u64) -> Result<(), UserError> {
        let n = std::mem::take(&mut self.local);
        let mut staged = self.shared.staged.lock().unwrap_or_else(|e| e.into_inner());
        *staged.entry((checkpoint, self.subtask)).or_default() += n;
        Ok(())
    }
    fn commit(&mut self, checkpoint: u64) -> Result<(), UserError> {
        let subtask = self.subtask;
        let mut staged = self.shared.staged.lock().unwrap_or_else(|e| e.into_inner());
        for n in take_ready(&mut staged, checkpoint, |s| s == subtask) {
            self.shared.committed.fetch_add(n, Ordering::AcqRel);
        }
        Ok(())
    }
    fn recover(&mut self, last_completed: Option<u64>) -> Result<(), UserError> {
        let (index, parallelism) = (self.subtask, self.parallelism);
        let ours = move |s| answers_for(index, parallelism, s);
        let mut staged = self.shared.staged.lock().unwrap_or_else(|e| e.into_inner());
        for n in recover_staged(&mut staged, last_completed, ours) {
            self.shared.committed.fetch_add(n, Ordering::AcqRel);
        }
        self.local = 0;
        Ok(())
    }
}

struct PrintSink<T> {
    prefix: String,
    render: fn(&T) -> String,
}

impl<T: Data> Sink for PrintSink<T> {
    type In = T;
    fn on_start(&mut self, info: &SubtaskInfo) -> Result<(), UserError> {
        if info.parallelism > 1 {
            self.prefix = format!("{}> ", info.index + 1);
        }
        Ok(())
    }
    fn write(&mut self, r: T) -> Result<(), UserError> {
        let line = (self.render)(&r);
        let mut out = std::io::stdout().lock();
        // A closed stdout (e.g. piped into `head`) is not the job's failure.
        let _ = writeln!(out, "{}{}", self.prefix, line);
        Ok(())
    }
}

struct FileSink<T> {
    dir: PathBuf,
    path: PathBuf,
    /// This subtask's index and the sink's parallelism (to adopt the parts of subtasks a
    /// lower parallelism dropped).
    index: usize,
    parallelism: usize,
    file: Option<File>,
    /// Lines of the current unit of work, written to the file at `flush`.
    buf: Vec<u8>,
    _t: std::marker::PhantomData<fn(T)>,
}

impl<T> FileSink<T> {
    fn err(&self, e: std::io::Error) -> UserError {
        Box::new(ConnectorError::WriteFile {
            path: self.path.display().to_string(),
            source: e,
        })
    }
}

impl<T: Data + Display> Sink for FileSink<T> {
    type In = T;
    fn on_start(&mut self, info: &SubtaskInfo) -> Result<(), UserError> {
        self.path = self.dir.join(format!("part-{}", info.index));
        (self.index, self.parallelism) = (info.index, info.parallelism.max(1));
        std::fs::create_dir_all(&self.dir).map_err(|e| self.err(e))?;
        // A restarted subtask appends to what its earlier attempts flushed.
        let f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(info.attempt > 0)
            .truncate(info.attempt == 0)
            .open(&self.path)
            .map_err(|e| self.err(e))?;
        self.file = Some(f);
        Ok(())
    }
    fn write(&mut self, r: T) -> Result<(), UserError> {
        writeln!(self.buf, "{r}").map_err(|e| self.err(e))
    }
    fn flush(&mut self) -> Result<(), UserError> {
        let res = match self.file.as_mut() {
            Some(f) => f.write_all(&self.buf),
            None => Ok(()),
        };
        self.buf.clear();
        res.map_err(|e| self.err(e))
    }
    fn on_close(&mut self) -> Result<(), UserError> {
        let res = match self.file.as_mut() {
            Some(f) => f.sync_all(),
            None => Ok(()),
        };
        res.map_err(|e| self.err(e))
    }
    fn pre_commit(&mut self, checkpoint: u64) -> Result<(), UserError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let path = self.staged_path(checkpoint);
        let res = std::fs::File::create(&path)
            .and_then(|mut f| f.write_all(&self.buf).and_then(|()| f.sync_all()));
        self.buf.clear();
        res.map_err(|e| self.err(e))
    }
    fn commit(&mut self, checkpoint: u64) -> Result<(), UserError> {
        let part = self.part_name();
        self.commit_part(&part, checkpoint)
    }
    fn recover(&mut self, last_completed: Option<u64>) -> Result<(), UserError> {
        // Its own part, and the parts of subtasks a lower parallelism no longer runs (part j
        // goes to subtask j mod parallelism): every transaction the restored checkpoint
        // covers is published, whoever staged it.
        let mut parts = vec![self.part_name()];
        parts.extend(self.orphaned_parts()?);
        for part in &parts {
            self.recover_part(part, last_completed)?;
        }
        self.buf.clear();
        Ok(())
    }
}

impl<T> FileSink<T> {
    /// Publishes `part`'s staged files of checkpoints up to `checkpoint`, durably.
    fn commit_part(&self, part: &str, checkpoint: u64) -> Result<(), UserError> {
        let mut published_any = false;
        for (c, path) in self.files_with(part, |rest| rest.strip_suffix(".inprogress"))? {
            if c <= checkpoint {
                let published = self.dir.join(format!("{part}-{c}"));
                std::fs::rename(&path, &published).map_err(|e| self.err(e))?;
                published_any = true;
            }
        }
        if published_any {
            // The renames are the commit: make them durable.
            crate::checkpoint::sync_dir(&self.dir).map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// Brings `part` to the state of checkpoint `last_completed`: what it covers is
    /// published, what was staged after it is dropped (the replay writes it again), and what
    /// later checkpoints published is withdrawn (an older checkpoint is restored when the
    /// newest was damaged).
    fn recover_part(&self, part: &str, last_completed: Option<u64>) -> Result<(), UserError> {
        if let Some(c) = last_completed {
            self.commit_part(part, c)?;
        }
        for (_, path) in self.files_with(part, |rest| rest.strip_suffix(".inprogress"))? {
            std::fs::remove_file(&path).map_err(|e| self.err(e))?;
        }
        let after = last_completed.unwrap_or(0);
        for (c, path) in self.files_with(part, |rest| Some(rest))? {
            if c > after {
                std::fs::remove_file(&path).map_err(|e| self.err(e))?;
            }
        }
        Ok(())
    }

    /// Parts in the directory of subtasks `j >= parallelism` that this subtask adopts
    /// (`j mod parallelism == index`).
    fn orphaned_parts(&self) -> Result<Vec<String>, UserError> {
        let mut parts = Vec::new();
        for e in std::fs::read_dir(&self.dir)
            .map_err(|e| self.err(e))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().to_string();
            let j = name
                .strip_prefix("part-")
                .and_then(|rest| rest.split('-').next())
                .and_then(|j| j.parse::<usize>().ok());
            if let Some(j) = j {
                if j >= self.parallelism && j % self.parallelism == self.index {
                    parts.push(format!("part-{j}"));
                }
            }
        }
        parts.sort();
        parts.dedup();
        Ok(parts)
    }
}

impl<T> FileSink<T> {
    fn part_name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default()
    }

    fn staged_path(&self, checkpoint: u64) -> PathBuf {
        self.dir
            .join(format!("{}-{checkpoint}.inprogress", self.part_name()))
    }

    /// `part`'s files whose name after `part-` gives a checkpoint id through `id_part`.
    fn files_with(
        &self,
        part: &str,
        id_part: impl Fn(&str) -> Option<&str>,
    ) -> Result<Vec<(u64, PathBuf)>, UserError> {
        let prefix = format!("{part}-");
        let mut v = Vec::new();
        for e in std::fs::read_dir(&self.dir)
            .map_err(|e| self.err(e))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().to_string();
            let c = name
                .strip_prefix(&prefix)
                .and_then(&id_part)
                .and_then(|c| c.parse::<u64>().ok());
            if let Some(c) = c {
                v.push((c, e.path()));
            }
        }
        v.sort();
        Ok(v)
    }
}

impl<T: Data> DataStream<T> {
    /// Prints every record with `Display`; with parallelism > 1 each line is prefixed with the
    /// 1-based subtask number, as Flink does (`3> record`).
    pub fn print(self) -> SinkStream
    where
        T: Display,
    {
        self.sink_named("print", |_| PrintSink::<T> {
            prefix: String::new(),
            render: |r| r.to_string(),
        })
    }

    /// Like [`DataStream::print`] with `Debug` formatting.
    pub fn print_debug(self) -> SinkStream
    where
        T: Debug,
    {
        self.sink_named("print", |_| PrintSink::<T> {
            prefix: String::new(),
            render: |r| format!("{r:?}"),
        })
    }

    /// Collects every record into memory; read them from the handle after the job ran.
    pub fn collect(self) -> CollectHandle<T> {
        let shared = Arc::new(Mutex::new(Collected {
            committed: Vec::new(),
            staged: std::collections::BTreeMap::new(),
        }));
        let s = shared.clone();
        self.sink_named("collect", move |_| CollectSink {
            local: Vec::new(),
            subtask: 0,
            parallelism: 1,
            shared: s.clone(),
        });
        CollectHandle { inner: shared }
    }

    /// Counts the records; read the count from the handle after the job ran.
    pub fn count(self) -> CountHandle {
        let handle = CountHandle::default();
        let shared = handle.inner.clone();
        self.sink_named("count", move |_| TypedCount::<T> {
            local: 0,
            subtask: 0,
            parallelism: 1,
            shared: shared.clone(),
            _t: std::marker::PhantomData,
        });
        handle
    }

    /// Drops every record.
    pub fn discard(self) -> SinkStream {
        self.sink_named("discard", |_| Discard::<T>(std::marker::PhantomData))
    }

    /// Writes records as lines (`Display`) to `dir/part-{subtask}`, one file per subtask.
    ///
    /// With checkpointing the sink is transactional: the lines of each checkpoint go to
    /// `part-{subtask}-{checkpoint}.inprogress` at the barrier and are published by renaming
    /// to `part-{subtask}-{checkpoint}` when the checkpoint completes; a recovery publishes what
    /// the restored checkpoint covers and deletes the rest. Read every `part-*` file without
    /// the `.inprogress` suffix.
    pub fn write_text_file(self, dir: impl Into<PathBuf>) -> SinkStream
    where
        T: Display,
    {
        let dir = dir.into();
        self.sink_named("write_text_file", move |_| FileSink::<T> {
            dir: dir.clone(),
            path: dir.clone(),
            index: 0,
            parallelism: 1,
            file: None,
            buf: Vec::new(),
            _t: std::marker::PhantomData,
        })
    }
}

struct Discard<T>(std::marker::PhantomData<fn(T)>);
impl<T: Data> Sink for Discard<T> {
    type In = T;
    fn write(&mut self, _r: T) -> Result<(), UserError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn sink(dir: &std::path::Path, index: usize, parallelism: usize) -> FileSink<u64> {
        let mut s = FileSink::<u64> {
            dir: dir.to_path_buf(),
            path: dir.to_path_buf(),
            index: 0,
            parallelism: 1,
            file: None,
            buf: Vec::new(),
            _t: std::marker::PhantomData,
        };
        let info = SubtaskInfo {
            operator: Arc::from("write_text_file"),
            index,
            parallelism,
            attempt: 0,
        };
        s.on_start(&info).expect("start");
        s
    }

    fn names(dir: &std::path::Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .expect("dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.matches('-').count() == 2)
            .collect();
        v.sort();
        v
    }

    /// A job resumed with fewer sink subtasks than its checkpoint had: the parts the missing
    /// subtasks staged under the restored checkpoint are published by the subtasks that adopt
    /// them, and what they staged after it is dropped.
    #[test]
    fn a_lower_parallelism_publishes_the_parts_of_the_subtasks_it_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        for (name, body) in [
            ("part-4-3.inprogress", "four\n"),
            ("part-5-3.inprogress", "five\n"),
            ("part-5-4.inprogress", "after the checkpoint\n"),
            ("part-3-5", "published after the restored checkpoint\n"),
        ] {
            std::fs::write(d.join(name), body).expect("write");
        }
        // Parallelism 3 now: part-3 and part-4 go to subtask 0 and 1, part-5 to subtask 2.
        for index in 0..3 {
            sink(d, index, 3).recover(Some(3)).expect("recover");
        }
        assert_eq!(names(d), ["part-4-3", "part-5-3"]);
        assert_eq!(
            std::fs::read_to_string(d.join("part-5-3")).expect("read"),
            "five\n"
        );
    }

    /// The same for the collect sink: the transactions of a subtask a lower parallelism
    /// dropped are committed by the subtask that answers for it.
    #[test]
    fn a_lower_parallelism_commits_the_collect_transactions_of_the_subtasks_it_dropped() {
        let shared = Arc::new(Mutex::new(Collected::<u64> {
            committed: Vec::new(),
            staged: Default::default(),
        }));
        {
            let mut all = shared.lock().expect("lock");
            all.staged.insert((3, 4), vec![4]);
            all.staged.insert((3, 5), vec![5]);
            all.staged.insert((4, 5), vec![50]);
        }
        for index in 0..3 {
            let mut s = CollectSink {
                local: Vec::new(),
                subtask: 0,
                parallelism: 1,
                shared: shared.clone(),
            };
            let info = SubtaskInfo {
                operator: Arc::from("collect"),
                index,
                parallelism: 3,
                attempt: 0,
            };
            s.on_start(&info).expect("start");
            s.recover(Some(3)).expect("recover");
        }
        let all = shared.lock().expect("lock");
        let mut committed = all.committed.clone();
        committed.sort_unstable();
        assert_eq!(committed, [4, 5]);
        assert!(all.staged.is_empty(), "{:?}", all.staged);
    }
}
