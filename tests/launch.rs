//! `weft launch` on this machine, 4 MPI rank processes: a fault matrix (crash, hang,
//! straggler, preemption, a full checkpoint disk) where each failure is detected, the right
//! rank named, the run resumed from its checkpoint (or, for the disk, carried on) and finished
//! with the fault-free run's bits; a preflight that refuses unhealthy nodes and a slow
//! all-reduce; a store that turns away clients without the run's secret, trusts nothing a
//! client says about itself and logs floods briefly; and ranks that save and stop when their
//! driver is killed.

mod common;

use std::io::{BufRead, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn sets(out: &Path, name: &str) -> Vec<String> {
    common::tiny_run(out, name, &["launch.hang_timeout_s=3"])
}

fn launch(out: &Path, name: &str) -> Command {
    let cfg = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../configs")).join("dit-tiny.toml");
    let mut c = Command::new(env!("CARGO_BIN_EXE_weft"));
    c.arg("launch").arg(cfg).args(sets(out, name));
    c
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn digest(run: &Path) -> serde_json::Value {
    json(&run.join("sharded.json"))["params_digest"].clone()
}

#[test]
fn rank_faults_are_detected_named_and_recovered_with_the_fault_free_bits() {
    let dir = tempfile::tempdir().unwrap();
    let out = launch(dir.path(), "clean").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let want = digest(&dir.path().join("clean"));
    for (fault, kind, rank) in [
        ("crash:2:6", "exit", 2),
        ("exit:1:10", "exit", 1),
        ("hang:3:7", "hang", 3),
        ("slow:0:3", "straggler", 0),
    ] {
        let name = fault.replace(':', "_");
        // A slowed rank is ~20× slower; 8 leaves room for the noise of a loaded machine.
        let factor = if kind == "straggler" { "8" } else { "1000" };
        let out = launch(dir.path(), &name)
            .args(["--set", &format!("launch.straggler_factor={factor}")])
            .env("WEFT_FAULT", fault)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{fault}: {text}");
        let run = dir.path().join(&name);
        let s = json(&run.join("launch.json"));
        assert_eq!(s["outcome"], "finished", "{fault}");
        assert_eq!(s["attempts"], 2, "{fault}");
        let f = &s["failures"][0];
        assert_eq!(f["kind"], kind, "{fault}: {f}");
        assert_eq!(f["rank"], rank, "{fault}: {f}");
        assert!(f["time_to_detect_s"].as_f64().unwrap() >= 0.0);
        assert!(f["time_to_recover_s"].as_f64().unwrap() > 0.0, "{fault}: {f}");
        assert!(text.contains("detected in") && text.contains("ETTR"), "{text}");
        assert!(s["ettr"].as_f64().unwrap() > 0.0);
        assert_eq!(
            digest(&run),
            want,
            "{fault}: final parameters differ from the fault-free run"
        );
        let events = std::fs::read_to_string(run.join("events.jsonl")).unwrap();
        assert!(events.contains("\"recovered\""), "{events}");
    }
    // Every attempt passed the all-reduce preflight before its first step.
    let events = std::fs::read_to_string(dir.path().join("clean/events.jsonl")).unwrap();
    let pre = events
        .lines()
        .find(|l| l.contains("\"preflight\""))
        .expect("a preflight event");
    let pre: serde_json::Value = serde_json::from_str(pre).unwrap();
    assert!(pre["allreduce_busbw_gbps"].as_f64().unwrap() > 0.0, "{pre}");

    // A checkpoint disk that fills up: saves fail and are reported with the rank and node,
    // training carries on, and the last good checkpoint stays the one to resume from.
    let one = common::checkpoint_bytes(&dir.path().join("clean/checkpoints"));
    let Some(small) = common::Mount::room_for_1_5(&dir.path().join("small"), one) else {
        return;
    };
    let mnt = &small.0;
    let out = launch(dir.path(), "full")
        .args(["--set", &format!("checkpoint.dir=\"{}\"", mnt.display())])
        .args([
            "--set",
            "checkpoint.keep=1",
            "--set",
            "launch.min_free_disk_gib=0",
        ])
        .output()
        .unwrap();
    let verified = weft_checkpoint::latest_valid(mnt)
        .unwrap()
        .map(|c| c.manifest.step);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s = json(&dir.path().join("full/launch.json"));
    assert_eq!(
        (s["outcome"].as_str(), s["attempts"].as_u64()),
        (Some("finished"), Some(1)),
        "{s}"
    );
    let failed = s["save_failures"].as_array().unwrap();
    assert!(!failed.is_empty(), "{s}");
    assert!(
        failed
            .iter()
            .all(|f| f["host"].as_str().is_some_and(|h| !h.is_empty())),
        "{s}"
    );
    // The rank that ran out of space says so (which rank, and whether rank 0's commit report
    // comes first, depends on which write hit the limit).
    assert!(
        failed
            .iter()
            .any(|f| f["error"].as_str().unwrap().contains("No space left")),
        "{s}"
    );
    assert_eq!(verified, Some(4), "the first checkpoint stays the good one");
    assert_eq!(digest(&dir.path().join("full")), want);
}

#[test]
fn preemption_saves_and_a_new_launch_finishes_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = launch(dir.path(), "clean").output().unwrap();
    assert!(out.status.success());
    let want = digest(&dir.path().join("clean"));
    // Slow steps (every rank) so the signal lands mid-run.
    let mut child = launch(dir.path(), "pre")
        .env("WEFT_FAULT", "slow:0:1")
        .env("WEFT_FAULT_SLOW_MS", "100")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let metrics = dir.path().join("pre/checkpoints");
    while !metrics.join("latest").exists() {
        std::thread::sleep(Duration::from_millis(20));
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success());
    let s = json(&dir.path().join("pre/launch.json"));
    assert_eq!(s["outcome"], "preempted");
    let out = launch(dir.path(), "pre").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(json(&dir.path().join("pre/launch.json"))["outcome"], "finished");
    assert_eq!(digest(&dir.path().join("pre")), want);
}

#[test]
fn clients_without_the_secret_or_with_malformed_messages_are_turned_away() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = launch(dir.path(), "rogue")
        .env("WEFT_FAULT", "slow:0:1")
        .env("WEFT_FAULT_SLOW_MS", "300")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The driver logs its store's address.
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut addr = None;
    let mut line = String::new();
    while addr.is_none() {
        line.clear();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "driver ended before listening"
        );
        if let Some(i) = line.find("127.0.0.1:") {
            let port: String = line[i + 10..].chars().take_while(char::is_ascii_digit).collect();
            addr = Some(format!("127.0.0.1:{port}"));
        }
    }
    let drain = std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    let addr = addr.unwrap();
    let answer = |msg: &[u8]| {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        s.write_all(msg).unwrap();
        let mut a = String::new();
        let _ = std::io::BufReader::new(s).read_line(&mut a);
        a
    };
    let wrong = answer(b"{\"join\":{\"rank\":0,\"host\":\"x\",\"attempt\":1},\"secret\":\"guess\"}\n");
    assert!(wrong.contains("wrong secret"), "{wrong}");
    let garbage = answer(b"\x00\xffnot json at all\n");
    assert!(garbage.contains("malformed"), "{garbage}");
    let status = child.wait().unwrap();
    drain.join().unwrap().unwrap();
    assert!(status.success());
    assert_eq!(json(&dir.path().join("rogue/launch.json"))["outcome"], "finished");
}

#[test]
fn a_node_failing_the_preflight_is_refused_before_any_step() {
    let dir = tempfile::tempdir().unwrap();
    let out = launch(dir.path(), "sick")
        .args(["--set", "launch.min_free_disk_gib=1e12"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "the run cannot go anywhere");
    let s = json(&dir.path().join("sick/launch.json"));
    assert_eq!(s["outcome"], "failed");
    let f = &s["failures"][0];
    assert_eq!(f["kind"], "unhealthy", "{f}");
    assert_eq!(f["step"], 0);
    assert!(
        f["detail"].as_str().unwrap().contains("launch.min_free_disk_gib"),
        "{f}"
    );
    // Not retried forever: the same failure twice before any step ends the run.
    assert_eq!(s["attempts"], 2, "{s}");
    assert!(!dir.path().join("sick/checkpoints/latest").exists());

    // An all-reduce slower than the floor is refused before any step as well.
    let out = launch(dir.path(), "slownet")
        .args(["--set", "launch.min_allreduce_gbps=1e6"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let s = json(&dir.path().join("slownet/launch.json"));
    let f = &s["failures"][0];
    assert_eq!(
        (f["kind"].as_str(), f["step"].as_u64()),
        (Some("slow_network"), Some(0)),
        "{f}"
    );
    assert!(
        f["detail"]
            .as_str()
            .unwrap()
            .contains("GB/s < launch.min_allreduce_gbps"),
        "{f}"
    );
    assert!(!dir.path().join("slownet/checkpoints/latest").exists());
}

#[test]
fn soak_a_longer_run_with_a_fault_in_every_attempt_finishes_and_reports_ettr() {
    let dir = tempfile::tempdir().unwrap();
    let long = ["--set", "training.steps=48", "--set", "launch.max_restarts=4"];
    let out = launch(dir.path(), "clean").args(long).output().unwrap();
    assert!(out.status.success());
    let want = digest(&dir.path().join("clean"));
    let faults = "crash:1:9:1,exit:3:17:2,crash:0:26:3,hang:2:38:4";
    let out = launch(dir.path(), "soak")
        .args(long)
        .env("WEFT_FAULT", faults)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = json(&dir.path().join("soak/launch.json"));
    assert_eq!(s["attempts"], 5, "{s}");
    let kinds: Vec<&str> = s["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["exit", "exit", "exit", "hang"]);
    let ettr = s["ettr"].as_f64().unwrap();
    assert!(ettr > 0.0 && ettr < 1.0, "{ettr}");
    println!("soak: 4 faults in 48 steps, ETTR {:.1}%\n{text}", 100.0 * ettr);
    assert_eq!(digest(&dir.path().join("soak")), want);
}

/// Processes (not zombies) whose command line contains `needle`.
fn processes_with(needle: &str) -> Vec<(u32, String)> {
    let mut out = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(needle) && pid != std::process::id() {
            out.push((pid, cmd));
        }
    }
    out
}

/// The environment of the first child of `parent` that has `key` in it (polled: the child
/// may not have started yet).
fn child_env(parent: u32, key: &str) -> std::collections::HashMap<String, String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            let ppid = stat[stat.rfind(')').unwrap() + 1..].split_whitespace().nth(1);
            if ppid != Some(&parent.to_string()) {
                continue;
            }
            let Ok(env) = std::fs::read(e.path().join("environ")) else {
                continue;
            };
            let env: std::collections::HashMap<String, String> = String::from_utf8_lossy(&env)
                .split('\0')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            if env.contains_key(key) {
                return env;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no child of {parent} with {key}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Send `first` to the store at `addr`; its answer.
fn ask(addr: &str, first: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("the driver's store");
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    writeln!(s, "{first}").unwrap();
    let mut a = String::new();
    let _ = std::io::BufReader::new(s).read_line(&mut a);
    a
}

#[test]
fn a_forged_join_with_the_secret_kills_and_drains_nothing_and_floods_are_logged_briefly() {
    let dir = tempfile::tempdir().unwrap();
    // An unrelated process a forged join claims as its own.
    let mut victim = Command::new("sleep").arg("1000").spawn().unwrap();
    // Rank 3 joins 3 s late in the first attempt; the second attempt has slow steps.
    let mut child = launch(dir.path(), "forged")
        .env("WEFT_FAULT", "latejoin:3:0,slow:0:1:2")
        .env("WEFT_FAULT_SLOW_MS", "300")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || std::io::read_to_string(err).unwrap());
    // The secret and the store's address, as the ranks get them (mpirun's environment).
    let env = child_env(child.id(), "WEFT_SECRET");
    let (addr, secret) = (env["WEFT_STORE"].clone(), env["WEFT_SECRET"].clone());
    let pid = victim.id();
    let join = |rank: usize, attempt: u64| {
        serde_json::json!({"join": {"rank": rank, "host": "victim-node", "attempt": attempt,
                                    "pid": pid}, "secret": secret})
        .to_string()
    };
    // Rank 3's place, taken before it joins, claiming the victim's pid and another host; then
    // the connection closes, as a rank's does when its process ends.
    let ok = ask(&addr, &join(3, 1));
    assert!(ok.contains("\"ok\""), "{ok}");
    // Mid-run in the next attempt: a second join for a connected rank is refused.
    while !dir.path().join("forged/checkpoints/latest").exists() {
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
    let again = ask(&addr, &join(0, 2));
    assert!(again.contains("rank 0 already joined this attempt"), "{again}");
    // A flood of clients without the secret.
    let flood = 2000;
    for _ in 0..flood {
        let a = ask(
            &addr,
            "{\"join\":{\"rank\":0,\"host\":\"x\",\"attempt\":2},\"secret\":\"guess\"}",
        );
        assert!(a.contains("wrong secret"), "{a}");
    }
    let status = child.wait().unwrap();
    let log = log.join().unwrap();
    assert!(status.success(), "{log}");
    let s = json(&dir.path().join("forged/launch.json"));
    assert_eq!(
        (s["outcome"].as_str(), s["attempts"].as_u64()),
        (Some("finished"), Some(2)),
        "{s}"
    );
    // The forged rank's end was a failure of rank 3 on the node the launcher placed it on
    // (this machine), not the host it claimed; and the process it claimed lives.
    let f = &s["failures"][0];
    assert_eq!(
        (f["kind"].as_str(), f["rank"].as_u64()),
        (Some("exit"), Some(3)),
        "{f}"
    );
    assert_eq!(f["host"], "localhost", "{f}");
    assert!(
        victim.try_wait().unwrap().is_none(),
        "the process a forged join claimed was killed"
    );
    let _ = victim.kill();
    let _ = victim.wait();
    let events = std::fs::read_to_string(dir.path().join("forged/events.jsonl")).unwrap();
    assert!(!events.contains("victim-node"), "{events}");
    // Every turned-away client from one address in a minute: one log line.
    let lines = log.lines().filter(|l| l.contains("store: turned")).count();
    assert!(lines <= 3, "{lines} lines for {flood} rejected clients:\n{log}");
}

#[test]
fn ranks_whose_driver_is_killed_save_and_stop_and_a_relaunch_finishes_with_the_fault_free_bits() {
    let dir = tempfile::tempdir().unwrap();
    let long = ["--set", "training.steps=48", "--set", "launch.orphan_timeout_s=3"];
    let out = launch(dir.path(), "clean").args(long).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let want = digest(&dir.path().join("clean"));
    // Ranks that can save (`orphaned`), and ranks stuck in a collective with one that hangs,
    // which end themselves `launch.orphan_timeout_s` after that (`orphan_exit`).
    for (name, fault, event) in [
        ("orphan", "slow:0:1", "\"orphaned\""),
        ("stuck", "slow:0:1,hang:1:8", "\"orphan_exit\""),
    ] {
        let run = dir.path().join(name);
        let log = std::fs::File::create(dir.path().join(format!("{name}.log"))).unwrap();
        let mut driver = launch(dir.path(), name)
            .args(long)
            .env("WEFT_FAULT", fault)
            .env("WEFT_FAULT_SLOW_MS", "300")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let ckpts = run.join("checkpoints");
        while !ckpts.join("latest").exists() {
            assert!(
                driver.try_wait().unwrap().is_none(),
                "{name}: the run ended early"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        driver.kill().unwrap();
        driver.wait().unwrap();
        let killed = std::time::Instant::now();
        // Every rank (and mpirun) of this run ends by itself.
        let needle = format!(
            "job.out_dir=\"{}\" --set job.name=\"{name}\"",
            dir.path().display()
        );
        let mut left = processes_with(&needle);
        while !left.is_empty() && killed.elapsed() < Duration::from_secs(90) {
            std::thread::sleep(Duration::from_millis(200));
            left = processes_with(&needle);
        }
        let text = std::fs::read_to_string(dir.path().join(format!("{name}.log"))).unwrap();
        assert!(
            left.is_empty(),
            "{name}: still running {:?} after the driver died:\n{text}",
            left
        );
        println!(
            "{name}: ranks gone {:.1} s after the driver",
            killed.elapsed().as_secs_f64()
        );
        let events = std::fs::read_to_string(run.join("events.jsonl")).unwrap();
        assert!(events.contains(event), "{name}: {events}\n{text}");
        let step = |d: &Path| {
            std::fs::read_to_string(d.join("latest")).unwrap().trim()["step_".len()..]
                .parse::<u64>()
                .unwrap()
        };
        if name == "orphan" {
            // The ranks saved where they stopped, well before the end.
            let at = step(&ckpts);
            assert!(
                at > 4 && at < 48,
                "{name}: latest checkpoint at step {at}\n{text}"
            );
        }
        let out = launch(dir.path(), name).args(long).output().unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(json(&run.join("launch.json"))["outcome"], "finished");
        assert_eq!(
            digest(&run),
            want,
            "{name}: final parameters differ from the fault-free run"
        );
    }
}
