//! `weft launch --slurm` against a real SLURM cluster started on this machine (slurmctld and
//! three slurmd "nodes", each in its own UTS and PID namespace, on ports the kernel hands out):
//! a fault-free run submitted with sbatch, a rank crash whose node is drained and replaced by
//! the spare, a hang, a straggler and a slow node caught by the preflight (each drained and
//! replaced), a full checkpoint disk (reported, training carries on), a preemption (SIGUSR1
//! before the time limit: save, requeue, resume) and a node loss (its slurmd and ranks killed)
//! — each finishing with the bits of the fault-free run — and a shrink when no spare is left;
//! and `weft sweep --slurm`: a job array of runs, each through the launcher, then a report job.
//! Skipped, with a message, where SLURM is not installed.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Cluster {
    base: PathBuf,
    conf: PathBuf,
    nodes: Vec<std::process::Child>,
}

fn sh(cmd: &str) -> String {
    let o = Command::new("sh").args(["-c", cmd]).output().unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

impl Cluster {
    fn up(base: &Path, n: usize) -> Option<Cluster> {
        let missing = sh(
            "for p in slurmctld slurmd sbatch srun tini munged; do command -v $p >/dev/null || echo $p; done",
        );
        if !missing.trim().is_empty() {
            eprintln!("skipped: SLURM is not installed (apt-get install slurmctld slurmd slurm-client munge libpmix2 tini)");
            return None;
        }
        let conf = base.join("etc/slurm.conf");
        for d in ["etc", "state", "log", "run", "spool", "tmp"] {
            std::fs::create_dir_all(base.join(d)).unwrap();
        }
        for i in 1..=n {
            std::fs::create_dir_all(base.join(format!("spool/n{i}"))).unwrap();
            std::fs::create_dir_all(base.join(format!("tmp/n{i}"))).unwrap();
        }
        sh("[ -s /etc/munge/munge.key ] || { mungekey --create --force; chown munge:munge /etc/munge/munge.key; chmod 600 /etc/munge/munge.key; }; \
            mkdir -p /run/munge; chown munge:munge /run/munge; chmod 755 /run/munge; \
            munge -n >/dev/null 2>&1 || runuser -u munge -- /usr/sbin/munged");
        // Free ports for slurmctld and each slurmd, asked of the kernel (the usual 6817 and
        // 17001… may be taken on a shared machine).
        let ports: Vec<u16> = {
            let held: Vec<std::net::TcpListener> = (0..=n)
                .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
                .collect::<Result<_, _>>()
                .unwrap_or_else(|e| panic!("cannot find free ports for the test cluster: {e}"));
            held.iter().map(|l| l.local_addr().unwrap().port()).collect()
        };
        let host = sh("hostname").trim().to_string();
        let b = base.display();
        let text = format!(
            "ClusterName=weft-test\nSlurmctldHost={host}(127.0.0.1)\nSlurmUser=root\nSlurmdUser=root\n\
             SlurmctldPort={}\nAuthType=auth/munge\nCredType=cred/munge\nStateSaveLocation={b}/state\n\
             SlurmdSpoolDir={b}/spool/%n\nTmpFS={b}/tmp/%n\nSlurmctldPidFile={b}/run/slurmctld.pid\n\
             SlurmdPidFile={b}/run/slurmd-%n.pid\nSlurmctldLogFile={b}/log/slurmctld.log\n\
             SlurmdLogFile={b}/log/slurmd-%n.log\nProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\n\
             JobAcctGatherType=jobacct_gather/none\nAccountingStorageType=accounting_storage/none\n\
             JobCompType=jobcomp/none\nSelectType=select/cons_tres\nSelectTypeParameters=CR_Core\n\
             SchedulerType=sched/backfill\nMpiDefault=none\nReturnToService=2\nSlurmdTimeout=5\n\
             MessageTimeout=3\nSlurmctldTimeout=10\nInactiveLimit=0\nKillWait=5\nMinJobAge=300\nWaittime=0\n\
             MailProg=/bin/true\n{nodes}\
             PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP\n",
            ports[0],
            nodes = (1..=n)
                .map(|i| {
                    format!(
                        "NodeName=n{i} NodeHostname={host} NodeAddr=127.0.0.1 Port={} CPUs=2 \
                         RealMemory=1000 State=UNKNOWN\n",
                        ports[i]
                    )
                })
                .collect::<String>(),
        );
        std::fs::write(&conf, text).unwrap();
        let ok = Command::new("slurmctld").arg("-f").arg(&conf).status().unwrap();
        assert!(ok.success(), "slurmctld did not start");
        let mut c = Cluster {
            base: base.to_path_buf(),
            conf,
            nodes: vec![],
        };
        for i in 1..=n {
            let node = c.start_node(i);
            c.nodes.push(node);
        }
        c.wait(
            |s| s.lines().filter(|l| l.ends_with(" idle")).count() == n,
            "all nodes idle",
        );
        Some(c)
    }

    fn start_node(&self, i: usize) -> std::process::Child {
        let log = std::fs::File::create(self.base.join(format!("log/ns-n{i}.out"))).unwrap();
        Command::new("setsid")
            .args([
                "unshare",
                "--uts",
                "--pid",
                "--mount-proc",
                "--kill-child",
                "tini",
                "--",
                "sh",
                "-c",
            ])
            .arg(format!(
                "hostname n{i}; exec slurmd -D -f {} -N n{i}",
                self.conf.display()
            ))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    fn cmd(&self, prog: &str) -> Command {
        let mut c = Command::new(prog);
        c.env("SLURM_CONF", &self.conf);
        c
    }

    fn sinfo(&self) -> String {
        let o = self
            .cmd("sinfo")
            .args(["-N", "-h", "-o", "%N %T"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn wait(&self, ok: impl Fn(&str) -> bool, what: &str) {
        let t = Instant::now();
        loop {
            let s = self.sinfo();
            if ok(&s) {
                return;
            }
            assert!(t.elapsed() < Duration::from_secs(60), "waiting for {what}: {s}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Node `i` dies: slurmd, its step daemons and the ranks on it.
    /// Return a drained node to service.
    fn resume(&self, node: &str) {
        self.cmd("scontrol")
            .args(["update", &format!("NodeName={node}"), "State=RESUME"])
            .status()
            .unwrap();
        self.wait(
            |s| s.lines().filter(|l| l.ends_with(" idle")).count() == self.nodes.len(),
            "the node back",
        );
    }

    fn kill_node(&mut self, i: usize) {
        let node = &mut self.nodes[i - 1];
        node.kill().unwrap();
        node.wait().unwrap();
    }

    fn wait_job(&self, id: &str) {
        let t = Instant::now();
        loop {
            // Ended for good (a requeued job passes through PENDING again).
            let o = self.cmd("scontrol").args(["show", "job", id]).output().unwrap();
            let text = String::from_utf8_lossy(&o.stdout);
            if o.status.success()
                && ["COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"]
                    .iter()
                    .any(|s| text.contains(&format!("JobState={s} ")))
            {
                return;
            }
            assert!(t.elapsed() < Duration::from_secs(240), "job {id} did not end");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill();
            let _ = node.wait();
        }
        if let Ok(p) = std::fs::read_to_string(self.base.join("run/slurmctld.pid")) {
            let _ = Command::new("kill").args(["-9", p.trim()]).status();
        }
    }
}

fn sets(out: &Path, name: &str, extra: &[&str]) -> Vec<String> {
    // The three "nodes" share this machine's two cores: their preflight matmul rates say
    // nothing about the nodes.
    let mut all = vec!["launch.slow_node_factor=0"];
    all.extend(extra);
    common::tiny_run(out, name, &all)
}

fn config() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../configs")).join("dit-tiny.toml")
}

fn json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// Submit with `weft launch --slurm` (2 nodes × 2 ranks + 1 spare); returns the job id.
fn submit(c: &Cluster, out: &Path, name: &str, env: &[(&str, &str)]) -> String {
    submit_with(c, out, name, env, &[])
}

fn submit_with(c: &Cluster, out: &Path, name: &str, env: &[(&str, &str)], extra: &[&str]) -> String {
    let mut cmd = c.cmd(env!("CARGO_BIN_EXE_weft"));
    cmd.args([
        "launch",
        "--slurm",
        "--nodes",
        "2",
        "--spare-nodes",
        "1",
        "--procs-per-node",
        "2",
    ])
    .arg(config())
    .args(sets(out, name, extra))
    .envs(env.iter().copied());
    let o = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{text}{}", String::from_utf8_lossy(&o.stderr));
    text.split_whitespace()
        .nth(2)
        .expect("submitted job <id>")
        .to_string()
}

#[test]
fn launches_on_a_slurm_cluster_and_survives_a_crash_and_a_node_loss() {
    let base = tempfile::tempdir().unwrap();
    let out = base.path().join("runs");
    // Reference: the same mesh on threads.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_weft"))
        .arg("train")
        .arg(config())
        .args(sets(&out, "reference", &[]))
        .output()
        .unwrap();
    assert!(o.status.success());
    let digest = |run: &str| json(&out.join(run).join("sharded.json"))["params_digest"].clone();
    let want = digest("reference");
    // A small filesystem for the full-disk case, mounted before the nodes start (each node
    // has its own mount namespace, a copy of this one): room for one checkpoint and a half.
    let one = common::checkpoint_bytes(&out.join("reference/checkpoints"));
    let small = common::Mount::room_for_1_5(&base.path().join("small"), one);
    let Some(mut c) = Cluster::up(&base.path().join("slurm"), 3) else {
        return;
    };

    // Fault-free, through sbatch.
    let id = submit(&c, &out, "clean", &[]);
    c.wait_job(&id);
    let s = json(&out.join("clean/launch.json"));
    assert_eq!(s["outcome"], "finished", "{s}");
    assert_eq!(digest("clean"), want);

    // A sweep as a job array: 4 runs, each an array task that runs its run through the
    // launcher's driver; then the report job. The numbers match the same sweep run here.
    let text = |name: &str| {
        format!(
            "name = \"{name}\"\nbase = \"{}\"\nout_dir = \"{}\"\neval_samples = 8\nhead_dim = 8\n\
             [set]\n\"model.depth\" = 1\n\"model.latent\" = [4, 8, 8, 3]\n\"training.micro_batch\" = 1\n\
             \"training.steps\" = 6\n\"training.val_every\" = 0\n\"training.val_batches\" = 1\n\
             \"training.peak_flops\" = 1e11\n\"optimizer.warmup_steps\" = 1\n\"checkpoint.interval\" = 2\n\
             \"launch.slow_node_factor\" = 0\n\"launch.backoff_s\" = 0.1\n\
             [[grid]]\nwidth = [16, 32]\nlr = [1e-3, 3e-3]\n",
            config().display(),
            out.join("sweeps").display()
        )
    };
    let (on_slurm, here) = (base.path().join("array.toml"), base.path().join("here.toml"));
    std::fs::write(&on_slurm, text("array")).unwrap();
    std::fs::write(&here, text("here")).unwrap();
    let o = c
        .cmd(env!("CARGO_BIN_EXE_weft"))
        .args([
            "sweep",
            on_slurm.to_str().unwrap(),
            "--slurm",
            "--max-parallel",
            "3",
        ])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{said}{}", String::from_utf8_lossy(&o.stderr));
    // "submitted job array <id> (4 runs, 0-3%3) and report job <rid>; ..."
    let words: Vec<&str> = said.split_whitespace().collect();
    assert_eq!(words[6], "0-3%3)", "{said}");
    let report_job = words[10].trim_end_matches(';');
    c.wait_job(report_job);
    let sweep_dir = out.join("sweeps/array");
    let script = std::fs::read_to_string(sweep_dir.join("sweep.sbatch")).unwrap();
    assert!(script.contains("#SBATCH --array=0-3%3"), "{script}");
    let local = std::process::Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["sweep", here.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        local.status.success(),
        "{}",
        String::from_utf8_lossy(&local.stderr)
    );
    let rows = |dir: &str| json(&out.join("sweeps").join(dir).join("results.json"));
    let (a, b) = (rows("array"), rows("here"));
    assert_eq!(a.as_array().unwrap().len(), 4, "{a}");
    for (x, y) in a.as_array().unwrap().iter().zip(b.as_array().unwrap()) {
        let (lx, ly) = (x["eval_loss"].as_f64().unwrap(), y["eval_loss"].as_f64().unwrap());
        assert!((lx - ly).abs() <= 1e-4 * ly, "{x} vs {y}");
        let name = x["name"].as_str().unwrap();
        let l = json(&sweep_dir.join("runs").join(name).join("launch.json"));
        assert_eq!(l["outcome"], "finished", "{l}");
    }
    assert!(sweep_dir.join("report.md").exists());

    // A rank crash: its node is drained, the spare takes its place.
    let id = submit(&c, &out, "crash", &[("WEFT_FAULT", "crash:2:6")]);
    c.wait_job(&id);
    let s = json(&out.join("crash/launch.json"));
    assert_eq!(s["outcome"], "finished", "{s}");
    let f = &s["failures"][0];
    assert_eq!(
        (f["rank"].as_u64(), f["host"].as_str()),
        (Some(2), Some("n2")),
        "{f}"
    );
    assert!(c.sinfo().contains("n2 drained"), "{}", c.sinfo());
    let events = std::fs::read_to_string(out.join("crash/events.jsonl")).unwrap();
    let second = events
        .lines()
        .filter(|l| l.contains("\"attempt\"") && l.contains("\"nodes\""))
        .nth(1)
        .unwrap();
    assert!(
        second.contains("n1") && second.contains("n3") && !second.contains("n2"),
        "{second}"
    );
    assert_eq!(digest("crash"), want);
    c.resume("n2");

    // A hang (a rank stops mid-step), a straggler (a rank slow from step 3 on) and a slow node
    // (its preflight matmul 1000× slower): each names the rank and node, the node is drained,
    // the spare takes its place, and the run ends with the fault-free bits.
    let cases: [(&str, &[&str], &str, u64, &str); 3] = [
        ("hang:2:6", &["launch.hang_timeout_s=3"], "hang", 2, "n2"),
        // The slowed rank takes ~300 ms a step against ~10–20 ms: a factor of 8 catches it,
        // and not the noise of three nodes sharing two cores (3× was seen on a loaded run).
        ("slow:0:3", &["launch.straggler_factor=8"], "straggler", 0, "n1"),
        // Both of n2's ranks measure a slow matmul: a slow node.
        (
            "slowgemm:2:0,slowgemm:3:0",
            &["launch.slow_node_factor=0.02"],
            "slow_node",
            2,
            "n2",
        ),
    ];
    for (fault, extra, kind, rank, host) in cases {
        let name = fault.replace([':', ','], "_");
        let id = submit_with(&c, &out, &name, &[("WEFT_FAULT", fault)], extra);
        c.wait_job(&id);
        let s = json(&out.join(&name).join("launch.json"));
        assert_eq!(s["outcome"], "finished", "{fault}: {s}");
        let f = &s["failures"][0];
        assert_eq!(
            (f["kind"].as_str(), f["rank"].as_u64(), f["host"].as_str()),
            (Some(kind), Some(rank), Some(host)),
            "{fault}: {f}"
        );
        assert!(
            c.sinfo().contains(&format!("{host} drained")),
            "{fault}: {}",
            c.sinfo()
        );
        println!(
            "slurm {fault}: {kind} of rank {rank} on {host} detected in {:.2} s, recovered in {:.2} s",
            f["time_to_detect_s"].as_f64().unwrap(),
            f["time_to_recover_s"].as_f64().unwrap_or(f64::NAN)
        );
        assert_eq!(digest(&name), want, "{fault}");
        c.resume(host);
    }

    // A checkpoint disk that fills up on the cluster: the failed saves are reported with the
    // rank and node, the run carries on, and the last good checkpoint is kept.
    if let Some(mnt) = &small {
        let mnt = &mnt.0;
        let ckdir = format!("checkpoint.dir=\"{}\"", mnt.display());
        let extra = [ckdir.as_str(), "checkpoint.keep=1", "launch.min_free_disk_gib=0"];
        let id = submit_with(&c, &out, "full", &[], &extra);
        c.wait_job(&id);
        let verified = weft_checkpoint::latest_valid(mnt)
            .unwrap()
            .map(|c| c.manifest.step);
        let s = json(&out.join("full/launch.json"));
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
                .all(|f| f["host"] == "n1" || f["host"] == "n2" || f["host"] == "n3"),
            "{s}"
        );
        assert_eq!(verified, Some(4), "the first checkpoint stays the good one");
        assert_eq!(digest("full"), want);
    }

    // Preemption near the time limit: SIGUSR1 to the batch job → the ranks save, the driver
    // requeues the job, and its next start finishes the run.
    let slow = [("WEFT_FAULT", "slow:0:1"), ("WEFT_FAULT_SLOW_MS", "150")];
    let id = submit(&c, &out, "requeue", &slow);
    let t = Instant::now();
    while !out.join("requeue/checkpoints/latest").exists() {
        assert!(t.elapsed() < Duration::from_secs(120), "no checkpoint");
        std::thread::sleep(Duration::from_millis(50));
    }
    let st = c
        .cmd("scancel")
        .args(["--batch", "--signal=USR1", &id])
        .status()
        .unwrap();
    assert!(st.success());
    let t = Instant::now();
    loop {
        let o = c
            .cmd("squeue")
            .args(["-h", "-j", &id, "-o", "%T %r"])
            .output()
            .unwrap();
        let state = String::from_utf8_lossy(&o.stdout).into_owned();
        if state.starts_with("PENDING") {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "job {id} was not requeued: {state}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // SLURM holds a requeued job back for a while; let it start now.
    c.cmd("scontrol")
        .args(["update", &format!("JobId={id}"), "StartTime=now"])
        .status()
        .unwrap();
    // Running again (its previous incarnation may show a final state while it is requeued).
    let t = Instant::now();
    loop {
        let o = c.cmd("scontrol").args(["show", "job", &id]).output().unwrap();
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        if text.contains("Restarts=1")
            && (text.contains("JobState=RUNNING ") || text.contains("JobState=COMPLETED "))
        {
            break;
        }
        let log = std::fs::read_to_string(out.join(format!("requeue/slurm-{id}.out"))).unwrap_or_default();
        assert!(
            !text.contains("JobState=FAILED"),
            "job {id} failed on restart: {text}\n{log}"
        );
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "job {id} did not restart: {text}\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    c.wait_job(&id);
    let events = std::fs::read_to_string(out.join("requeue/events.jsonl")).unwrap();
    assert!(events.contains("\"requeue\""), "{events}");
    let log = std::fs::read_to_string(out.join(format!("requeue/slurm-{id}.out"))).unwrap_or_default();
    assert_eq!(
        json(&out.join("requeue/launch.json"))["outcome"],
        "finished",
        "{events}\n{log}"
    );
    assert_eq!(digest("requeue"), want);

    // A node loss mid-run (slow steps so it lands mid-run).
    let id = submit(
        &c,
        &out,
        "loss",
        &[("WEFT_FAULT", "slow:0:1"), ("WEFT_FAULT_SLOW_MS", "150")],
    );
    let t = Instant::now();
    while !out.join("loss/checkpoints/latest").exists() {
        assert!(t.elapsed() < Duration::from_secs(120), "no checkpoint");
        std::thread::sleep(Duration::from_millis(50));
    }
    c.kill_node(2);
    c.wait_job(&id);
    let s = json(&out.join("loss/launch.json"));
    assert_eq!(s["outcome"], "finished", "{s}");
    assert_eq!(s["failures"][0]["host"], "n2", "{s}");
    assert_eq!(digest("loss"), want);

    // No spare left (n2 is down): with launch.allow_shrink a crash on n3 continues on n1 alone,
    // dp_shard 4 → 2 with twice the accumulation; within the parallel tolerance of the
    // fault-free run.
    let mut cmd = c.cmd(env!("CARGO_BIN_EXE_weft"));
    cmd.args(["launch", "--slurm", "--nodes", "2", "--procs-per-node", "2"])
        .arg(config())
        .args(sets(&out, "shrink", &["launch.allow_shrink=true"]))
        .args(["--sbatch-arg=--exclude=n2"])
        .env("WEFT_FAULT", "crash:3:6");
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let id = String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .nth(2)
        .unwrap()
        .to_string();
    c.wait_job(&id);
    let s = json(&out.join("shrink/launch.json"));
    assert_eq!(s["outcome"], "finished", "{s}");
    let events = std::fs::read_to_string(out.join("shrink/events.jsonl")).unwrap();
    assert!(events.contains("\"shrink\""), "{events}");
    let params = |run: &str| {
        let file = out.join(run).join("model.safetensors");
        weft_trainer::export::load(&file, weft_trainer::job::layout_of)
            .unwrap()
            .1
    };
    let (a, b) = (params("shrink"), params("reference"));
    let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(worst < 2e-2 * 2e-3 * 16.0, "parameters differ by {worst}");

    // The driver's own node lost mid-run (the batch host: its slurmd, the batch script, the
    // driver and the ranks on it). Every node back first.
    // (The old n2 was killed and reaped by `kill_node`.)
    c.nodes[1] = c.start_node(2);
    for node in ["n2", "n3"] {
        let _ = c
            .cmd("scontrol")
            .args(["update", &format!("NodeName={node}"), "State=RESUME"])
            .output();
    }
    c.wait(
        |s| s.lines().filter(|l| l.ends_with(" idle")).count() == 3,
        "every node back",
    );
    let id = submit_with(
        &c,
        &out,
        "driver",
        &[("WEFT_FAULT", "slow:0:1"), ("WEFT_FAULT_SLOW_MS", "150")],
        &["launch.orphan_timeout_s=3"],
    );
    let t = Instant::now();
    while !out.join("driver/checkpoints/latest").exists() {
        assert!(t.elapsed() < Duration::from_secs(120), "no checkpoint");
        std::thread::sleep(Duration::from_millis(50));
    }
    let show = c.cmd("scontrol").args(["show", "job", &id]).output().unwrap();
    let show = String::from_utf8_lossy(&show.stdout).into_owned();
    let batch_host = show
        .split_whitespace()
        .find_map(|w| w.strip_prefix("BatchHost="))
        .unwrap_or_else(|| panic!("no BatchHost in {show}"))
        .to_string();
    let i: usize = batch_host.trim_start_matches('n').parse().unwrap();
    c.kill_node(i);
    // No person acts: the sentinels on the other nodes requeue the job, which resumes on the
    // two nodes left (no spare needed) and finishes with the fault-free bits.
    c.wait_job(&id);
    let events = std::fs::read_to_string(out.join("driver/events.jsonl")).unwrap();
    let log = std::fs::read_to_string(out.join(format!("driver/slurm-{id}.out"))).unwrap_or_default();
    let s = json(&out.join("driver/launch.json"));
    assert_eq!(s["outcome"], "finished", "{s}\n{events}\n{log}");
    assert!(events.contains("\"driver_lost\""), "{events}");
    assert!(
        events.contains(&format!("\"lost_node\":\"{batch_host}\"")),
        "the sentinels did not requeue: {events}"
    );
    assert_eq!(s["failures"][0]["kind"], "driver_lost", "{s}");
    assert!(s["failures"][0]["time_to_recover_s"].as_f64().is_some(), "{s}");
    assert_eq!(digest("driver"), want);
}
