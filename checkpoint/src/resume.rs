//! Which checkpoint a run continues from: the newest one that verifies, with every checkpoint
//! refused on the way and why; and moving checkpoints aside (never deleting them) when a run
//! starts over or continues past damaged ones.

use crate::read::Checkpoint;
use crate::{io, manifest::safe_name, Error, Result};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Every checkpoint directory under `root`, committed or damaged: `step_<N>` (not the
/// temporaries `step_<N>.tmp.…`), oldest first.
pub fn step_dirs(root: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let entries = match fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(io(root)(e)),
    };
    let mut out = vec![];
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(n) = name.strip_prefix("step_") else {
            continue;
        };
        if n.bytes().all(|b| b.is_ascii_digit()) && e.path().is_dir() {
            if let Ok(step) = n.parse::<u64>() {
                out.push((step, e.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Why a checkpoint was refused, without the directory the caller already names.
pub fn reason(dir: &Path, e: &Error) -> String {
    match e {
        Error::Invalid { path, why } if path == dir => why.clone(),
        Error::Invalid { path, why } => format!("{}: {why}", shown(dir, path)),
        Error::Io { path, source } => format!("{}: {source}", shown(dir, path)),
        Error::Other(s) => s.clone(),
    }
}

fn shown(dir: &Path, path: &Path) -> String {
    path.strip_prefix(dir).unwrap_or(path).display().to_string()
}

/// What a checkpoint root offers a run that continues.
#[derive(Debug)]
pub struct Resume {
    /// The newest checkpoint whose manifest and every byte verify.
    pub chosen: Option<Checkpoint>,
    /// The checkpoints tried before it and refused, newest first, each with why (all of them
    /// when none verifies). A `latest` that names no checkpoint directory is listed too.
    pub refused: Vec<(PathBuf, String)>,
    /// What `latest` names, if the file exists.
    pub latest: Option<String>,
}

impl Resume {
    /// Whether the root holds anything committed: a checkpoint directory or a `latest` file.
    pub fn found_any(&self) -> bool {
        self.chosen.is_some() || !self.refused.is_empty() || self.latest.is_some()
    }

    /// When `latest` names another directory than the chosen checkpoint: a sentence saying so.
    pub fn latest_disagrees(&self) -> Option<String> {
        let (c, latest) = (self.chosen.as_ref()?, self.latest.as_deref()?);
        let chosen = c.dir.file_name()?.to_string_lossy().into_owned();
        if chosen == latest {
            return None;
        }
        let refused = self
            .refused
            .iter()
            .any(|(p, _)| p.file_name().is_some_and(|n| n == latest));
        Some(if refused {
            format!(
                "`latest` names {latest}, which was refused; {chosen} is the newest checkpoint that verifies"
            )
        } else {
            format!("`latest` names {latest}, but {chosen} is newer and verifies: it wins")
        })
    }
}

/// The newest checkpoint under `root` that verifies (manifest and every byte's checksum), by
/// step number whatever `latest` names, and every checkpoint refused on the way with its reason.
/// A root that does not exist holds nothing.
pub fn choose(root: &Path) -> Result<Resume> {
    let mut refused = vec![];
    let latest = match fs::read_to_string(root.join("latest")) {
        Ok(s) => Some(s.trim().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            refused.push((root.join("latest"), format!("unreadable: {e}")));
            None
        }
    };
    let dirs = step_dirs(root)?;
    if let Some(name) = &latest {
        if !safe_name(name)
            || !dirs
                .iter()
                .any(|(_, p)| p.file_name().is_some_and(|n| n == name.as_str()))
        {
            refused.push((
                root.join("latest"),
                format!("names {name:?}, which is not a checkpoint directory here"),
            ));
        }
    }
    let mut chosen = None;
    for (_, dir) in dirs.into_iter().rev() {
        match Checkpoint::open(&dir).and_then(|c| c.verify_data().map(|_| c)) {
            Ok(c) => {
                chosen = Some(c);
                break;
            }
            Err(e) => {
                let why = reason(&dir, &e);
                tracing::debug!("refusing checkpoint {}: {why}", dir.display());
                refused.push((dir, why));
            }
        }
    }
    Ok(Resume {
        chosen,
        refused,
        latest,
    })
}

/// The newest checkpoint under `root` that verifies (see [`choose`]); refusals are logged with
/// their reason. `None` when there is none.
pub fn latest_valid(root: &Path) -> Result<Option<Checkpoint>> {
    let r = choose(root)?;
    for (dir, why) in &r.refused {
        tracing::warn!("refusing checkpoint {}: {why}", dir.display());
    }
    Ok(r.chosen)
}

/// Move checkpoint directories under `root` (those of `dirs` that exist), untouched, into a new
/// directory `<root>/<label>_<unix seconds>/`, with a `why.txt` listing each and its reason;
/// `latest` goes with them unless it names a checkpoint directory that stays. Nothing is
/// deleted, and what is moved is no longer a checkpoint of this root (neither resumed nor
/// pruned). Returns the new directory, or `None` when there was nothing to move.
pub fn set_aside(root: &Path, dirs: &[(PathBuf, String)], label: &str) -> Result<Option<PathBuf>> {
    let present: Vec<&(PathBuf, String)> = dirs
        .iter()
        .filter(|(p, _)| p.parent() == Some(root) && p.is_dir())
        .collect();
    let latest = root.join("latest");
    let latest_moves = fs::read_to_string(&latest).ok().is_some_and(|name| {
        let name = name.trim();
        let stays = safe_name(name)
            && root.join(name).is_dir()
            && !present
                .iter()
                .any(|(p, _)| p.file_name().is_some_and(|n| n == name));
        !stays
    });
    if present.is_empty() && !latest_moves {
        return Ok(None);
    }
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut aside = root.join(format!("{label}_{secs}"));
    let mut k = 1;
    loop {
        match fs::create_dir(&aside) {
            Ok(()) => break,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && k < 1000 => {
                k += 1;
                aside = root.join(format!("{label}_{secs}_{k}"));
            }
            Err(e) => return Err(io(&aside)(e)),
        }
    }
    let mut why = String::new();
    for (p, reason) in &present {
        let name = p.file_name().expect("a directory under root");
        let dst = aside.join(name);
        fs::rename(p, &dst).map_err(io(&dst))?;
        why.push_str(&format!("{}: {reason}\n", name.to_string_lossy()));
    }
    if latest_moves {
        let dst = aside.join("latest");
        fs::rename(&latest, &dst).map_err(io(&dst))?;
    }
    let wpath = aside.join("why.txt");
    fs::File::create(&wpath)
        .and_then(|mut f| f.write_all(why.as_bytes()))
        .map_err(io(&wpath))?;
    fs::File::open(root)
        .and_then(|f| f.sync_all())
        .map_err(io(root))?;
    Ok(Some(aside))
}
