use crate::data::Data;
use crate::error::{ConnectorError, UserError};
use crate::operator::{Output, Position, Source, SourceStatus, SubtaskInfo};
use crate::stream::{DataStream, StreamEnv};
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::net::{TcpStream, ToSocketAddrs};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, TryRecvError};
use std::sync::Arc;
use std::time::Duration;

/// The `[start, end)` share of `0..len` that subtask `index` of `parallelism` takes.
pub(crate) fn split(len: u64, index: usize, parallelism: usize) -> Range<u64> {
    let p = parallelism.max(1) as u128;
    let (i, len) = (index as u128, len as u128);
    ((len * i / p) as u64)..((len * (i + 1) / p) as u64)
}

/// Emits the elements of a shared vector; subtask i takes elements i, i+p, i+2p, ...
struct CollectionSource<T> {
    data: Arc<Vec<T>>,
    next: usize,
    stride: usize,
}

impl<T: Data> Source for CollectionSource<T> {
    type Out = T;
    fn produce(&mut self, out: &mut Output<'_, T>) -> Result<SourceStatus, UserError> {
        for _ in 0..out.budget() {
            match self.data.get(self.next) {
                Some(r) => out.emit(r.clone()),
                None => return Ok(SourceStatus::Finished),
            }
            self.next += self.stride;
        }
        Ok(SourceStatus::More)
    }
    fn position(&self) -> Result<Option<Position>, UserError> {
        Position::encode(&(self.next as u64)).map(Some)
    }
    fn seek(&mut self, position: &Position) -> Result<(), UserError> {
        self.next = usize::try_from(position.decode::<u64>()?)?;
        Ok(())
    }
}

/// Emits `f(i)` for every i of its share of `0..count`.
struct GeneratorSource<F> {
    range: Range<u64>,
    f: Arc<F>,
}

impl<T: Data, F: Fn(u64) -> T + Send + Sync + 'static> Source for GeneratorSource<F> {
    type Out = T;
    #[inline]
    fn produce(&mut self, out: &mut Output<'_, T>) -> Result<SourceStatus, UserError> {
        let end = self.range.end.min(self.range.start + out.budget() as u64);
        let f = &*self.f;
        // A chunk's room at a time, so that each piece is one counted copy.
        while self.range.start < end {
            let piece = (out.room().max(1) as u64).min(end - self.range.start);
            let to = self.range.start + piece;
            out.emit_all((self.range.start..to).map(f));
            self.range.start = to;
        }
        Ok(if self.range.is_empty() {
            SourceStatus::Finished
        } else {
            SourceStatus::More
        })
    }
    fn position(&self) -> Result<Option<Position>, UserError> {
        Position::encode(&self.range.start).map(Some)
    }
    fn seek(&mut self, position: &Position) -> Result<(), UserError> {
        let at: u64 = position.decode()?;
        if at > self.range.end {
            let end = self.range.end;
            return Err(format!("position {at} is past this subtask's end {end}").into());
        }
        self.range.start = at;
        Ok(())
    }
}

/// Reads the lines that start within its byte range of a file.
struct FileLinesSource {
    path: PathBuf,
    reader: Option<BufReader<File>>,
    /// Byte offset of the next line to read.
    pos: u64,
    end: u64,
    line: String,
}

impl FileLinesSource {
    fn read_err(&self, e: std::io::Error) -> UserError {
        Box::new(ConnectorError::ReadFile {
            path: self.path.display().to_string(),
            source: e,
        })
    }
}

impl Source for FileLinesSource {
    type Out = String;
    fn on_start(&mut self, info: &SubtaskInfo) -> Result<(), UserError> {
        let file = File::open(&self.path).map_err(|e| self.read_err(e))?;
        let len = file.metadata().map_err(|e| self.read_err(e))?.len();
        let range = split(len, info.index, info.parallelism);
        let mut reader = BufReader::with_capacity(1 << 16, file);
        self.end = range.end;
        self.pos = range.start;
        if range.start > 0 {
            // A line belongs to the subtask whose range holds its first byte: skip the line
            // that started in the previous range.
            reader
                .seek(SeekFrom::Start(range.start - 1))
                .map_err(|e| self.read_err(e))?;
            let mut skipped = Vec::new();
            let n = reader
                .read_until(b'\n', &mut skipped)
                .map_err(|e| self.read_err(e))?;
            self.pos = range.start - 1 + n as u64;
        }
        self.reader = Some(reader);
        Ok(())
    }

    fn produce(&mut self, out: &mut Output<'_, String>) -> Result<SourceStatus, UserError> {
        for _ in 0..out.budget() {
            if self.pos >= self.end {
                return Ok(SourceStatus::Finished);
            }
            let Some(reader) = self.reader.as_mut() else {
                return Ok(SourceStatus::Finished);
            };
            self.line.clear();
            let n = reader.read_line(&mut self.line);
            let n = n.map_err(|e| self.read_err(e))?;
            if n == 0 {
                return Ok(SourceStatus::Finished);
            }
            self.pos += n as u64;
            let line = self.line.trim_end_matches(['\n', '\r']).to_string();
            out.emit(line);
        }
        Ok(SourceStatus::More)
    }

    fn position(&self) -> Result<Option<Position>, UserError> {
        Position::encode(&self.pos).map(Some)
    }

    fn seek(&mut self, position: &Position) -> Result<(), UserError> {
        let at: u64 = position.decode()?;
        let reader = self
            .reader
            .as_mut()
            .ok_or("seek before the file was opened")?;
        reader.seek(SeekFrom::Start(at)).map_err(|e| {
            Box::new(ConnectorError::ReadFile {
                path: self.path.display().to_string(),
                source: e,
            })
        })?;
        self.pos = at;
        Ok(())
    }
}

/// Reads text lines from a TCP socket (not replayable; one subtask).
struct SocketSource {
    addr: String,
    rx: Option<Receiver<Result<String, std::io::Error>>>,
}

const SOCKET_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl Source for SocketSource {
    type Out = String;
    fn on_start(&mut self, _info: &SubtaskInfo) -> Result<(), UserError> {
        let connect_err = |e| ConnectorError::Connect {
            addr: self.addr.clone(),
            source: e,
        };
        let addrs: Vec<_> = self.addr.to_socket_addrs().map_err(connect_err)?.collect();
        let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address resolved");
        let mut stream = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, SOCKET_CONNECT_TIMEOUT) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let stream = stream.ok_or_else(|| connect_err(last))?;
        // A reader thread turns the blocking socket into a bounded queue, so the subtask's
        // actor never blocks and a slow job pushes back on the sender (TCP flow control).
        let (tx, rx) = sync_channel(4096);
        std::thread::Builder::new()
            .name(format!("riffle-socket-{}", self.addr))
            .spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let stop = line.is_err();
                    if tx.send(line).is_err() || stop {
                        break;
                    }
                }
            })
            .map_err(connect_err)?;
        self.rx = Some(rx);
        Ok(())
    }

    fn produce(&mut self, out: &mut Output<'_, String>) -> Result<SourceStatus, UserError> {
        let Some(rx) = self.rx.as_ref() else {
            return Ok(SourceStatus::Finished);
        };
        for _ in 0..out.budget() {
            match rx.try_recv() {
                Ok(Ok(line)) => out.emit(line),
                Ok(Err(e)) => {
                    return Err(Box::new(ConnectorError::SocketRead {
                        addr: self.addr.clone(),
                        source: e,
                    }))
                }
                Err(TryRecvError::Empty) => return Ok(SourceStatus::Idle),
                Err(TryRecvError::Disconnected) => return Ok(SourceStatus::Finished),
            }
        }
        Ok(SourceStatus::More)
    }
}

impl StreamEnv {
    /// A source over the elements of `data`. With parallelism p, subtask i emits elements
    /// i, i+p, i+2p, ... in order.
    pub fn from_collection<T: Data>(&self, data: Vec<T>) -> DataStream<T> {
        let data = Arc::new(data);
        self.add_source("from_collection", None, move |info| CollectionSource {
            data: data.clone(),
            next: info.index,
            stride: info.parallelism.max(1),
        })
    }

    /// A source over the items of `iter` (collected first; see [`StreamEnv::from_collection`]).
    pub fn from_iter<T: Data>(&self, iter: impl IntoIterator<Item = T>) -> DataStream<T> {
        self.from_collection(iter.into_iter().collect())
    }

    /// A source emitting `f(i)` for i in `0..count`; subtask j of p takes the contiguous share
    /// `count*j/p .. count*(j+1)/p`, in order.
    pub fn generate<T: Data>(
        &self,
        count: u64,
        f: impl Fn(u64) -> T + Send + Sync + 'static,
    ) -> DataStream<T> {
        let f = Arc::new(f);
        self.add_source("generate", None, move |info| GeneratorSource {
            range: split(count, info.index, info.parallelism),
            f: f.clone(),
        })
    }

    /// A source emitting the numbers of `range`, split into contiguous shares per subtask.
    pub fn sequence(&self, range: Range<u64>) -> DataStream<u64> {
        let start = range.start;
        let len = range.end.saturating_sub(range.start);
        self.generate(len, move |i| start + i).name("sequence")
    }

    /// A source emitting the lines of a text file (without line endings). With parallelism p
    /// the file is cut into p byte ranges and each subtask reads the lines that start in its
    /// range, so every line is read exactly once.
    ///
    /// A missing or unreadable file fails the job with [`ConnectorError::ReadFile`].
    pub fn read_text_file(&self, path: impl Into<PathBuf>) -> DataStream<String> {
        let path = path.into();
        self.add_source("read_text_file", None, move |_| FileLinesSource {
            path: path.clone(),
            reader: None,
            pos: 0,
            end: 0,
            line: String::new(),
        })
    }

    /// A source emitting the text lines received on a TCP connection to `addr` (like Flink's
    /// `socketTextStream`); it ends when the peer closes the connection. It runs as one subtask
    /// and is not replayable. An unreachable address fails the job with
    /// [`ConnectorError::Connect`] (after at most 5 s).
    pub fn socket_text_stream(&self, addr: &str) -> DataStream<String> {
        let addr = addr.to_string();
        self.add_source("socket_text_stream", Some(1), move |_| SocketSource {
            addr: addr.clone(),
            rx: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn split_covers_everything_once() {
        for len in [0u64, 1, 7, 100, 1_000_003] {
            for p in 1..=9 {
                let mut next = 0;
                for i in 0..p {
                    let r = split(len, i, p);
                    assert_eq!(r.start, next);
                    next = r.end;
                }
                assert_eq!(next, len);
            }
        }
    }
}
