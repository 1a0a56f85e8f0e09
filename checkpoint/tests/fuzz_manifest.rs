//! The manifest reader under hostile input: manifests mutated from a real one (numbers set to
//! huge, overflowing, zero or nearby values; pieces duplicated or dropped; names changed; bytes
//! flipped, inserted or cut off; data files cut short) and manifests made up from random
//! values. Opening, verifying every byte and reading every tensor must return, never panic,
//! and never ask for more memory than a small multiple of what the files hold.

use proptest::prelude::*;
use serde_json::Value;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::time::Duration;
use weft_checkpoint::{
    commit, new_attempt, write_rank, Checkpoint, DType, Extent, Head, RankPiece, TensorMeta, VERSION,
};

/// The system allocator, recording the largest request made on this thread while armed, and
/// refusing (so the process aborts, naming the size) any request above `LIMIT`.
struct Watched;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

/// A request this large while reading a checkpoint of a few KiB is a bug.
const LIMIT: usize = 64 << 20;

fn note(size: usize) -> bool {
    ARMED
        .try_with(|armed| {
            if !armed.get() {
                return true;
            }
            let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
            size <= LIMIT
        })
        .unwrap_or(true)
}

unsafe impl GlobalAlloc for Watched {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !note(layout.size()) {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !note(layout.size()) {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !note(new_size) {
            return std::ptr::null_mut();
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Watched = Watched;

/// A real checkpoint written by this crate: `w (6, 4)` f32 as column halves of 2 ranks, `g (5)`
/// f32 and `h (3)` f64 on rank 1. Returns its directory and its data files' bytes.
fn fixture(root: &Path) -> (PathBuf, Vec<(String, Vec<u8>)>) {
    let f32s = |v: Vec<f32>| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let tensors = vec![
        TensorMeta {
            key: "w".into(),
            dtype: DType::F32,
            shape: vec![6, 4],
        },
        TensorMeta {
            key: "g".into(),
            dtype: DType::F32,
            shape: vec![5],
        },
        TensorMeta {
            key: "h".into(),
            dtype: DType::F64,
            shape: vec![3],
        },
    ];
    let attempt = new_attempt();
    for rank in 0..2u64 {
        let mut pieces = vec![RankPiece {
            tensor: "w".into(),
            extent: Extent {
                start: 2 * rank,
                len: 2,
                count: 6,
                stride: 4,
            },
            data: f32s((0..12).map(|i| i as f32 + rank as f32).collect()),
        }];
        if rank == 1 {
            pieces.push(RankPiece {
                tensor: "g".into(),
                extent: Extent::run(0, 5),
                data: f32s(vec![1.5; 5]),
            });
            pieces.push(RankPiece {
                tensor: "h".into(),
                extent: Extent::run(0, 3),
                data: [0.25f64; 3].iter().flat_map(|x| x.to_le_bytes()).collect(),
            });
        }
        write_rank(root, 4, attempt, rank as usize, &pieces).unwrap();
    }
    let head = Head {
        config_hash: "cfg".into(),
        mesh: vec![1, 2, 1, 1],
        state: serde_json::json!({"samples_seen": 12}),
        tensors,
        keep: 1,
        timeout: Duration::from_secs(20),
    };
    let dir = commit(root, 4, attempt, 2, &head).unwrap();
    let files = ["rank_00000.bin", "rank_00001.bin"]
        .iter()
        .map(|f| (f.to_string(), std::fs::read(dir.join(f)).unwrap()))
        .collect();
    (dir, files)
}

/// Open, verify every byte and read every tensor whole; `Ok(true)` if the checkpoint opened.
/// Fails if anything asks for more memory than `bound` bytes at once.
fn exercise(dir: &Path, bound: usize) -> Result<bool, TestCaseError> {
    LARGEST.with(|l| l.set(0));
    ARMED.with(|a| a.set(true));
    let opened = match Checkpoint::open(dir) {
        Ok(c) => {
            let _ = c.verify_data();
            for t in &c.manifest.tensors {
                // A verified manifest's tensors fit in its files: allocating them is safe.
                let n = t.numel();
                let bytes = n.checked_mul(t.dtype.size() as u64).map(|b| b as usize);
                if let Some(bytes) = bytes.filter(|&b| b <= bound) {
                    let mut out = vec![0u8; bytes];
                    let _ = c.read(&t.key, &[(0, n)], &mut out);
                    if n > 2 {
                        let mut out = vec![0u8; 2 * t.dtype.size()];
                        let _ = c.read(&t.key, &[(n - 1, 1), (0, 1)], &mut out);
                    }
                } else {
                    ARMED.with(|a| a.set(false));
                    return Err(TestCaseError::fail(format!(
                        "an opened manifest has tensor `{}` of {n} elements, beyond its files",
                        t.key
                    )));
                }
            }
            true
        }
        Err(_) => false,
    };
    ARMED.with(|a| a.set(false));
    let largest = LARGEST.with(|l| l.get());
    prop_assert!(
        largest <= bound,
        "an allocation of {largest} bytes (bound {bound})"
    );
    Ok(opened)
}

/// A number to put in the manifest: extremes, powers of two, random, or near the original.
#[derive(Clone, Debug)]
enum Num {
    Abs(u64),
    Near(i64),
    Neg,
    Frac,
}

fn num() -> impl Strategy<Value = Num> {
    prop_oneof![
        3 => prop_oneof![
            Just(0u64),
            Just(1),
            Just(u64::MAX),
            Just(u64::MAX - 1),
            Just(1 << 63),
            Just((1 << 63) + 1),
            Just(1 << 32),
            Just((1 << 32) + 1),
            Just(u32::MAX as u64),
            (0u32..64).prop_map(|k| 1u64 << k),
            any::<u64>(),
            0u64..100,
        ]
        .prop_map(Num::Abs),
        2 => (-8i64..=8).prop_map(Num::Near),
        1 => Just(Num::Neg),
        1 => Just(Num::Frac),
    ]
}

/// How many number nodes a JSON value holds.
fn count_numbers(v: &Value) -> usize {
    match v {
        Value::Number(_) => 1,
        Value::Array(a) => a.iter().map(count_numbers).sum(),
        Value::Object(o) => o.values().map(count_numbers).sum(),
        _ => 0,
    }
}

/// Call `f` on the number node `*k` counts down to (document order).
fn visit_number(v: &mut Value, k: &mut usize, f: &dyn Fn(&mut Value)) {
    match v {
        Value::Number(_) => {
            if *k == 0 {
                f(v);
            }
            *k = k.wrapping_sub(1);
        }
        Value::Array(a) => a.iter_mut().for_each(|x| visit_number(x, k, f)),
        Value::Object(o) => o.values_mut().for_each(|x| visit_number(x, k, f)),
        _ => {}
    }
}

fn set_number(v: &mut Value, k: usize, n: &Num) {
    let all = count_numbers(v);
    if all == 0 {
        return;
    }
    let mut k = k % all;
    visit_number(v, &mut k, &|node| {
        let old = node.as_u64().unwrap_or(0);
        *node = match n {
            Num::Abs(x) => Value::from(*x),
            Num::Near(d) => Value::from(old.wrapping_add_signed(*d)),
            Num::Neg => Value::from((-1i64).wrapping_sub(old as i64)),
            Num::Frac => serde_json::json!(old as f64 + 0.5),
        };
    });
}

#[derive(Clone, Debug)]
enum Edit {
    Number(usize, Num),
    DupPiece(usize),
    DropPiece(usize),
    PieceFile(usize, String),
    PieceTensor(usize, String),
    Dtype(usize, String),
    ShapeDim(usize, u64),
}

fn edit() -> impl Strategy<Value = Edit> {
    let name = prop_oneof![
        Just("rank_00000.bin".to_string()),
        Just("rank_00001.bin".to_string()),
        Just("manifest.json".to_string()),
        Just("../rank_00000.bin".to_string()),
        Just("".to_string()),
        "[a-z_.]{1,12}",
    ];
    let key = prop_oneof![
        Just("w".to_string()),
        Just("g".to_string()),
        Just("h".to_string()),
        "[a-z]{0,3}"
    ];
    prop_oneof![
        8 => (any::<usize>(), num()).prop_map(|(k, n)| Edit::Number(k, n)),
        1 => any::<usize>().prop_map(Edit::DupPiece),
        1 => any::<usize>().prop_map(Edit::DropPiece),
        1 => (any::<usize>(), name).prop_map(|(k, s)| Edit::PieceFile(k, s)),
        1 => (any::<usize>(), key).prop_map(|(k, s)| Edit::PieceTensor(k, s)),
        1 => (any::<usize>(), prop_oneof![Just("f64".to_string()), Just("f32".to_string()), Just("f16".to_string())])
            .prop_map(|(k, s)| Edit::Dtype(k, s)),
        1 => (any::<usize>(), prop_oneof![Just(0u64), Just(u64::MAX), Just(1 << 40), 1u64..30])
            .prop_map(|(k, d)| Edit::ShapeDim(k, d)),
    ]
}

fn apply(m: &mut Value, e: &Edit) {
    let pieces = |m: &mut Value| m["pieces"].as_array_mut().map(std::mem::take).unwrap_or_default();
    match e {
        Edit::Number(k, n) => set_number(m, *k, n),
        Edit::DupPiece(k) => {
            let mut p = pieces(m);
            if !p.is_empty() {
                let x = p[k % p.len()].clone();
                p.push(x);
            }
            m["pieces"] = Value::Array(p);
        }
        Edit::DropPiece(k) => {
            let mut p = pieces(m);
            if !p.is_empty() {
                let i = k % p.len();
                p.remove(i);
            }
            m["pieces"] = Value::Array(p);
        }
        Edit::PieceFile(k, s) | Edit::PieceTensor(k, s) => {
            let field = if matches!(e, Edit::PieceFile(..)) {
                "file"
            } else {
                "tensor"
            };
            let mut p = pieces(m);
            if !p.is_empty() {
                let i = k % p.len();
                p[i][field] = Value::from(s.as_str());
            }
            m["pieces"] = Value::Array(p);
        }
        Edit::Dtype(k, s) => {
            if let Some(t) = m["tensors"].as_array_mut().filter(|t| !t.is_empty()) {
                let i = k % t.len();
                t[i]["dtype"] = Value::from(s.as_str());
            }
        }
        Edit::ShapeDim(k, d) => {
            if let Some(t) = m["tensors"].as_array_mut().filter(|t| !t.is_empty()) {
                let i = k % t.len();
                if let Some(s) = t[i]["shape"].as_array_mut() {
                    s.push(Value::from(*d));
                }
            }
        }
    }
}

/// Byte-level damage to the serialized manifest.
#[derive(Clone, Debug)]
enum Bytes {
    None,
    Truncate(usize),
    Flip(usize, u8),
    Insert(usize, u8),
}

fn bytes_edit() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        6 => Just(Bytes::None),
        1 => any::<usize>().prop_map(Bytes::Truncate),
        2 => (any::<usize>(), 0u8..8).prop_map(|(k, b)| Bytes::Flip(k, b)),
        1 => (any::<usize>(), prop_oneof![Just(b'9'), Just(b'-'), Just(b'"'), Just(b'}'), any::<u8>()])
            .prop_map(|(k, b)| Bytes::Insert(k, b)),
    ]
}

struct Case {
    dir: PathBuf,
    files: Vec<(String, Vec<u8>)>,
    manifest: Value,
    /// Allocations allowed: a small multiple of what the files and manifest hold.
    bound: usize,
    _root: tempfile::TempDir,
}

fn case() -> Case {
    let root = tempfile::tempdir().unwrap();
    let (dir, files) = fixture(root.path());
    let text = std::fs::read(dir.join("manifest.json")).unwrap();
    let held: usize = files.iter().map(|f| f.1.len()).sum();
    Case {
        manifest: serde_json::from_slice(&text).unwrap(),
        bound: 16 * (held + 4 * text.len()) + (1 << 20),
        dir,
        files,
        _root: root,
    }
}

/// Put the case's manifest text and (possibly cut) data files in place.
fn install(c: &Case, text: &[u8], cut: Option<(usize, usize)>) {
    std::fs::write(c.dir.join("manifest.json"), text).unwrap();
    for (i, (name, data)) in c.files.iter().enumerate() {
        let n = match cut {
            Some((f, at)) if f % c.files.len() == i => at % (data.len() + 1),
            _ => data.len(),
        };
        std::fs::write(c.dir.join(name), &data[..n]).unwrap();
    }
}

thread_local! {
    /// One fixture per test thread; every case rewrites its files.
    static CASE: Case = case();
}

#[test]
fn the_unmutated_manifest_opens_and_reads_within_the_bound() {
    CASE.with(|c| {
        let text = serde_json::to_vec(&c.manifest).unwrap();
        install(c, &text, None);
        assert!(exercise(&c.dir, c.bound).unwrap(), "the fixture opens");
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]

    #[test]
    fn mutated_manifests_are_refused_or_read_never_panicking_nor_overallocating(
        edits in prop::collection::vec(edit(), 1..4),
        damage in bytes_edit(),
        cut in prop::option::weighted(0.1, (any::<usize>(), any::<usize>())),
    ) {
        CASE.with(|c| mutated(c, &edits, &damage, cut))?;
    }

    #[test]
    fn made_up_manifests_are_refused_or_read_never_panicking_nor_overallocating(
        shapes in prop::collection::vec(prop::collection::vec(prop_oneof![0u64..40, any::<u64>()], 0..3), 0..4),
        pieces in prop::collection::vec(
            (0usize..4, (prop_oneof![0u64..40, any::<u64>()], prop_oneof![0u64..40, any::<u64>()],
                prop_oneof![0u64..8, any::<u64>()], prop_oneof![0u64..40, any::<u64>()]),
             0usize..2, prop_oneof![0u64..200, any::<u64>()], prop_oneof![0u64..200, any::<u64>()]),
            0..6),
    ) {
        CASE.with(|c| made_up(c, &shapes, &pieces))?;
    }
}

fn mutated(
    c: &Case,
    edits: &[Edit],
    damage: &Bytes,
    cut: Option<(usize, usize)>,
) -> Result<(), TestCaseError> {
    let mut m = c.manifest.clone();
    for e in edits {
        apply(&mut m, e);
    }
    let mut text = serde_json::to_vec_pretty(&m).unwrap();
    match *damage {
        Bytes::None => {}
        Bytes::Truncate(k) => text.truncate(k % (text.len() + 1)),
        Bytes::Flip(k, b) => {
            let i = k % text.len();
            text[i] ^= 1 << b;
        }
        Bytes::Insert(k, b) => {
            let i = k % (text.len() + 1);
            text.insert(i, b);
        }
    }
    install(c, &text, cut);
    exercise(&c.dir, c.bound).map(|_| ())
}

type MadeUpPiece = (usize, (u64, u64, u64, u64), usize, u64, u64);

fn made_up(c: &Case, shapes: &[Vec<u64>], pieces: &[MadeUpPiece]) -> Result<(), TestCaseError> {
    let tensors: Vec<Value> = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| serde_json::json!({"key": format!("t{i}"), "dtype": if i % 2 == 0 { "f32" } else { "f64" }, "shape": s}))
            .collect();
    let pieces: Vec<Value> = pieces
        .iter()
        .map(|(t, (start, len, count, stride), f, offset, bytes)| {
            serde_json::json!({
                "tensor": format!("t{t}"),
                "extent": {"start": start, "len": len, "count": count, "stride": stride},
                "file": c.files[*f].0,
                "offset": offset,
                "bytes": bytes,
                "crc32": 0,
            })
        })
        .collect();
    let m = serde_json::json!({
        "version": VERSION, "step": 1, "config_hash": "x", "mesh": [1, 1, 1, 1],
        "state": null, "tensors": tensors, "pieces": pieces,
    });
    install(c, &serde_json::to_vec(&m).unwrap(), None);
    exercise(&c.dir, c.bound).map(|_| ())
}
