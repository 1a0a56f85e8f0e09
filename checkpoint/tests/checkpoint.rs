//! The format end to end: save from one layout, read on another; corruption, truncation,
//! missing files and escaping paths refused; retention; the background saver; and a writer
//! killed at random points never damaging the last committed checkpoint.

use std::path::Path;
use std::time::Duration;
use weft_checkpoint::*;

fn head(keep: usize, tensors: Vec<TensorMeta>) -> Head {
    Head {
        config_hash: "cfg".into(),
        mesh: vec![1, 2, 1, 1],
        state: serde_json::json!({"samples_seen": 12}),
        tensors,
        keep,
        timeout: Duration::from_secs(20),
    }
}

fn bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn floats(b: &[u8]) -> Vec<f32> {
    b.chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// `w (6, 4)` stored by 2 ranks as column halves (tensor parallel), `g (5)` by rank 1.
fn save(root: &Path, step: u64, scale: f32, keep: usize) -> std::path::PathBuf {
    let w: Vec<f32> = (0..24).map(|i| i as f32 * scale).collect();
    let g: Vec<f32> = (0..5).map(|i| -(i as f32) * scale).collect();
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
    ];
    let attempt = new_attempt();
    for rank in 0..2 {
        let cols: Vec<f32> = (0..6)
            .flat_map(|r| w[r * 4 + 2 * rank..r * 4 + 2 * rank + 2].to_vec())
            .collect();
        let mut pieces = vec![RankPiece {
            tensor: "w".into(),
            extent: Extent {
                start: 2 * rank as u64,
                len: 2,
                count: 6,
                stride: 4,
            },
            data: bytes(&cols),
        }];
        if rank == 1 {
            pieces.push(RankPiece {
                tensor: "g".into(),
                extent: Extent::run(0, 5),
                data: bytes(&g),
            });
        }
        write_rank(root, step, attempt, rank, &pieces).unwrap();
    }
    commit(root, step, attempt, 2, &head(keep, tensors)).unwrap()
}

/// The names under `dir`, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Damage step `step`'s checkpoint under `root` in one of three ways: a flipped data byte
/// (the manifest still opens), a truncated data file, or an unreadable manifest.
fn damage(root: &Path, step: u64, how: usize) {
    let dir = root.join(format!("step_{step:08}"));
    match how % 3 {
        0 => {
            let p = dir.join("rank_00000.bin");
            let mut b = std::fs::read(&p).unwrap();
            b[1] ^= 0x40;
            std::fs::write(&p, b).unwrap();
        }
        1 => {
            let p = dir.join("rank_00001.bin");
            let b = std::fs::read(&p).unwrap();
            std::fs::write(&p, &b[..b.len() / 2]).unwrap();
        }
        _ => std::fs::write(dir.join("manifest.json"), "{\"version\": 1, \"step\":").unwrap(),
    }
}

#[test]
fn a_checkpoint_saved_on_one_layout_reads_on_another() {
    let root = tempfile::tempdir().unwrap();
    let dir = save(root.path(), 7, 1.0, 3);
    assert_eq!(dir, root.path().join("step_00000007"));
    assert_eq!(
        std::fs::read_to_string(root.path().join("latest")).unwrap(),
        "step_00000007"
    );
    let c = Checkpoint::open(&dir).unwrap();
    assert_eq!(c.manifest.step, 7);
    assert_eq!(c.manifest.state["samples_seen"], 12);
    assert_eq!(c.verify_data().unwrap(), 4 * (24 + 5));
    // Rows 1..4 (a row-sharded reader), and a few scattered runs in any order.
    let mut out = vec![0u8; 12 * 4];
    c.read("w", &[(4, 12)], &mut out).unwrap();
    assert_eq!(floats(&out), (4..16).map(|i| i as f32).collect::<Vec<_>>());
    let mut out = vec![0u8; 4 * 4];
    c.read("w", &[(23, 1), (3, 2), (0, 1)], &mut out).unwrap();
    assert_eq!(floats(&out), vec![23., 3., 4., 0.]);
    let mut out = vec![0u8; 2 * 4];
    c.read("g", &[(3, 2)], &mut out).unwrap();
    assert_eq!(floats(&out), vec![-3., -4.]);
}

#[test]
fn corrupt_truncated_missing_and_escaping_checkpoints_are_refused() {
    let root = tempfile::tempdir().unwrap();
    save(root.path(), 1, 1.0, 5);
    let good = save(root.path(), 2, 2.0, 5);
    let damage = |f: &dyn Fn(&Path)| {
        let copy = root.path().join("step_00000003");
        let _ = std::fs::remove_dir_all(&copy);
        std::fs::create_dir(&copy).unwrap();
        for e in std::fs::read_dir(&good).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
        }
        f(&copy);
        std::fs::write(root.path().join("latest"), "step_00000003").unwrap();
        let err = Checkpoint::open(&copy)
            .and_then(|c| c.verify_data().map(|_| c))
            .unwrap_err()
            .to_string();
        // `--resume auto` falls back to the newest good one.
        let back = latest_valid(root.path()).unwrap().unwrap();
        assert_eq!(back.manifest.step, 2);
        err
    };
    let flip = damage(&|d| {
        let p = d.join("rank_00001.bin");
        let mut b = std::fs::read(&p).unwrap();
        b[5] ^= 0x10;
        std::fs::write(&p, b).unwrap();
    });
    assert!(flip.contains("fails its checksum"), "{flip}");
    let trunc = damage(&|d| {
        let p = d.join("rank_00000.bin");
        let b = std::fs::read(&p).unwrap();
        std::fs::write(&p, &b[..b.len() - 3]).unwrap();
    });
    assert!(trunc.contains("truncated"), "{trunc}");
    let missing = damage(&|d| std::fs::remove_file(d.join("rank_00001.bin")).unwrap());
    assert!(missing.contains("rank_00001.bin is missing"), "{missing}");
    let escape = damage(&|d| {
        let p = d.join("manifest.json");
        let s = std::fs::read_to_string(&p)
            .unwrap()
            .replace("rank_00000.bin", "../step_00000001/rank_00000.bin");
        std::fs::write(&p, s).unwrap();
    });
    assert!(escape.contains("not a plain file name"), "{escape}");
    let nomanifest = damage(&|d| std::fs::remove_file(d.join("manifest.json")).unwrap());
    assert!(nomanifest.contains("never committed"), "{nomanifest}");
}

#[test]
fn half_written_checkpoints_are_ignored_and_old_ones_pruned_after_commit() {
    let root = tempfile::tempdir().unwrap();
    for step in 1..=4 {
        save(root.path(), step, step as f32, 2);
    }
    let steps: Vec<u64> = list(root.path()).unwrap().into_iter().map(|s| s.0).collect();
    assert_eq!(steps, vec![3, 4]);
    // A save that died before its commit: rank files but no manifest, still `.tmp`.
    write_rank(root.path(), 5, new_attempt(), 0, &[]).unwrap();
    assert_eq!(latest_valid(root.path()).unwrap().unwrap().manifest.step, 4);
    assert_eq!(clean_partial(root.path()).unwrap(), 1);
    // Saving a step that exists again (a resumed run) replaces it whole.
    save(root.path(), 4, 10.0, 2);
    let c = latest_valid(root.path()).unwrap().unwrap();
    let mut out = vec![0u8; 4];
    c.read("w", &[(1, 1)], &mut out).unwrap();
    assert_eq!(floats(&out), vec![10.0]);
}

#[test]
fn the_background_saver_reports_when_a_save_is_durable_or_failed() {
    let root = tempfile::tempdir().unwrap();
    let mut saver = Saver::new();
    let job = |root: &Path, step| SaveJob {
        root: root.to_path_buf(),
        step,
        attempt: 7,
        rank: 0,
        ranks: 1,
        pieces: vec![RankPiece {
            tensor: "g".into(),
            extent: Extent::run(0, 2),
            data: bytes(&[1.0, 2.0]),
        }],
        commit: Some(head(
            3,
            vec![TensorMeta {
                key: "g".into(),
                dtype: DType::F32,
                shape: vec![2],
            }],
        )),
    };
    assert!(saver.submit(job(root.path(), 1)).unwrap().is_none());
    // A second save waits for the first and hands back its report.
    let first = saver.submit(job(root.path(), 2)).unwrap().unwrap();
    assert_eq!(first.step, 1);
    assert!(first.result.unwrap().unwrap().ends_with("step_00000001"));
    let second = saver.wait().unwrap();
    assert_eq!(second.bytes, 8);
    assert!(second.result.is_ok());
    // A root that cannot be created fails the save, reported, and the saver keeps working.
    let blocked = root.path().join("file");
    std::fs::write(&blocked, "not a directory").unwrap();
    saver.submit(job(&blocked, 3)).unwrap();
    let failed = saver.wait().unwrap();
    assert!(failed.result.is_err());
    saver.submit(job(root.path(), 4)).unwrap();
    assert!(saver.wait().unwrap().result.is_ok());
    assert_eq!(latest_valid(root.path()).unwrap().unwrap().manifest.step, 4);
}

#[test]
fn a_rank_that_cannot_write_fails_the_commit_at_once_naming_it() {
    let root = tempfile::tempdir().unwrap();
    let meta = vec![TensorMeta {
        key: "g".into(),
        dtype: DType::F32,
        shape: vec![4],
    }];
    let job = |rank: usize, commit: Option<Head>| SaveJob {
        root: root.path().to_path_buf(),
        step: 5,
        attempt: 9,
        rank,
        ranks: 2,
        pieces: vec![RankPiece {
            tensor: "g".into(),
            extent: Extent::run(2 * rank as u64, 2),
            data: bytes(&[1.0, 2.0]),
        }],
        commit,
    };
    // Rank 1's data file cannot be created (a directory holds its name).
    std::fs::create_dir_all(tmp_dir(root.path(), 5, 9).join(".rank_00001.bin.tmp")).unwrap();
    let (mut r0, mut r1) = (Saver::new(), Saver::new());
    r1.submit(job(1, None)).unwrap();
    assert!(r1.wait().unwrap().result.is_err());
    r0.submit(job(0, Some(head(2, meta)))).unwrap();
    let err = r0.wait().unwrap().result.unwrap_err().to_string();
    // Not the timeout: rank 1 left word that it failed.
    assert!(err.contains("rank 1 could not write its pieces"), "{err}");
    assert_eq!(
        entries(root.path()),
        Vec::<String>::new(),
        "the partial save is removed"
    );
    assert!(latest_valid(root.path()).unwrap().is_none());
}

/// Run as a child by the kill test: save forever.
#[test]
#[ignore = "run by writer_killed_at_random_points_never_damages_the_last_commit"]
fn child_saves_forever() {
    let Ok(root) = std::env::var("WEFT_CKPT_KILL_ROOT") else {
        return;
    };
    let start = list(Path::new(&root)).unwrap().last().map_or(0, |s| s.0) + 1;
    for step in start.. {
        save(Path::new(&root), step, step as f32, 2);
    }
}

#[test]
fn writer_killed_at_random_points_never_damages_the_last_commit() {
    let root = tempfile::tempdir().unwrap();
    save(root.path(), 0, 0.0, 2);
    let exe = std::env::current_exe().unwrap();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for round in 0..25 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut child = std::process::Command::new(&exe)
            .args(["--exact", "child_saves_forever", "--ignored", "--nocapture"])
            .env("WEFT_CKPT_KILL_ROOT", root.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(2_000 + seed % 40_000));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let c = latest_valid(root.path())
            .unwrap()
            .unwrap_or_else(|| panic!("round {round}: no loadable checkpoint"));
        c.verify_data().unwrap();
        let mut out = vec![0u8; 4];
        c.read("w", &[(5, 1)], &mut out).unwrap();
        assert_eq!(floats(&out), vec![5.0 * c.manifest.step as f32], "round {round}");
        clean_partial(root.path()).unwrap();
    }
    assert!(
        list(root.path()).unwrap().last().unwrap().0 > 0,
        "the child never committed"
    );
}

#[test]
fn retention_never_deletes_a_checkpoint_that_does_not_open() {
    let root = tempfile::tempdir().unwrap();
    for step in 1..=3 {
        save(root.path(), step, 1.0, 5);
    }
    damage(root.path(), 1, 1); // truncated data file
    damage(root.path(), 2, 2); // unreadable manifest
    for step in 4..=6 {
        save(root.path(), step, 1.0, 1);
    }
    // Keep 1 of those that open (6); 3 and 4, 5 went; the damaged 1 and 2 stay as evidence.
    assert_eq!(
        entries(root.path()),
        vec!["latest", "step_00000001", "step_00000002", "step_00000006"]
    );
}

#[test]
fn the_newest_checkpoint_that_verifies_wins_over_latest() {
    let root = tempfile::tempdir().unwrap();
    for step in 1..=3 {
        save(root.path(), step, step as f32, 5);
    }
    // A commit that died between its rename and `latest`, or a `latest` moved back by hand.
    std::fs::write(root.path().join("latest"), "step_00000001").unwrap();
    let r = choose(root.path()).unwrap();
    assert_eq!(r.chosen.as_ref().unwrap().manifest.step, 3);
    assert!(r.refused.is_empty());
    let line = r.latest_disagrees().unwrap();
    assert!(
        line.contains("names step_00000001, but step_00000003 is newer"),
        "{line}"
    );
    assert_eq!(latest_valid(root.path()).unwrap().unwrap().manifest.step, 3);
    // `latest` naming a damaged one: the newest good one, saying so.
    damage(root.path(), 3, 0);
    std::fs::write(root.path().join("latest"), "step_00000003").unwrap();
    let r = choose(root.path()).unwrap();
    assert_eq!(r.chosen.as_ref().unwrap().manifest.step, 2);
    assert_eq!(r.refused.len(), 1);
    assert!(r.refused[0].1.contains("fails its checksum"), "{:?}", r.refused);
    assert!(r.latest_disagrees().unwrap().contains("which was refused"));
}

#[test]
fn when_none_verifies_every_checkpoint_comes_back_with_its_reason() {
    let root = tempfile::tempdir().unwrap();
    for step in 1..=3 {
        save(root.path(), step, 1.0, 5);
        damage(root.path(), step, step as usize);
    }
    let before = entries(root.path());
    let r = choose(root.path()).unwrap();
    assert!(r.chosen.is_none() && r.found_any());
    let names: Vec<String> = r
        .refused
        .iter()
        .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["step_00000003", "step_00000002", "step_00000001"]);
    assert!(r.refused[0].1.contains("fails its checksum"), "{:?}", r.refused);
    assert!(r.refused[1].1.contains("unreadable manifest"), "{:?}", r.refused);
    assert!(r.refused[2].1.contains("truncated"), "{:?}", r.refused);
    assert!(latest_valid(root.path()).unwrap().is_none());
    assert_eq!(entries(root.path()), before, "choosing changes nothing");
    // A `latest` naming nothing is a refused commit too; an empty root holds nothing.
    let only = tempfile::tempdir().unwrap();
    std::fs::write(only.path().join("latest"), "step_00000009").unwrap();
    let r = choose(only.path()).unwrap();
    assert!(r.chosen.is_none() && r.refused.len() == 1 && r.refused[0].1.contains("not a checkpoint"));
    let empty = tempfile::tempdir().unwrap();
    assert!(!choose(empty.path()).unwrap().found_any());
    assert!(!choose(&empty.path().join("absent")).unwrap().found_any());
}

#[test]
fn checkpoints_set_aside_are_moved_whole_with_their_reasons() {
    let root = tempfile::tempdir().unwrap();
    for step in 1..=3 {
        save(root.path(), step, 1.0, 5);
    }
    damage(root.path(), 3, 0);
    let r = choose(root.path()).unwrap();
    let aside = set_aside(root.path(), &r.refused, "refused").unwrap().unwrap();
    assert!(aside
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("refused_"));
    // `latest` named the one moved: it goes with it; the chosen one stays.
    assert_eq!(entries(&aside), ["latest", "step_00000003", "why.txt"]);
    let why = std::fs::read_to_string(aside.join("why.txt")).unwrap();
    assert!(why.starts_with("step_00000003: piece of"), "{why}");
    assert_eq!(latest_valid(root.path()).unwrap().unwrap().manifest.step, 2);
    // Moved checkpoints are no longer this root's: neither listed nor pruned.
    let steps: Vec<u64> = step_dirs(root.path()).unwrap().into_iter().map(|s| s.0).collect();
    assert_eq!(steps, [1, 2]);
    save(root.path(), 4, 1.0, 1);
    assert!(aside.join("step_00000003/manifest.json").exists());
    assert!(set_aside(root.path(), &[], "x").unwrap().is_none());
}

#[test]
fn two_attempts_saving_the_same_step_never_share_a_temporary_directory() {
    let root = tempfile::tempdir().unwrap();
    let meta = vec![TensorMeta {
        key: "g".into(),
        dtype: DType::F32,
        shape: vec![2],
    }];
    let (a, b) = (new_attempt(), new_attempt());
    assert_ne!(a, b);
    assert_ne!(tmp_dir(root.path(), 3, a), tmp_dir(root.path(), 3, b));
    let piece = |v: f32| RankPiece {
        tensor: "g".into(),
        extent: Extent::run(0, 2),
        data: bytes(&[v, v]),
    };
    write_rank(root.path(), 3, a, 0, &[piece(1.0)]).unwrap();
    // Another writer of step 3 (an older attempt still running) writes beside it.
    write_rank(root.path(), 3, b, 0, &[piece(2.0)]).unwrap();
    commit(root.path(), 3, a, 1, &head(2, meta)).unwrap();
    let c = latest_valid(root.path()).unwrap().unwrap();
    let mut out = vec![0u8; 8];
    c.read("g", &[(0, 2)], &mut out).unwrap();
    assert_eq!(
        floats(&out),
        [1.0, 1.0],
        "the commit holds its own attempt's bytes"
    );
    assert!(tmp_dir(root.path(), 3, b).exists());
    // Temporaries of any attempt (and of the old unnamed form) are stale at the next start.
    std::fs::create_dir(root.path().join("step_00000004.tmp")).unwrap();
    std::fs::create_dir(root.path().join("step_00000003.old.00000000abcd")).unwrap();
    assert_eq!(clean_partial(root.path()).unwrap(), 3);
    assert_eq!(entries(root.path()), ["latest", "step_00000003"]);
}

#[test]
fn a_committing_rank_that_cannot_write_removes_the_whole_temporary_directory() {
    let root = tempfile::tempdir().unwrap();
    let meta = vec![TensorMeta {
        key: "g".into(),
        dtype: DType::F32,
        shape: vec![4],
    }];
    let job = |rank: usize, commit: Option<Head>| SaveJob {
        root: root.path().to_path_buf(),
        step: 2,
        attempt: 5,
        rank,
        ranks: 2,
        pieces: vec![RankPiece {
            tensor: "g".into(),
            extent: Extent::run(2 * rank as u64, 2),
            data: bytes(&[1.0, 2.0]),
        }],
        commit,
    };
    // Rank 0's data file cannot be created; rank 1 writes its part.
    std::fs::create_dir_all(tmp_dir(root.path(), 2, 5).join(".rank_00000.bin.tmp")).unwrap();
    let (mut r0, mut r1) = (Saver::new(), Saver::new());
    r0.submit(job(0, Some(head(2, meta)))).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    r1.submit(job(1, None)).unwrap();
    assert!(r1.wait().unwrap().result.is_ok());
    let err = r0.wait().unwrap().result.unwrap_err().to_string();
    assert!(
        err.contains(".rank_00000.bin.tmp"),
        "the error names the file: {err}"
    );
    assert_eq!(
        entries(root.path()),
        Vec::<String>::new(),
        "nothing of the failed save is left"
    );
}
