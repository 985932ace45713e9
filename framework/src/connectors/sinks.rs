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
    staged: std::collections::BTreeMap<(u64, usize), Vec<T>>,
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
    shared: Arc<Mutex<Collected<T>>>,
}

impl<T> CollectSink<T> {
    fn lock(&self) -> MutexGuard<'_, Collected<T>> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<T: Data> Sink for CollectSink<T> {
    type In = T;
    fn on_start(&mut self, info: &SubtaskInfo) -> Result<(), UserError> {
        self.subtask = info.index;
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
        let mut all = self.lock();
        let ready: Vec<(u64, usize)> = all
            .staged
            .keys()
            .filter(|(c, s)| *c <= checkpoint && *s == subtask)
            .copied()
            .collect();
        for k in ready {
            if let Some(mut v) = all.staged.remove(&k) {
                all.committed.append(&mut v);
            }
        }
        Ok(())
    }
    fn recover(&mut self, last_completed: Option<u64>) -> Result<(), UserError> {
        if let Some(c) = last_completed {
            self.commit(c)?;
        }
        let subtask = self.subtask;
        let after = last_completed.unwrap_or(0);
        self.lock()
            .staged
            .retain(|(c, s), _| *s != subtask || *c <= after);
        self.local.clear();
        Ok(())
    }
}

struct TypedCount<T> {
    local: u64,
    subtask: usize,
    shared: Arc<Counted>,
    _t: std::marker::PhantomData<fn(T)>,
}

/// The count sink's "external system": the committed count and open transactions.
#[derive(Default)]
struct Counted {
    committed: AtomicU64,
    staged: Mutex<std::collections::BTreeMap<(u64, usize), u64>>,
}

impl<T: Data> Sink for TypedCount<T> {
    type In = T;
    fn on_start(&mut self, info: &SubtaskInfo) -> Result<(), UserError> {
        self.subtask = info.index;
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
        let mut staged = self.shared.staged.lock().unwrap_or_else(|e| e.into_inner());
        let subtask = self.subtask;
        staged.retain(|(c, s), n| {
            let ready = *c <= checkpoint && *s == subtask;
            if ready {
                self.shared.committed.fetch_add(*n, Ordering::AcqRel);
            }
            !ready
        });
        Ok(())
    }
    fn recover(&mut self, last_completed: Option<u64>) -> Result<(), UserError> {
        if let Some(c) = last_completed {
            self.commit(c)?;
        }
        let (subtask, after) = (self.subtask, last_completed.unwrap_or(0));
        let mut staged = self.shared.staged.lock().unwrap_or_else(|e| e.into_inner());
        staged.retain(|(c, s), _| *s != subtask || *c <= after);
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
        let mut published_any = false;
        for (c, path) in self.staged_files()? {
            if c <= checkpoint {
                let published = self.dir.join(format!("{}-{c}", self.part_name()));
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
    fn recover(&mut self, last_completed: Option<u64>) -> Result<(), UserError> {
        if let Some(c) = last_completed {
            self.commit(c)?;
        }
        for (_, path) in self.staged_files()? {
            std::fs::remove_file(&path).map_err(|e| self.err(e))?;
        }
        // Restoring an older checkpoint (the newest was damaged) replays what later ones
        // published: withdraw those parts, the replay writes them again.
        let after = last_completed.unwrap_or(0);
        for (c, path) in self.published_files()? {
            if c > after {
                std::fs::remove_file(&path).map_err(|e| self.err(e))?;
            }
        }
        self.buf.clear();
        Ok(())
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

    /// This subtask's staged (not yet published) files, with their checkpoint.
    fn staged_files(&self) -> Result<Vec<(u64, PathBuf)>, UserError> {
        self.files_with(|rest| rest.strip_suffix(".inprogress"))
    }

    /// This subtask's published files, with their checkpoint.
    fn published_files(&self) -> Result<Vec<(u64, PathBuf)>, UserError> {
        self.files_with(|rest| Some(rest))
    }

    fn files_with(
        &self,
        id_part: impl Fn(&str) -> Option<&str>,
    ) -> Result<Vec<(u64, PathBuf)>, UserError> {
        let prefix = format!("{}-", self.part_name());
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
