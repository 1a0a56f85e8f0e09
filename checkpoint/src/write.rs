//! Writing a checkpoint: each rank's pieces, the atomic commit, retention, and the background
//! saver that lets training continue while the bytes go to disk.

use crate::manifest::{safe_name, Extent, Manifest, Piece, TensorMeta, VERSION};
use crate::{invalid, io, step_dir_name, Error, Result};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One piece a rank stores: its tensor, which elements, and their little-endian bytes in the
/// extent's run order.
#[derive(Clone, Debug)]
pub struct RankPiece {
    pub tensor: String,
    pub extent: Extent,
    pub data: Vec<u8>,
}

fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|f| f.sync_all()).map_err(io(dir))
}

/// Write `bytes` to `dir/name` through `dir/.name.tmp`, fsynced, then renamed.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let dst = dir.join(name);
    let mut f = File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    drop(f);
    fs::rename(&tmp, &dst).map_err(io(&dst))
}

/// A new attempt id: random, below 2^48 (so it travels exactly in an `f64`), never 0. The ranks
/// of one save agree on it; two writers with different ids never share a temporary directory.
pub fn new_attempt() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    (h.finish() & ((1 << 48) - 1)).max(1)
}

/// The temporary directory of step `step`'s save by attempt `attempt`:
/// `step_<N>.tmp.<attempt, hex>`.
pub fn tmp_dir(root: &Path, step: u64, attempt: u64) -> PathBuf {
    root.join(format!("{}.tmp.{attempt:012x}", step_dir_name(step)))
}

fn rank_name(rank: usize, ext: &str) -> String {
    format!("rank_{rank:05}.{ext}")
}

/// Write rank `rank`'s pieces of step `step` into attempt `attempt`'s temporary directory
/// ([`tmp_dir`]): its data file and its piece list, each durable (fsynced) before it appears
/// under its final name.
pub fn write_rank(root: &Path, step: u64, attempt: u64, rank: usize, pieces: &[RankPiece]) -> Result<u64> {
    let dir = tmp_dir(root, step, attempt);
    fs::create_dir_all(&dir).map_err(io(&dir))?;
    let file = rank_name(rank, "bin");
    let tmp = dir.join(format!(".{file}.tmp"));
    // Large pieces bypass the buffer; small ones are batched.
    let mut f = std::io::BufWriter::with_capacity(8 << 20, File::create(&tmp).map_err(io(&tmp))?);
    let mut list = Vec::with_capacity(pieces.len());
    let mut offset = 0u64;
    for p in pieces {
        f.write_all(&p.data).map_err(io(&tmp))?;
        list.push(Piece {
            tensor: p.tensor.clone(),
            extent: p.extent,
            file: file.clone(),
            offset,
            bytes: p.data.len() as u64,
            crc32: crc32fast::hash(&p.data),
        });
        offset += p.data.len() as u64;
    }
    let f = f.into_inner().map_err(|e| io(&tmp)(e.into_error()))?;
    f.sync_all().map_err(io(&tmp))?;
    drop(f);
    fs::rename(&tmp, dir.join(&file)).map_err(io(dir.join(&file)))?;
    let json = serde_json::to_vec(&list).map_err(|e| Error::Other(e.to_string()))?;
    write_atomic(&dir, &rank_name(rank, "json"), &json)?;
    Ok(offset)
}

/// Remove what a failed `write_rank` left (best effort: the disk may be the problem).
fn remove_rank_files(dir: &Path, rank: usize) {
    for ext in ["bin", "json"] {
        let name = rank_name(rank, ext);
        let _ = fs::remove_file(dir.join(format!(".{name}.tmp")));
        let _ = fs::remove_file(dir.join(&name));
    }
}

/// Leave word for the committing rank that `rank`'s part of the save failed, so the commit
/// gives up at once rather than waiting out its timeout (best effort: on a full disk an empty
/// file usually still fits, its message may not). The committing rank then removes the whole
/// temporary directory, this marker with it.
fn mark_failed(dir: &Path, rank: usize, e: &Error) {
    if let Ok(mut f) = File::create(dir.join(rank_name(rank, "failed"))) {
        let _ = f.write_all(e.to_string().as_bytes());
    }
}

/// Remove a failed save's temporary directory once every other rank is done with it (its piece
/// list or its failure marker is there) or `deadline` has passed, so that no rank still writing
/// recreates it afterwards. Best effort: a write that comes later still is removed by
/// [`clean_partial`] at the next start.
fn discard(dir: &Path, ranks: usize, me: usize, deadline: Instant) {
    let done = |r: usize| {
        r == me || dir.join(rank_name(r, "json")).exists() || dir.join(rank_name(r, "failed")).exists()
    };
    while dir.exists() && !(0..ranks).all(done) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    for _ in 0..3 {
        match fs::remove_dir_all(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::debug!("removing {}: {e}", dir.display());
                std::thread::sleep(Duration::from_millis(20));
            }
            _ => return,
        }
    }
}

/// What the committing rank knows of the whole checkpoint besides the pieces.
#[derive(Clone, Debug)]
pub struct Head {
    pub config_hash: String,
    pub mesh: Vec<usize>,
    pub state: serde_json::Value,
    pub tensors: Vec<TensorMeta>,
    /// Committed checkpoints to keep.
    pub keep: usize,
    /// How long to wait for the other ranks' pieces.
    pub timeout: Duration,
}

/// Commit attempt `attempt`'s save of step `step` once all `ranks` ranks have written their
/// pieces (giving up at once if one reports that it could not, or after `head.timeout`): merge
/// their lists, verify coverage against the files written, write the manifest, rename the
/// directory into place, move `latest`, and delete checkpoints beyond `keep` (see [`prune`]).
/// Returns the committed directory.
pub fn commit(root: &Path, step: u64, attempt: u64, ranks: usize, head: &Head) -> Result<PathBuf> {
    let dir = tmp_dir(root, step, attempt);
    let deadline = Instant::now() + head.timeout;
    let mut pieces = vec![];
    for r in 0..ranks {
        let path = dir.join(rank_name(r, "json"));
        let failed = dir.join(rank_name(r, "failed"));
        while !path.exists() {
            if failed.exists() {
                let why = fs::read_to_string(&failed).unwrap_or_default();
                let why = match why.trim() {
                    // Its marker exists but its reason could not be written into it.
                    "" => "(it could not record why either: is the disk full?)",
                    w => w,
                };
                return Err(invalid(
                    &dir,
                    format!("rank {r} could not write its pieces: {why}"),
                ));
            }
            if Instant::now() > deadline {
                return Err(invalid(
                    &dir,
                    format!("rank {r} did not finish writing within {:?}", head.timeout),
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let bytes = fs::read(&path).map_err(io(&path))?;
        let list: Vec<Piece> = serde_json::from_slice(&bytes).map_err(|e| invalid(&path, e.to_string()))?;
        pieces.extend(list);
    }
    let mut sizes = std::collections::HashMap::new();
    for r in 0..ranks {
        let name = rank_name(r, "bin");
        let path = dir.join(&name);
        if let Ok(m) = fs::metadata(&path) {
            sizes.insert(name, m.len());
        }
    }
    let m = Manifest {
        version: VERSION,
        step,
        config_hash: head.config_hash.clone(),
        mesh: head.mesh.clone(),
        state: head.state.clone(),
        tensors: head.tensors.clone(),
        pieces,
    };
    // Every element stored exactly once, before anything is committed.
    m.verify(&dir, Some(&sizes))?;
    let json = serde_json::to_vec_pretty(&m).map_err(|e| Error::Other(e.to_string()))?;
    write_atomic(&dir, "manifest.json", &json)?;
    fsync_dir(&dir)?;
    let name = step_dir_name(step);
    let dst = root.join(&name);
    let mut displaced = None;
    if dst.exists() {
        // A resumed run saving a step again: keep the old copy until the new one is in place.
        let old = root.join(format!("{name}.old.{attempt:012x}"));
        let _ = fs::remove_dir_all(&old);
        fs::rename(&dst, &old).map_err(io(&old))?;
        displaced = Some(old);
    }
    fs::rename(&dir, &dst).map_err(io(&dst))?;
    fsync_dir(root)?;
    write_atomic(root, "latest", name.as_bytes())?;
    fsync_dir(root)?;
    if let Some(old) = displaced {
        fs::remove_dir_all(&old).map_err(io(&old))?;
    }
    prune(root, head.keep, step)?;
    Ok(dst)
}

/// Retention: of the checkpoints under `root` whose manifest opens and verifies against its
/// files ([`Checkpoint::open`](crate::Checkpoint::open)), keep the newest `keep` (at least one)
/// and delete the older ones, never `current`. A checkpoint that does not open (damaged, or
/// committed without its files) is neither counted nor deleted: it is evidence for a person.
pub fn prune(root: &Path, keep: usize, current: u64) -> Result<()> {
    let good: Vec<(u64, PathBuf)> = crate::read::list(root)?
        .into_iter()
        .filter(|(_, path)| crate::Checkpoint::open(path).is_ok())
        .collect();
    let n = good.len();
    for (step, path) in good.into_iter().take(n.saturating_sub(keep.max(1))) {
        if step != current {
            fs::remove_dir_all(&path).map_err(io(&path))?;
        }
    }
    Ok(())
}

/// Whether `name` is a temporary of a save (`step_<N>.tmp`, `step_<N>.tmp.<attempt>`) or a
/// checkpoint displaced by a commit of the same step (`step_<N>.old`, `step_<N>.old.<attempt>`).
fn is_partial(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("step_") else {
        return false;
    };
    let Some((step, kind)) = rest.split_once('.') else {
        return false;
    };
    let tail = kind
        .strip_prefix("tmp")
        .or_else(|| kind.strip_prefix("old"))
        .unwrap_or("x");
    step.parse::<u64>().is_ok()
        && (tail.is_empty()
            || tail
                .strip_prefix('.')
                .is_some_and(|a| a.chars().all(|c| c.is_ascii_hexdigit())))
}

/// Remove half-written checkpoints (`step_<N>.tmp.<attempt>`, and displaced `step_<N>.old.…`)
/// a crashed attempt left behind. Call on one rank before any rank saves.
pub fn clean_partial(root: &Path) -> Result<usize> {
    let Ok(entries) = fs::read_dir(root) else {
        return Ok(0);
    };
    let mut n = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if is_partial(&name) && safe_name(&name) {
            fs::remove_dir_all(e.path()).map_err(io(e.path()))?;
            n += 1;
        }
    }
    Ok(n)
}

/// A save handed to the background writer.
pub struct SaveJob {
    pub root: PathBuf,
    pub step: u64,
    /// The save's attempt id ([`new_attempt`]), the same on every rank of the save.
    pub attempt: u64,
    pub rank: usize,
    pub ranks: usize,
    pub pieces: Vec<RankPiece>,
    /// Set on the committing rank.
    pub commit: Option<Head>,
}

/// How a save ended. `pieces` comes back so its buffers are reused as the next staging area.
pub struct SaveReport {
    pub step: u64,
    /// The committed directory (committing rank), or `None` (other ranks: their part is
    /// durable; the commit is the committing rank's).
    pub result: Result<Option<PathBuf>>,
    pub bytes: u64,
    /// Time from hand-off to durable.
    pub seconds: f64,
    pub pieces: Vec<RankPiece>,
}

/// The background writer: one save in flight at a time, on its own thread.
pub struct Saver {
    tx: Option<mpsc::Sender<SaveJob>>,
    rx: mpsc::Receiver<SaveReport>,
    thread: Option<JoinHandle<()>>,
    in_flight: bool,
}

impl Default for Saver {
    fn default() -> Self {
        Self::new()
    }
}

impl Saver {
    pub fn new() -> Self {
        let (tx, jobs) = mpsc::channel::<SaveJob>();
        let (done, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("weft-ckpt-writer".into())
            .spawn(move || {
                for job in jobs {
                    let t = Instant::now();
                    let dir = tmp_dir(&job.root, job.step, job.attempt);
                    let written = write_rank(&job.root, job.step, job.attempt, job.rank, &job.pieces);
                    let (result, bytes) = match (&job.commit, written) {
                        (Some(head), Ok(bytes)) => {
                            let r = commit(&job.root, job.step, job.attempt, job.ranks, head);
                            if r.is_err() {
                                // Give the space back; the last committed checkpoint is untouched.
                                discard(&dir, job.ranks, job.rank, t + head.timeout);
                            }
                            (r.map(Some), bytes)
                        }
                        (Some(head), Err(e)) => {
                            discard(&dir, job.ranks, job.rank, t + head.timeout);
                            (Err(e), 0)
                        }
                        (None, Ok(bytes)) => (Ok(None), bytes),
                        (None, Err(e)) => {
                            // The committing rank sees the marker, fails the commit and removes
                            // the directory.
                            remove_rank_files(&dir, job.rank);
                            mark_failed(&dir, job.rank, &e);
                            (Err(e), 0)
                        }
                    };
                    let report = SaveReport {
                        step: job.step,
                        result,
                        bytes,
                        seconds: t.elapsed().as_secs_f64(),
                        pieces: job.pieces,
                    };
                    if done.send(report).is_err() {
                        break;
                    }
                }
            })
            .expect("spawn the checkpoint writer");
        Saver {
            tx: Some(tx),
            rx,
            thread: Some(thread),
            in_flight: false,
        }
    }

    /// Hand `job` to the writer. If the previous save is still writing, wait for it first and
    /// return its report.
    pub fn submit(&mut self, job: SaveJob) -> Result<Option<SaveReport>> {
        let prev = if self.in_flight { self.wait() } else { None };
        self.tx
            .as_ref()
            .and_then(|tx| tx.send(job).ok())
            .ok_or_else(|| Error::Other("the checkpoint writer has stopped".into()))?;
        self.in_flight = true;
        Ok(prev)
    }

    /// The report of a finished save, without blocking.
    pub fn poll(&mut self) -> Option<SaveReport> {
        let r = self.rx.try_recv().ok();
        if r.is_some() {
            self.in_flight = false;
        }
        r
    }

    /// Block until the save in flight (if any) is done.
    pub fn wait(&mut self) -> Option<SaveReport> {
        if !self.in_flight {
            return None;
        }
        self.in_flight = false;
        self.rx.recv().ok()
    }

    pub fn busy(&self) -> bool {
        self.in_flight
    }
}

impl Drop for Saver {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
