//! Checkpoint storage: what a checkpoint holds and where it is kept.
//!
//! A checkpoint is one [`TaskSnapshot`] per subtask, taken when the subtask aligned the
//! checkpoint's barrier on all its inputs. [`FsStore`] keeps each in `DIR/JOB/chk-N/`:
//! one state file per subtask (a header with the length and an XXH3-64 checksum, then the
//! rmp-serde body), each written to a temporary name, fsynced and renamed; the metadata file
//! `_metadata` is written the same way *last*, so a checkpoint exists only once it is complete.
//! The newest K checkpoints are kept (savepoints, `sp-N`, are never removed). Loading checks
//! every length and checksum; a damaged checkpoint is skipped with a logged error in favour of
//! the previous complete one. [`MemoryStore`] keeps checkpoints in memory, for tests.

use crate::operator::Position;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use xxhash_rust::xxh3::xxh3_64;

/// Identifies a checkpoint; ascending within a job.
pub type CheckpointId = u64;

/// The state of one subtask in a checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSnapshot {
    /// The chain.
    pub chain: usize,
    /// The subtask index.
    pub subtask: usize,
    /// The subtask had finished (sent end-of-input); restored, it only repeats that.
    pub finished: bool,
    /// A source's position.
    pub position: Option<Position>,
    /// One entry per operator or sink of the chain, in chain order.
    pub states: Vec<Vec<u8>>,
    /// The subtask's event-time clock at the checkpoint (`None`: it saw no watermark); a
    /// subtask restored from it starts its clock there, so no clock goes back.
    #[serde(default)]
    pub watermark: Option<i64>,
}

/// A complete checkpoint as loaded from a store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Checkpoint {
    /// Its id.
    pub id: CheckpointId,
    /// Whether it is a savepoint.
    pub savepoint: bool,
    /// Every subtask's state.
    pub tasks: Vec<TaskSnapshot>,
}

impl Checkpoint {
    /// The snapshot of subtask `subtask` of chain `chain`.
    pub fn task(&self, chain: usize, subtask: usize) -> Option<&TaskSnapshot> {
        self.tasks
            .iter()
            .find(|t| t.chain == chain && t.subtask == subtask)
    }

    /// Total bytes of operator state.
    pub fn state_bytes(&self) -> usize {
        self.tasks
            .iter()
            .flat_map(|t| &t.states)
            .map(Vec::len)
            .sum()
    }
}

/// Errors of a checkpoint store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing a file failed.
    #[error("checkpoint I/O on {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// A file is damaged (length or checksum mismatch, undecodable).
    #[error("checkpoint file {path} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// No complete checkpoint exists where one was asked for.
    #[error("no complete checkpoint in {0}")]
    NotFound(String),
    /// Complete checkpoints exist, but every one of them is damaged.
    #[error(
        "every complete checkpoint in {dir} is damaged ({damaged} of them; the newest: {newest})"
    )]
    AllDamaged {
        /// The job's checkpoint directory.
        dir: String,
        /// How many complete checkpoints were tried.
        damaged: usize,
        /// Why the newest one could not be loaded.
        newest: String,
    },
}

/// Where checkpoints are kept.
pub trait CheckpointStore: Send + Sync + std::fmt::Debug {
    /// Saves a complete checkpoint.
    ///
    /// # Errors
    /// The checkpoint could not be written; it does not exist then.
    fn save(&self, checkpoint: &Checkpoint) -> Result<(), StoreError>;

    /// The newest complete, undamaged checkpoint (damaged ones are skipped and logged).
    ///
    /// # Errors
    /// The store could not be read at all.
    fn latest(&self) -> Result<Option<Checkpoint>, StoreError>;
}

/// Checkpoints in memory (for tests); keeps the newest `keep`.
#[derive(Debug)]
pub struct MemoryStore {
    keep: usize,
    inner: Mutex<BTreeMap<CheckpointId, Checkpoint>>,
}

impl MemoryStore {
    /// A store keeping the newest `keep` checkpoints (and every savepoint).
    pub fn new(keep: usize) -> Self {
        MemoryStore {
            keep: keep.max(1),
            inner: Mutex::new(BTreeMap::new()),
        }
    }
}

impl CheckpointStore for MemoryStore {
    fn save(&self, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        m.insert(checkpoint.id, checkpoint.clone());
        let regular: Vec<CheckpointId> =
            m.values().filter(|c| !c.savepoint).map(|c| c.id).collect();
        for id in regular.iter().take(regular.len().saturating_sub(self.keep)) {
            m.remove(id);
        }
        Ok(())
    }
    fn latest(&self) -> Result<Option<Checkpoint>, StoreError> {
        let m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        Ok(m.values().next_back().cloned())
    }
}

const MAGIC: &[u8; 4] = b"RFL1";
const METADATA: &str = "_metadata";

#[derive(Serialize, Deserialize)]
struct Metadata {
    id: CheckpointId,
    savepoint: bool,
    /// (chain, subtask, file name, body length, XXH3-64 of the body)
    files: Vec<(usize, usize, String, u64, u64)>,
}

/// Checkpoints in a directory: `DIR/JOB/chk-N/` (see the module docs).
#[derive(Debug, Clone)]
pub struct FsStore {
    root: PathBuf,
    keep: usize,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn corrupt(path: &Path, reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// Flushes a directory's entries (files created, renamed or removed in it) to disk.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Writes `bytes` to `path` atomically: temporary file, fsync, rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

/// A file body with its header: magic, length, checksum.
fn framed(body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(body.len() + 20);
    v.extend_from_slice(MAGIC);
    v.extend_from_slice(&(body.len() as u64).to_le_bytes());
    v.extend_from_slice(&xxh3_64(body).to_le_bytes());
    v.extend_from_slice(body);
    v
}

/// Checks a framed file and returns its body.
fn unframe<'a>(path: &Path, bytes: &'a [u8]) -> Result<&'a [u8], StoreError> {
    if bytes.len() < 20 || &bytes[..4] != MAGIC {
        return Err(corrupt(path, "missing header"));
    }
    let mut n = [0u8; 8];
    n.copy_from_slice(&bytes[4..12]);
    let len = u64::from_le_bytes(n);
    n.copy_from_slice(&bytes[12..20]);
    let sum = u64::from_le_bytes(n);
    let body = &bytes[20..];
    if body.len() as u64 != len {
        return Err(corrupt(
            path,
            format!("length {} but header says {len}", body.len()),
        ));
    }
    if xxh3_64(body) != sum {
        return Err(corrupt(path, "checksum mismatch"));
    }
    Ok(body)
}

impl FsStore {
    /// A store under `dir/job`, keeping the newest `keep` checkpoints.
    pub fn new(dir: impl Into<PathBuf>, job: &str, keep: usize) -> Self {
        FsStore {
            root: dir.into().join(job),
            keep: keep.max(1),
        }
    }

    /// The directory that holds this job's checkpoints.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir_of(&self, id: CheckpointId, savepoint: bool) -> PathBuf {
        let prefix = if savepoint { "sp" } else { "chk" };
        self.root.join(format!("{prefix}-{id}"))
    }

    /// Complete checkpoint directories (metadata present), newest first.
    fn complete_dirs(&self) -> Result<Vec<(CheckpointId, PathBuf)>, StoreError> {
        let entries = match fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&self.root)(e)),
        };
        let mut dirs = Vec::new();
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let id = name
                .strip_prefix("chk-")
                .or_else(|| name.strip_prefix("sp-"))
                .and_then(|n| n.parse::<CheckpointId>().ok());
            if let Some(id) = id {
                if e.path().join(METADATA).exists() {
                    dirs.push((id, e.path()));
                }
            }
        }
        dirs.sort_by_key(|d| std::cmp::Reverse(d.0));
        Ok(dirs)
    }

    /// Loads and checks the checkpoint in `dir` (a `chk-N` or `sp-N` directory).
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] for a damaged file, [`StoreError::Io`] if unreadable.
    pub fn load_dir(dir: &Path) -> Result<Checkpoint, StoreError> {
        let meta_path = dir.join(METADATA);
        let bytes = fs::read(&meta_path).map_err(io_err(&meta_path))?;
        let body = unframe(&meta_path, &bytes)?;
        let meta: Metadata =
            rmp_serde::from_slice(body).map_err(|e| corrupt(&meta_path, e.to_string()))?;
        let mut tasks = Vec::with_capacity(meta.files.len());
        for (chain, subtask, file, len, sum) in meta.files {
            let path = dir.join(&file);
            let bytes = fs::read(&path).map_err(io_err(&path))?;
            let body = unframe(&path, &bytes)?;
            if body.len() as u64 != len || xxh3_64(body) != sum {
                return Err(corrupt(&path, "does not match the metadata"));
            }
            let t: TaskSnapshot =
                rmp_serde::from_slice(body).map_err(|e| corrupt(&path, e.to_string()))?;
            if (t.chain, t.subtask) != (chain, subtask) {
                return Err(corrupt(&path, "belongs to another subtask"));
            }
            tasks.push(t);
        }
        Ok(Checkpoint {
            id: meta.id,
            savepoint: meta.savepoint,
            tasks,
        })
    }

    /// The newest complete, undamaged checkpoint under `dir/job` (see [`CheckpointStore`]);
    /// damaged ones are skipped and logged.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] if the job has no complete checkpoint there (a fresh start is
    /// safe), [`StoreError::AllDamaged`] if it has some but every one is damaged (it is not).
    pub fn latest_in(dir: impl Into<PathBuf>, job: &str) -> Result<Checkpoint, StoreError> {
        let store = FsStore::new(dir, job, 1);
        let root = store.root.display().to_string();
        let complete = store.complete_dirs()?;
        let mut newest = None;
        for (id, dir) in &complete {
            match Self::load_dir(dir) {
                Ok(c) => return Ok(c),
                Err(e) => {
                    tracing::error!(checkpoint = id, error = %e, "skipping damaged checkpoint");
                    newest.get_or_insert(e.to_string());
                }
            }
        }
        match newest {
            None => Err(StoreError::NotFound(root)),
            Some(newest) => Err(StoreError::AllDamaged {
                dir: root,
                damaged: complete.len(),
                newest,
            }),
        }
    }

    fn prune(&self) -> Result<(), StoreError> {
        let regular: Vec<(CheckpointId, PathBuf)> = self
            .complete_dirs()?
            .into_iter()
            .filter(|(_, p)| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("chk-"))
            })
            .collect();
        for (_, p) in regular.iter().skip(self.keep) {
            fs::remove_dir_all(p).map_err(io_err(p))?;
        }
        Ok(())
    }
}

impl CheckpointStore for FsStore {
    fn save(&self, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        let dir = self.dir_of(checkpoint.id, checkpoint.savepoint);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let mut files = Vec::with_capacity(checkpoint.tasks.len());
        for t in &checkpoint.tasks {
            let name = format!("task-{}-{}.state", t.chain, t.subtask);
            let body = rmp_serde::to_vec(t).map_err(|e| corrupt(&dir, e.to_string()))?;
            files.push((
                t.chain,
                t.subtask,
                name.clone(),
                body.len() as u64,
                xxh3_64(&body),
            ));
            write_atomic(&dir.join(&name), &framed(&body))?;
        }
        let meta = Metadata {
            id: checkpoint.id,
            savepoint: checkpoint.savepoint,
            files,
        };
        let body = rmp_serde::to_vec(&meta).map_err(|e| corrupt(&dir, e.to_string()))?;
        write_atomic(&dir.join(METADATA), &framed(&body))?;
        // The renames, and the checkpoint's directory itself, are durable only once the
        // directories that hold them are: a checkpoint reported complete (and so committed
        // to sinks) must survive a power cut.
        sync_dir(&dir).map_err(io_err(&dir))?;
        if let Some(parent) = dir.parent() {
            sync_dir(parent).map_err(io_err(parent))?;
        }
        self.prune()
    }

    fn latest(&self) -> Result<Option<Checkpoint>, StoreError> {
        for (id, dir) in self.complete_dirs()? {
            match Self::load_dir(&dir) {
                Ok(c) => return Ok(Some(c)),
                Err(e) => {
                    tracing::error!(checkpoint = id, error = %e, "skipping damaged checkpoint")
                }
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cp(id: u64) -> Checkpoint {
        Checkpoint {
            id,
            savepoint: false,
            tasks: vec![TaskSnapshot {
                chain: 0,
                subtask: 1,
                finished: false,
                position: Some(Position::encode(&id).expect("encode")),
                states: vec![vec![1, 2, 3], Vec::new()],
                watermark: Some(-7),
            }],
        }
    }

    #[test]
    fn a_subtask_snapshot_written_before_event_time_still_loads() {
        // A checkpoint written before the watermark field existed: the same fields, in order.
        #[derive(Serialize)]
        struct Before {
            chain: usize,
            subtask: usize,
            finished: bool,
            position: Option<Position>,
            states: Vec<Vec<u8>>,
        }
        let old = Before {
            chain: 2,
            subtask: 1,
            finished: true,
            position: None,
            states: vec![vec![9]],
        };
        let bytes = rmp_serde::to_vec(&old).expect("encode");
        let t: TaskSnapshot = rmp_serde::from_slice(&bytes).expect("decodes");
        assert_eq!((t.chain, t.subtask, t.finished), (2, 1, true));
        assert_eq!(t.states, vec![vec![9]]);
        assert_eq!(t.watermark, None, "no clock in an old checkpoint");
        let new = TaskSnapshot {
            watermark: Some(41),
            ..t
        };
        let back: TaskSnapshot =
            rmp_serde::from_slice(&rmp_serde::to_vec(&new).expect("encode")).expect("decode");
        assert_eq!(back, new);
    }

    #[test]
    fn fs_store_round_trips_prunes_and_skips_damage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FsStore::new(dir.path(), "job", 2);
        for id in 1..=4 {
            store.save(&cp(id)).expect("save");
        }
        assert_eq!(store.latest().expect("latest"), Some(cp(4)));
        assert!(!store.root().join("chk-1").exists(), "pruned");
        assert!(store.root().join("chk-3").exists());
        // Truncate the newest state file: the previous checkpoint is used.
        let f = store.root().join("chk-4").join("task-0-1.state");
        let len = fs::metadata(&f).expect("meta").len();
        fs::OpenOptions::new()
            .write(true)
            .open(&f)
            .expect("open")
            .set_len(len - 3)
            .expect("truncate");
        assert_eq!(store.latest().expect("latest"), Some(cp(3)));
        // A checkpoint without metadata does not exist.
        fs::remove_file(store.root().join("chk-3").join(METADATA)).expect("rm");
        assert_eq!(store.latest().expect("latest"), None);
    }

    #[test]
    fn latest_in_tells_no_checkpoint_from_all_damaged() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            FsStore::latest_in(dir.path(), "job"),
            Err(StoreError::NotFound(_))
        ));
        let store = FsStore::new(dir.path(), "job", 2);
        store.save(&cp(1)).expect("save");
        store.save(&cp(2)).expect("save");
        assert_eq!(
            FsStore::latest_in(dir.path(), "job").expect("latest"),
            cp(2)
        );
        for id in [1, 2] {
            let f = store
                .root()
                .join(format!("chk-{id}"))
                .join("task-0-1.state");
            fs::write(&f, b"damaged").expect("damage");
        }
        match FsStore::latest_in(dir.path(), "job") {
            Err(StoreError::AllDamaged { damaged: 2, .. }) => {}
            other => panic!("expected AllDamaged, got {other:?}"),
        }
    }

    #[test]
    fn memory_store_keeps_the_newest() {
        let store = MemoryStore::new(2);
        for id in 1..=5 {
            store.save(&cp(id)).expect("save");
        }
        assert_eq!(store.latest().expect("latest").map(|c| c.id), Some(5));
        assert_eq!(store.inner.lock().expect("lock").len(), 2);
    }
}
