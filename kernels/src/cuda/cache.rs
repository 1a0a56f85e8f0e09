//! The on-disk cache of compiled kernel modules.
//!
//! An entry is one compiled image (a cubin, or PTX where NVRTC cannot target the device) of one
//! module. Its key is a 128-bit FNV-1a hash of everything the image depends on: the module's
//! name, its source, every header it is compiled with (name and text), the target architecture,
//! the NVRTC version and the compile options. A change to any of them is a new key, so entries
//! never go stale; old ones are simply no longer read.
//!
//! Location: `$WEFT_KERNEL_CACHE` if set, else `$XDG_CACHE_HOME/weft/kernels`, else
//! `$HOME/.cache/weft/kernels`. An entry is written to a temporary file in that directory and
//! renamed into place, so a reader sees a whole entry or none. Each file carries a header with
//! its key, the payload length and a checksum; a file that fails any of these checks (truncated,
//! overwritten, from another key) is ignored and the module is compiled again. The cache is an
//! optimisation only: an unwritable or missing directory means compiling every time, never an
//! error.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// First bytes of every cache file (the trailing digit is the file format's version).
const MAGIC: &[u8; 12] = b"weft-kernel1";

/// 128-bit FNV-1a, fed field by field; each field is length-prefixed so that no two different
/// sequences of fields hash the same stream of bytes.
#[derive(Clone, Debug)]
pub(crate) struct KeyHasher(u128);

impl KeyHasher {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013b;

    pub(crate) fn new() -> Self {
        KeyHasher(Self::OFFSET)
    }

    fn bytes(&mut self, data: &[u8]) {
        for &b in data {
            self.0 ^= b as u128;
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
    }

    /// Add one field.
    pub(crate) fn field(&mut self, data: &[u8]) -> &mut Self {
        self.bytes(&(data.len() as u64).to_le_bytes());
        self.bytes(data);
        self
    }

    pub(crate) fn finish(&self) -> u128 {
        self.0
    }
}

/// Everything a compiled image depends on.
#[derive(Clone, Copy, Debug)]
pub(crate) struct KeyParts<'a> {
    pub module: &'a str,
    pub source: &'a str,
    /// `(include name, text)` of each header, in the order given to NVRTC.
    pub headers: &'a [(&'a str, &'a str)],
    /// The architecture option given to NVRTC (`sm_90`, or `compute_90` for PTX).
    pub arch: &'a str,
    /// `(major, minor)` of the NVRTC library.
    pub nvrtc: (i32, i32),
    pub options: &'a [&'a str],
}

impl KeyParts<'_> {
    /// The entry's key.
    pub(crate) fn key(&self) -> u128 {
        let mut h = KeyHasher::new();
        h.field(MAGIC)
            .field(self.module.as_bytes())
            .field(self.source.as_bytes());
        h.field(&(self.headers.len() as u64).to_le_bytes());
        for (name, text) in self.headers {
            h.field(name.as_bytes()).field(text.as_bytes());
        }
        h.field(self.arch.as_bytes());
        h.field(&self.nvrtc.0.to_le_bytes())
            .field(&self.nvrtc.1.to_le_bytes());
        h.field(&(self.options.len() as u64).to_le_bytes());
        for o in self.options {
            h.field(o.as_bytes());
        }
        h.finish()
    }

    /// The entry's file name: readable prefix, then the key.
    pub(crate) fn file_name(&self) -> String {
        format!("{}-{}-{:032x}.bin", self.module, self.arch, self.key())
    }
}

/// The cache directory from the environment (see the module documentation); `None` when no
/// variable names one.
pub(crate) fn default_dir() -> Option<PathBuf> {
    dir_from(|k| std::env::var_os(k))
}

/// [`default_dir`] over any environment lookup (testable without touching the process's).
pub(crate) fn dir_from(env: impl Fn(&str) -> Option<std::ffi::OsString>) -> Option<PathBuf> {
    let set = |k: &str| env(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(d) = set("WEFT_KERNEL_CACHE") {
        return Some(d);
    }
    if let Some(d) = set("XDG_CACHE_HOME") {
        return Some(d.join("weft").join("kernels"));
    }
    set("HOME").map(|h| h.join(".cache").join("weft").join("kernels"))
}

fn checksum(payload: &[u8]) -> u128 {
    let mut h = KeyHasher::new();
    h.field(payload);
    h.finish()
}

/// The bytes of a cache file holding `payload` under `key`.
fn encode(key: u128, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAGIC.len() + 40 + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&key.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&checksum(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// The payload of a cache file's bytes, if they are a whole, intact entry for `key`.
fn decode(key: u128, bytes: &[u8]) -> Option<&[u8]> {
    let rest = bytes.strip_prefix(MAGIC.as_slice())?;
    let (k, rest) = rest.split_at_checked(16)?;
    let (len, rest) = rest.split_at_checked(8)?;
    let (sum, payload) = rest.split_at_checked(16)?;
    let k = u128::from_le_bytes(k.try_into().ok()?);
    let len = u64::from_le_bytes(len.try_into().ok()?);
    let sum = u128::from_le_bytes(sum.try_into().ok()?);
    (k == key && len == payload.len() as u64 && !payload.is_empty() && sum == checksum(payload))
        .then_some(payload)
}

/// One cache directory.
#[derive(Clone, Debug)]
pub(crate) struct DiskCache {
    dir: PathBuf,
}

impl DiskCache {
    pub(crate) fn new(dir: PathBuf) -> Self {
        DiskCache { dir }
    }

    /// The directory entries live in.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cached image for `parts`, or `None` (absent, unreadable or corrupt).
    pub(crate) fn load(&self, parts: &KeyParts<'_>) -> Option<Vec<u8>> {
        let bytes = fs::read(self.dir.join(parts.file_name())).ok()?;
        decode(parts.key(), &bytes).map(<[u8]>::to_vec)
    }

    /// Store `payload` for `parts`: written to a temporary file beside the entry, flushed, then
    /// renamed over it, so a concurrent reader sees the old entry, the new one, or none.
    pub(crate) fn store(&self, parts: &KeyParts<'_>, payload: &[u8]) -> std::io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        let dst = self.dir.join(parts.file_name());
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let tmp = self.dir.join(format!(
            ".{}.tmp-{}-{nanos}",
            parts.file_name(),
            std::process::id()
        ));
        let written = (|| {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&encode(parts.key(), payload))?;
            f.sync_all()?;
            fs::rename(&tmp, &dst)
        })();
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts<'a>(source: &'a str, headers: &'a [(&'a str, &'a str)], arch: &'a str) -> KeyParts<'a> {
        KeyParts {
            module: "elementwise",
            source,
            headers,
            arch,
            nvrtc: (13, 0),
            options: &["--std=c++17"],
        }
    }

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("weft-cache-test-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn the_key_changes_with_every_input_it_depends_on() {
        let h = [("prelude.cuh", "// a")];
        let base = parts("src", &h, "sm_90");
        let k = base.key();
        assert_eq!(k, parts("src", &h, "sm_90").key(), "the key is deterministic");
        assert_ne!(k, parts("src2", &h, "sm_90").key(), "source");
        assert_ne!(
            k,
            parts("src", &[("prelude.cuh", "// b")], "sm_90").key(),
            "header text"
        );
        assert_ne!(
            k,
            parts("src", &[("other.cuh", "// a")], "sm_90").key(),
            "header name"
        );
        assert_ne!(k, parts("src", &[], "sm_90").key(), "header present");
        assert_ne!(k, parts("src", &h, "sm_80").key(), "architecture");
        assert_ne!(
            k,
            KeyParts {
                nvrtc: (12, 8),
                ..base
            }
            .key(),
            "nvrtc version"
        );
        assert_ne!(k, KeyParts { options: &[], ..base }.key(), "options");
        assert_ne!(
            k,
            KeyParts {
                module: "reduce",
                ..base
            }
            .key(),
            "module name"
        );
        // Field boundaries count: moving text between source and header is a different key.
        assert_ne!(
            parts("ab", &[("h", "c")], "sm_90").key(),
            parts("a", &[("h", "bc")], "sm_90").key()
        );
        assert!(
            base.file_name().starts_with("elementwise-sm_90-"),
            "{}",
            base.file_name()
        );
        assert!(base.file_name().ends_with(&format!("{k:032x}.bin")));
    }

    #[test]
    fn the_hash_is_fnv1a_128() {
        // Published FNV-1a 128 test vectors ("" and "a"): the key is stable across builds.
        let raw = |s: &[u8]| {
            let mut h = KeyHasher::new();
            h.bytes(s);
            h.finish()
        };
        assert_eq!(raw(b""), 0x6c62272e07bb014262b821756295c58d);
        assert_eq!(raw(b"a"), 0xd228cb696f1a8caf78912b704e4a8964);
    }

    #[test]
    fn the_directory_follows_the_environment_in_order() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| std::ffi::OsString::from(v))
            }
        };
        const ALL: &[(&str, &str)] = &[
            ("WEFT_KERNEL_CACHE", "/w"),
            ("XDG_CACHE_HOME", "/x"),
            ("HOME", "/h"),
        ];
        assert_eq!(dir_from(env(ALL)), Some(PathBuf::from("/w")));
        assert_eq!(
            dir_from(env(&[("XDG_CACHE_HOME", "/x"), ("HOME", "/h")])),
            Some(PathBuf::from("/x/weft/kernels"))
        );
        assert_eq!(
            dir_from(env(&[("WEFT_KERNEL_CACHE", ""), ("HOME", "/h")])),
            Some(PathBuf::from("/h/.cache/weft/kernels")),
            "an empty variable is unset"
        );
        assert_eq!(dir_from(env(&[])), None);
    }

    #[test]
    fn an_entry_round_trips_and_another_key_misses() {
        let cache = DiskCache::new(scratch("roundtrip"));
        let p = parts("src", &[], "sm_90");
        assert_eq!(cache.load(&p), None, "empty cache");
        cache.store(&p, b"cubin bytes").unwrap();
        assert_eq!(cache.load(&p).as_deref(), Some(&b"cubin bytes"[..]));
        assert_eq!(cache.load(&parts("src", &[], "sm_80")), None);
        // The write left no temporary behind.
        let names: Vec<_> = fs::read_dir(cache.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec![p.file_name()]);
        // Storing again replaces the entry atomically.
        cache.store(&p, b"newer").unwrap();
        assert_eq!(cache.load(&p).as_deref(), Some(&b"newer"[..]));
        fs::remove_dir_all(cache.dir()).unwrap();
    }

    #[test]
    fn a_corrupt_entry_is_ignored() {
        let cache = DiskCache::new(scratch("corrupt"));
        let p = parts("src", &[], "sm_90");
        cache.store(&p, b"0123456789abcdef").unwrap();
        let path = cache.dir().join(p.file_name());
        let good = fs::read(&path).unwrap();
        let mut bad = Vec::new();
        // Truncated payload, truncated header, a flipped payload byte, a flipped key byte,
        // a length that disagrees, an empty file, and another format's magic.
        bad.push(good[..good.len() - 3].to_vec());
        bad.push(good[..20].to_vec());
        let mut flip = good.clone();
        *flip.last_mut().unwrap() ^= 1;
        bad.push(flip);
        let mut key = good.clone();
        key[MAGIC.len()] ^= 1;
        bad.push(key);
        let mut len = good.clone();
        len[MAGIC.len() + 16] ^= 1;
        bad.push(len);
        bad.push(Vec::new());
        let mut magic = good.clone();
        magic[0] = b'x';
        bad.push(magic);
        for (i, b) in bad.iter().enumerate() {
            fs::write(&path, b).unwrap();
            assert_eq!(cache.load(&p), None, "corruption {i} was accepted");
        }
        // Rebuilding overwrites the corrupt entry.
        cache.store(&p, b"rebuilt").unwrap();
        assert_eq!(cache.load(&p).as_deref(), Some(&b"rebuilt"[..]));
        fs::remove_dir_all(cache.dir()).unwrap();
    }

    #[test]
    fn an_unwritable_directory_is_an_error_not_a_panic() {
        // A regular file where the directory should be: create_dir_all fails.
        let f = scratch("notadir");
        fs::write(&f, b"x").unwrap();
        let cache = DiskCache::new(f.join("sub"));
        let p = parts("src", &[], "sm_90");
        assert!(cache.store(&p, b"x").is_err());
        assert_eq!(cache.load(&p), None);
        fs::remove_file(&f).unwrap();
    }
}
