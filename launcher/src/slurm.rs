//! `weft launch --slurm`: submission (an sbatch script that runs the driver inside the
//! allocation) and, inside the allocation, placing each attempt's ranks with `srun` on the
//! healthy nodes, and evicting (draining) the nodes that fail.

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Command;

/// `s` as one shell word.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// A `#SBATCH` value: refused if it could break out of its line.
fn sbatch_value(key: &str, v: &str) -> Result<String> {
    if v.chars().any(|c| c.is_control()) {
        bail!("--{key} {v:?}: control characters are not allowed in an #SBATCH line");
    }
    Ok(v.to_string())
}

/// Options of the batch job.
pub struct Job<'a> {
    pub name: &'a str,
    pub nodes: usize,
    pub spare: usize,
    pub procs: usize,
    pub partition: Option<&'a str>,
    pub time: Option<&'a str>,
    pub account: Option<&'a str>,
    pub gres: Option<&'a str>,
    pub extra: &'a [String],
    pub out: &'a Path,
    /// A job array (`0-9%4`): one task per index, each its own allocation.
    pub array: Option<&'a str>,
}

/// The `#SBATCH` options given on the command line (`weft launch --slurm`, `weft sweep --slurm`).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct SbatchArgs {
    /// SLURM partition.
    #[arg(long)]
    pub partition: Option<String>,
    /// SLURM time limit (`HH:MM:SS`; for a sweep, per run); the job gets SIGUSR1 two minutes
    /// before it and saves.
    #[arg(long)]
    pub time: Option<String>,
    /// SLURM account.
    #[arg(long)]
    pub account: Option<String>,
    /// SLURM generic resources per node (`gpu:8`).
    #[arg(long)]
    pub gres: Option<String>,
    /// An extra `#SBATCH` line (repeatable), e.g. `--sbatch-arg=--exclusive`.
    #[arg(long = "sbatch-arg", allow_hyphen_values = true)]
    pub sbatch_arg: Vec<String>,
}

impl SbatchArgs {
    /// The batch job `name` on `(nodes, spare nodes, ranks per node)`, logging into `out`;
    /// `array` makes it a job array.
    pub fn job<'a>(
        &'a self,
        name: &'a str,
        (nodes, spare, procs): (usize, usize, usize),
        out: &'a Path,
        array: Option<&'a str>,
    ) -> Job<'a> {
        Job {
            name,
            nodes,
            spare,
            procs,
            partition: self.partition.as_deref(),
            time: self.time.as_deref(),
            account: self.account.as_deref(),
            gres: self.gres.as_deref(),
            extra: &self.sbatch_arg,
            out,
            array,
        }
    }
}

/// The batch script: the allocation (nodes + spares, kept when a node fails), SIGUSR1 two
/// minutes before the time limit (the driver saves and exits), and the driver itself as the
/// job's command.
pub fn script(j: &Job<'_>, driver: &[String]) -> Result<String> {
    let mut s = String::from("#!/bin/bash\n");
    let mut line = |k: &str, v: &str| -> Result<()> {
        s.push_str(&format!("#SBATCH --{k}={}\n", sbatch_value(k, v)?));
        Ok(())
    };
    line("job-name", j.name)?;
    // A range, so that a requeued job (after losing a node, the driver's included) starts
    // again on the healthy nodes left, with fewer spares, instead of waiting for a full set.
    let nodes = if j.spare > 0 {
        format!("{}-{}", j.nodes, j.nodes + j.spare)
    } else {
        j.nodes.to_string()
    };
    line("nodes", &nodes)?;
    if j.spare > 0 {
        // CPUs per node rather than tasks: a job's task count is fixed when it first starts
        // (nodes × tasks per node), and would keep a requeued job from starting on fewer nodes.
        // The driver's `srun` steps place the ranks themselves.
        line("mincpus", &j.procs.to_string())?;
    } else {
        line("ntasks-per-node", &j.procs.to_string())?;
    }
    let log = if j.array.is_some() {
        "slurm-%A_%a.out"
    } else {
        "slurm-%j.out"
    };
    line("output", &j.out.join(log).display().to_string())?;
    line("signal", "B:USR1@120")?;
    for (k, v) in [
        ("partition", j.partition),
        ("time", j.time),
        ("account", j.account),
        ("gres", j.gres),
        ("array", j.array),
    ] {
        if let Some(v) = v {
            line(k, v)?;
        }
    }
    // A failing node must not end the allocation: the driver evicts it and goes on. Near the
    // time limit the driver saves and requeues the job.
    s.push_str("#SBATCH --no-kill\n#SBATCH --requeue\n");
    for e in j.extra {
        if e.chars().any(|c| c.is_control()) {
            bail!("--sbatch-arg {e:?}: control characters are not allowed");
        }
        s.push_str(&format!("#SBATCH {e}\n"));
    }
    s.push_str("set -u\n");
    s.push_str(&format!(
        "exec {}\n",
        driver
            .iter()
            .map(|w| shell_quote(w))
            .collect::<Vec<_>>()
            .join(" ")
    ));
    Ok(s)
}

/// Submit `script`; returns the job id.
pub fn submit(script_path: &Path) -> Result<String> {
    let out = Command::new("sbatch")
        .arg("--parsable")
        .arg(script_path)
        .output()
        .context("running sbatch (is this a SLURM login node?)")?;
    if !out.status.success() {
        bail!(
            "sbatch refused the job: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .trim()
        .split(';')
        .next()
        .unwrap_or("")
        .to_string())
}

/// The allocation the driver runs in, and which of its nodes are still trusted.
pub struct Allocation {
    pub job: String,
    pub nodes: Vec<String>,
    pub evicted: Vec<String>,
    pub need: usize,
    pub procs: usize,
}

impl Allocation {
    /// Read the allocation from SLURM's environment and `scontrol show hostnames`.
    pub fn from_env(need: usize, procs: usize) -> Result<Self> {
        let job = std::env::var("SLURM_JOB_ID").context("not inside a SLURM allocation")?;
        let list = std::env::var("SLURM_JOB_NODELIST").context("SLURM_JOB_NODELIST is not set")?;
        let out = Command::new("scontrol")
            .args(["show", "hostnames", &list])
            .output()?;
        if !out.status.success() {
            bail!(
                "scontrol show hostnames {list}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let nodes: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        if nodes.len() < need {
            bail!("the allocation has {} nodes, the run needs {need}", nodes.len());
        }
        Ok(Allocation {
            job,
            nodes,
            evicted: vec![],
            need,
            procs,
        })
    }

    /// Healthy nodes left.
    pub fn healthy(&self) -> usize {
        self.nodes.iter().filter(|n| !self.evicted.contains(n)).count()
    }

    /// The nodes of the next attempt: the first `need` not evicted.
    pub fn placement(&self) -> Result<Vec<String>> {
        let ok: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| !self.evicted.contains(n))
            .take(self.need)
            .cloned()
            .collect();
        if ok.len() < self.need {
            bail!(
                "{} healthy nodes left of {} (evicted: {}), the run needs {}; add spare nodes \
                 (--spare-nodes) or allow a smaller mesh (launch.allow_shrink)",
                ok.len(),
                self.nodes.len(),
                self.evicted.join(", "),
                self.need
            );
        }
        Ok(ok)
    }

    /// `srun` for an attempt on `nodes`, running `args` (the weft binary and its arguments).
    pub fn srun(&self, nodes: &[String], args: &[String]) -> Command {
        let mut c = Command::new("srun");
        c.args([
            "--mpi=pmix",
            "--kill-on-bad-exit=1",
            // A failed attempt's step may still be completing on the surviving nodes (a lost
            // node cannot confirm); the next attempt must not wait for it.
            "--overlap",
            &format!("--nodes={}", nodes.len()),
            &format!("--ntasks-per-node={}", self.procs),
            &format!("--ntasks={}", nodes.len() * self.procs),
            &format!("--nodelist={}", nodes.join(",")),
        ]);
        c.args(args);
        c
    }

    /// Take `host` out of the run: never placed again, and drained in SLURM (when permitted)
    /// so other jobs avoid it too. Returns whether the drain was accepted.
    pub fn evict(&mut self, host: &str, reason: &str) -> bool {
        if !self.nodes.iter().any(|n| n == host) || self.evicted.iter().any(|n| n == host) {
            return false;
        }
        self.evicted.push(host.to_string());
        Command::new("scontrol")
            .args([
                "update",
                &format!("NodeName={host}"),
                "State=DRAIN",
                &format!("Reason=weft: {reason}"),
            ])
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Start a sentinel on every node of the allocation but this one (the batch host, where
    /// the driver runs), as one job step that survives the loss of a node; see
    /// [`crate::sentinel`]. `None` when the allocation has no other node.
    pub fn start_sentinels(
        &self,
        exe: &str,
        timeout_s: f64,
        events: &Path,
    ) -> Result<Option<std::process::Child>> {
        let here = std::env::var("SLURMD_NODENAME").unwrap_or_else(|_| crate::rankside::hostname());
        let others: Vec<&String> = self.nodes.iter().filter(|n| **n != here).collect();
        if others.is_empty() {
            return Ok(None);
        }
        let others: Vec<&str> = others.iter().map(|s| s.as_str()).collect();
        // The sentinels' output goes to files on their own nodes' view of the run directory,
        // not through this `srun`: it dies with this node, and a sentinel must outlive it.
        let log = events.with_file_name("sentinel-%n.log");
        let output = format!("--output={}", log.display());
        let child = Command::new("srun")
            .args([
                "--no-kill",
                "--overlap",
                "--input=none",
                &output,
                &format!("--job-name={}", crate::sentinel::STEP_NAME),
                &format!("--nodes={}", others.len()),
                &format!("--ntasks={}", others.len()),
                "--ntasks-per-node=1",
                &format!("--nodelist={}", others.join(",")),
                exe,
                "sentinel",
                "--job",
                &self.job,
                "--batch-host",
                &here,
                "--timeout-s",
                &timeout_s.to_string(),
                "--events",
                &events.display().to_string(),
            ])
            .stdin(std::process::Stdio::null())
            .spawn()
            .context("starting the sentinels (srun)")?;
        Ok(Some(child))
    }

    /// Send `sig` to every job step of this allocation but the batch script (the driver) and
    /// the sentinels.
    pub fn signal_steps(&self, sig: &str) {
        let out = Command::new("squeue")
            .args(["-h", "-s", "-j", &self.job, "-o", "%i %j"])
            .output();
        if let Ok(o) = out {
            for line in String::from_utf8_lossy(&o.stdout).lines() {
                let (step, name) = line.trim().split_once(' ').unwrap_or((line.trim(), ""));
                // Job steps proper (`<job>.<n>`), not the batch script or the job itself.
                let numbered = step
                    .split_once('.')
                    .is_some_and(|(_, n)| n.chars().all(|c| c.is_ascii_digit()));
                if numbered && name.trim() != crate::sentinel::STEP_NAME {
                    let _ = Command::new("scancel")
                        .args([&format!("--signal={sig}"), step])
                        .status();
                }
            }
        }
    }
}

/// The address ranks reach the driver's store at: `WEFT_STORE_HOST`, or this node's first
/// address (`hostname -I`), resolved on the node itself.
pub fn store_host() -> String {
    if let Ok(h) = std::env::var("WEFT_STORE_HOST") {
        return h;
    }
    Command::new("hostname")
        .arg("-I")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "127.0.0.1".into())
}

/// A port for the store from the job id, checked free (else any free port).
pub fn store_port(job: &str) -> u16 {
    let id: u64 = job.parse().unwrap_or(0);
    let port = 20000 + (id % 20000) as u16;
    if std::net::TcpListener::bind(("0.0.0.0", port)).is_ok() {
        port
    } else {
        0
    }
}

/// Outside an allocation: write the batch script that runs this driver inside one, and submit
/// it (or print it with `--dry-run`).
pub fn submit_job(a: &crate::launch::LaunchArgs, cfg: &weft_trainer::Config, procs: usize) -> Result<()> {
    let dir = cfg.run_dir();
    std::fs::create_dir_all(&dir)?;
    let dir = std::fs::canonicalize(&dir)?;
    let me = crate::weft_exe()?.display().to_string();
    let config = std::fs::canonicalize(&a.config)?.display().to_string();
    let mut driver = vec![me, "launch".into(), "--slurm".into()];
    driver.extend([
        "--nodes".into(),
        a.nodes.to_string(),
        "--spare-nodes".into(),
        a.spare_nodes.to_string(),
    ]);
    driver.extend(["--procs-per-node".into(), procs.to_string(), config]);
    for s in &a.set {
        driver.extend(["--set".to_string(), s.clone()]);
    }
    let mut job = a
        .sbatch
        .job(&cfg.job.name, (a.nodes, a.spare_nodes, procs), &dir, None);
    // Ranks on GPUs: one GPU per rank on every node, unless --gres says otherwise.
    let gpus = format!("gpu:{procs}");
    if job.gres.is_none() && weft_trainer::device::resolve(cfg)? != weft_trainer::device::Device::Cpu {
        job.gres = Some(&gpus);
    }
    let script = script(&job, &driver)?;
    if a.dry_run {
        print!("{script}");
        return Ok(());
    }
    let path = dir.join("launch.sbatch");
    std::fs::write(&path, &script)?;
    let id = submit(&path)?;
    println!(
        "submitted job {id} ({} nodes + {} spare); follow it in {}",
        a.nodes,
        a.spare_nodes,
        dir.join(format!("slurm-{id}.out")).display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_quote_every_word_and_refuse_line_breaks() {
        let out = Path::new("/runs/x");
        let j = Job {
            name: "x",
            nodes: 2,
            spare: 1,
            procs: 4,
            partition: Some("gpu"),
            time: Some("01:00:00"),
            account: None,
            gres: Some("gpu:4"),
            extra: &["--exclusive".to_string()],
            out,
            array: None,
        };
        let s = script(
            &j,
            &[
                "/bin/weft".into(),
                "launch".into(),
                "it's".into(),
                "$(rm -rf /)".into(),
            ],
        )
        .unwrap();
        assert!(
            s.contains("#SBATCH --nodes=2-3\n#SBATCH --mincpus=4\n") && s.contains("#SBATCH --gres=gpu:4\n"),
            "{s}"
        );
        assert!(s.contains("'it'\\''s' '$(rm -rf /)'"), "{s}");
        let arr = script(
            &Job {
                array: Some("0-9%2"),
                ..j
            },
            &[],
        )
        .unwrap();
        assert!(
            arr.contains("#SBATCH --array=0-9%2\n") && arr.contains("slurm-%A_%a.out"),
            "{arr}"
        );
        let bad = Job {
            partition: Some("gpu\n#SBATCH --uid=0"),
            ..j
        };
        assert!(script(&bad, &[])
            .unwrap_err()
            .to_string()
            .contains("control characters"));
    }
}
