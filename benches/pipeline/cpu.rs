//! Where the CPU goes while a contender runs: /proc accounting of process
//! trees and of the clusters' backends.

use std::collections::{HashMap, HashSet};

use crate::db::Db;
use crate::env::Env;
use crate::R;

/// Process trees (/proc scans) and backend lists are refreshed every this many polls.
const REFRESH_EVERY: u32 = 8;

/// Clock ticks per second (`getconf CLK_TCK`, else 100).
pub fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// (ppid, utime + stime in ticks) of a process.
pub fn proc_stat(pid: u32) -> Option<(u32, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ppid = f.get(1)?.parse().ok()?;
    let ut: u64 = f.get(11)?.parse().ok()?;
    let st: u64 = f.get(12)?.parse().ok()?;
    Some((ppid, ut + st))
}

/// `root` and all its descendants.
fn process_tree(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) {
                if let Some((ppid, _)) = proc_stat(pid) {
                    children.entry(ppid).or_default().push(pid);
                }
            }
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        if let Some(c) = children.get(&out[i]) {
            out.extend(c);
        }
        i += 1;
    }
    out
}

/// CPU seconds used by a changing set of processes since `begin`.
#[derive(Default)]
struct CpuSet {
    pids: HashSet<u32>,
    base: HashMap<u32, u64>,
    last: HashMap<u32, u64>,
}

impl CpuSet {
    /// Processes alive now count only from now on.
    fn baseline(&mut self, pids: &[u32]) {
        for &p in pids {
            if let Some((_, t)) = proc_stat(p) {
                self.base.insert(p, t);
            }
        }
    }

    fn track(&mut self, pids: &[u32]) {
        self.pids.extend(pids);
    }

    fn sample(&mut self) {
        for &p in &self.pids {
            if let Some((_, t)) = proc_stat(p) {
                self.last.insert(p, t);
            }
        }
    }

    fn used(&self) -> impl Iterator<Item = u64> + '_ {
        self.last
            .iter()
            .map(|(p, t)| t.saturating_sub(self.base.get(p).copied().unwrap_or(0)))
    }

    fn seconds(&self, ticks: f64) -> f64 {
        self.used().sum::<u64>() as f64 / ticks
    }

    /// The CPU seconds of the busiest process.
    fn largest(&self, ticks: f64) -> f64 {
        self.used().max().unwrap_or(0) as f64 / ticks
    }
}

/// Where the CPU goes while one contender runs: backends of the source
/// database (walsenders, COPY), backends of the target database (native
/// apply and tablesync workers, pgbridge's and pgcopydb's sessions) and
/// the external tool's process tree.
pub struct Watch {
    src_db: String,
    tgt_db: Option<String>,
    tool: Option<u32>,
    src: CpuSet,
    tgt: CpuSet,
    tool_cpu: CpuSet,
    ticks: f64,
    polls: u32,
}

/// CPU seconds of one measured run, by where they were spent.
#[derive(Clone, Copy, Default)]
pub struct CpuUse {
    pub source: f64,
    pub tool: f64,
    pub target: f64,
    /// The CPU seconds of the busiest single process (a backend, or the
    /// tool's process with its threads).
    pub largest: f64,
}

impl CpuUse {
    /// The shortest wall time this CPU use allows on the machine's cores:
    /// all of it spread over every core, or the busiest process alone
    /// (it cannot run on two cores at once), whichever is longer.
    pub fn floor(&self) -> f64 {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        ((self.source + self.tool + self.target) / cores).max(self.largest)
    }
}

async fn backend_pids(db: &Db, dbname: &str) -> R<Vec<u32>> {
    Ok(db
        .rows(&format!(
            "SELECT pid FROM pg_stat_activity \
             WHERE datname = '{dbname}' AND pid <> pg_backend_pid()"
        ))
        .await?
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten()?.parse().ok())
        .collect())
}

impl Watch {
    /// Starts watching: processes alive now count only from now on.
    pub async fn begin(env: &Env, src_db: &str, tgt_db: Option<&str>) -> R<Watch> {
        let mut w = Watch {
            src_db: src_db.to_string(),
            tgt_db: tgt_db.map(str::to_string),
            tool: None,
            src: CpuSet::default(),
            tgt: CpuSet::default(),
            tool_cpu: CpuSet::default(),
            ticks: env.ticks,
            polls: 0,
        };
        w.src.baseline(&backend_pids(&env.src_admin, src_db).await?);
        if let Some(t) = tgt_db {
            w.tgt.baseline(&backend_pids(&env.tgt_admin, t).await?);
        }
        Ok(w)
    }

    /// The external tool's process (its tree is counted as `tool`).
    pub fn tool(&mut self, pid: Option<u32>) {
        self.tool = pid;
    }

    async fn refresh(&mut self, env: &Env) -> R<()> {
        self.src
            .track(&backend_pids(&env.src_admin, &self.src_db).await?);
        if let Some(t) = &self.tgt_db {
            self.tgt.track(&backend_pids(&env.tgt_admin, t).await?);
        }
        if let Some(root) = self.tool {
            self.tool_cpu.track(&process_tree(root));
        }
        Ok(())
    }

    /// Called every poll: samples CPU, refreshes the process sets now and then.
    pub async fn tick(&mut self, env: &Env) -> R<()> {
        if self.polls.is_multiple_of(REFRESH_EVERY) {
            self.refresh(env).await?;
        }
        self.polls += 1;
        self.src.sample();
        self.tgt.sample();
        self.tool_cpu.sample();
        Ok(())
    }

    /// The CPU seconds used since `begin`.
    pub async fn finish(&mut self, env: &Env) -> R<CpuUse> {
        self.refresh(env).await?;
        self.src.sample();
        self.tgt.sample();
        self.tool_cpu.sample();
        Ok(CpuUse {
            source: self.src.seconds(self.ticks),
            tool: self.tool_cpu.seconds(self.ticks),
            target: self.tgt.seconds(self.ticks),
            largest: [&self.src, &self.tgt, &self.tool_cpu]
                .iter()
                .map(|s| s.largest(self.ticks))
                .fold(0.0, f64::max),
        })
    }
}

/// The process's peak resident set (VmHWM) in MiB.
pub fn vm_hwm_mib(pid: u32) -> Option<f64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
}

/// `(peak RSS N MiB)` for a note, or nothing.
pub fn peak_rss_mb(pid: u32) -> String {
    vm_hwm_mib(pid)
        .map(|mib| format!("(peak RSS {mib:.0} MiB)"))
        .unwrap_or_default()
}
