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
/// Each subtask appends the records of every completed batch, so the records one subtask
/// received appear in their arrival order (interleaved, batch by batch, with other subtasks').
pub struct CollectHandle<T> {
    inner: Arc<Mutex<Vec<T>>>,
}

impl<T> Clone for CollectHandle<T> {
    fn clone(&self) -> Self {
        CollectHandle {
            inner: self.inner.clone(),
        }
    }
}

impl<T> CollectHandle<T> {
    fn lock(&self) -> MutexGuard<'_, Vec<T>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes every record collected so far.
    pub fn take(&self) -> Vec<T> {
        std::mem::take(&mut *self.lock())
    }

    /// How many records were collected.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no record was collected.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

/// How many records a [`DataStream::count`] sink received.
#[derive(Clone, Default)]
pub struct CountHandle {
    inner: Arc<AtomicU64>,
}

impl CountHandle {
    /// The count (complete once the job finished).
    pub fn get(&self) -> u64 {
        self.inner.load(Ordering::Acquire)
    }
}

struct CollectSink<T> {
    local: Vec<T>,
    shared: Arc<Mutex<Vec<T>>>,
}

impl<T: Data> Sink for CollectSink<T> {
    type In = T;
    #[inline]
    fn write(&mut self, r: T) -> Result<(), UserError> {
        self.local.push(r);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), UserError> {
        let mut all = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        all.append(&mut self.local);
        Ok(())
    }
}

struct CountSink {
    local: u64,
    shared: Arc<AtomicU64>,
}

impl CountSink {
    fn publish(&mut self) {
        self.shared
            .fetch_add(std::mem::take(&mut self.local), Ordering::AcqRel);
    }
}

struct TypedCount<T> {
    count: CountSink,
    _t: std::marker::PhantomData<fn(T)>,
}

impl<T: Data> Sink for TypedCount<T> {
    type In = T;
    #[inline]
    fn write(&mut self, _r: T) -> Result<(), UserError> {
        self.count.local += 1;
        Ok(())
    }
    fn flush(&mut self) -> Result<(), UserError> {
        self.count.publish();
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
        let shared = Arc::new(Mutex::new(Vec::new()));
        let s = shared.clone();
        self.sink_named("collect", move |_| CollectSink {
            local: Vec::new(),
            shared: s.clone(),
        });
        CollectHandle { inner: shared }
    }

    /// Counts the records; read the count from the handle after the job ran.
    pub fn count(self) -> CountHandle {
        let handle = CountHandle::default();
        let shared = handle.inner.clone();
        self.sink_named("count", move |_| TypedCount::<T> {
            count: CountSink {
                local: 0,
                shared: shared.clone(),
            },
            _t: std::marker::PhantomData,
        });
        handle
    }

    /// Drops every record.
    pub fn discard(self) -> SinkStream {
        self.sink_named("discard", |_| Discard::<T>(std::marker::PhantomData))
    }

    /// Writes records as lines (`Display`) to `dir/part-{subtask}`, one file per subtask.
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
