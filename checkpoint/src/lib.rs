//! # weft-checkpoint
//!
//! Checkpoints that survive crashes and move between meshes.
//!
//! ## Format (version 1)
//!
//! ```text
//! <root>/
//!   latest                 the name of the newest committed checkpoint ("step_00000120")
//!   step_00000120/
//!     manifest.json        written last: everything below, and what every byte is
//!     rank_00000.bin       the pieces rank 0 stored, back to back
//!     rank_00001.bin       …
//! ```
//!
//! The [`Manifest`] lists every global tensor (key, dtype, global shape) and every stored
//! [`Piece`]: which tensor, which elements of its flattened global form (an [`Extent`]: `count`
//! runs of `len` elements, `stride` apart — a block of rows, or a column slice of a row-major
//! matrix), which file and byte range, and a CRC-32 of those bytes. It also holds the step,
//! a hash of the config, the mesh at save, and a free-form `state` (the trainer keeps its data
//! position and optimizer step count there). Each element of each tensor is stored exactly once;
//! [`Manifest::verify`] checks this at save and again at load.
//!
//! ## Commit protocol
//!
//! Every rank writes `rank_<r>.bin` and its piece list `rank_<r>.json` into
//! `step_<N>.tmp.<attempt>/` (each file under a temporary name, fsynced, renamed). The attempt
//! id ([`new_attempt`]) is chosen once per run attempt and shared by its ranks, so two writers
//! never share a temporary directory. The committing rank waits for all ranks' lists, merges
//! them, verifies coverage against the files written, writes `manifest.json` the same way,
//! fsyncs the directory, renames it to `step_<N>`, fsyncs the root, and only then points
//! `latest` at it (temporary file, fsync, rename). A crash at any moment leaves the previous
//! checkpoint intact; a directory without a manifest, or still named `.tmp…`, is never loaded.
//! A rank that cannot write its part leaves a `rank_<r>.failed` marker so the commit fails at
//! once; the committing rank then removes the whole temporary directory. [`clean_partial`]
//! removes what a crashed attempt left.
//!
//! Retention ([`prune`]): after a commit, of the checkpoints whose manifest opens, the newest
//! `keep` stay and older ones are deleted. A checkpoint that does not open is never deleted.
//!
//! ## Loading
//!
//! [`Checkpoint::open`] verifies the manifest (version, dtypes, shapes, file names that stay in
//! the directory, byte ranges inside their files that no two pieces share, exact coverage), with
//! checked arithmetic throughout, so that nothing is allocated for data the files do not hold.
//! [`Checkpoint::read`] reads the elements a rank needs — on any mesh — from whichever pieces
//! hold them, checking each piece's CRC as it is read. [`choose`] picks the newest checkpoint
//! that verifies by step number (whatever `latest` says) and returns every checkpoint refused on
//! the way with its reason; [`set_aside`] moves checkpoints out of the way (a fresh start, or
//! refused ones a run continues past) without deleting them.

mod manifest;
mod read;
mod resume;
mod write;

pub use manifest::{DType, Extent, Manifest, Piece, TensorMeta, VERSION};
pub use read::{list, Checkpoint};
pub use resume::{choose, latest_valid, reason, set_aside, step_dirs, Resume};
pub use write::{
    clean_partial, commit, new_attempt, prune, tmp_dir, write_rank, Head, RankPiece, SaveJob, SaveReport,
    Saver,
};

use std::path::PathBuf;

/// What went wrong, and where.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// The checkpoint is not usable (corrupt, incomplete, inconsistent).
    #[error("checkpoint {path}: {why}")]
    Invalid { path: PathBuf, why: String },
    #[error("checkpoint: {0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}

pub(crate) fn invalid(path: impl Into<PathBuf>, why: impl Into<String>) -> Error {
    Error::Invalid {
        path: path.into(),
        why: why.into(),
    }
}

/// The directory name of step `n`'s checkpoint.
pub fn step_dir_name(step: u64) -> String {
    format!("step_{step:08}")
}
