//! The processes the driver started: the attempt's child and everything under it, found by
//! walking parent ids in `/proc`. These are the only processes the driver ends by pid.

use std::collections::{HashMap, HashSet};

/// Every live descendant of `root` (not `root` itself), from `/proc/<pid>/stat`; children of a
/// process before their own children's. Empty where `/proc` cannot be read.
pub(crate) fn descendants(root: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if let Some(ppid) = std::fs::read_to_string(e.path().join("stat"))
            .ok()
            .as_deref()
            .and_then(parent)
        {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let (mut out, mut seen) = (vec![], HashSet::from([root]));
    let mut next = vec![root];
    while !next.is_empty() {
        let mut deeper = vec![];
        for p in next {
            for &c in children.get(&p).into_iter().flatten() {
                if seen.insert(c) {
                    out.push(c);
                    deeper.push(c);
                }
            }
        }
        next = deeper;
    }
    out
}

/// The parent id in a `/proc/<pid>/stat` line: the 2nd field after the command name, which
/// is in parentheses and may itself hold spaces and parentheses.
fn parent(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    let _state = f.next()?;
    f.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};
    use std::time::Duration;

    #[test]
    fn the_parent_id_is_read_past_a_command_name_with_spaces_and_parentheses() {
        assert_eq!(parent("42 (a b) c) (d) S 7 42 42 0 -1"), Some(7));
        assert_eq!(parent("42 (weft) R 1 42"), Some(1));
        assert_eq!(parent("garbage"), None);
    }

    #[test]
    fn descendants_are_the_tree_under_a_process_and_nothing_else() {
        // A shell with a grandchild in a process group of its own (as mpirun's ranks may be),
        // and an unrelated process beside it.
        let mut tree = Command::new("sh")
            .args(["-c", "setsid sleep 1000 & sleep 1000 & wait"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut other = Command::new("sleep").arg("1000").spawn().unwrap();
        let mut found = vec![];
        for _ in 0..100 {
            found = descendants(tree.id());
            if found.len() >= 2 {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = Command::new("kill")
            .arg("-KILL")
            .args(found.iter().map(u32::to_string))
            .status();
        let _ = tree.kill();
        let _ = tree.wait();
        let alive = other.try_wait().unwrap().is_none();
        let _ = other.kill();
        let _ = other.wait();
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(!found.contains(&other.id()) && !found.contains(&std::process::id()));
        assert!(alive);
    }
}
