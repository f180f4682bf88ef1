//! Results: every contender's runs, the ratios between contenders and
//! their targets, printed as the summary that ends the bench.

use std::fmt::Write as _;

use crate::cpu::CpuUse;
use crate::scenarios::latency::Latency;
use crate::R;

/// pgbridge's peak RSS target in the memory part.
const MEMORY_LIMIT_MIB: f64 = 64.0;

/// One measured contender.
pub struct Measured {
    pub secs: f64,
    pub cpu: CpuUse,
    pub note: String,
}

/// Every run of one contender; one failed run fails the line.
pub struct Line {
    pub part: &'static str,
    pub shape: &'static str,
    pub contender: &'static str,
    pub result: R<Vec<Measured>>,
}

impl Line {
    /// The run with the median time (the lower middle one for an even count).
    pub fn median(&self) -> Option<&Measured> {
        let runs = self.result.as_ref().ok()?;
        let mut v: Vec<&Measured> = runs.iter().collect();
        v.sort_by(|a, b| a.secs.total_cmp(&b.secs));
        v.get(v.len().saturating_sub(1) / 2).copied()
    }

    fn range(&self) -> String {
        match &self.result {
            Ok(runs) if runs.len() > 1 => {
                let min = runs.iter().map(|m| m.secs).fold(f64::INFINITY, f64::min);
                let max = runs.iter().map(|m| m.secs).fold(0.0, f64::max);
                format!("{min:.1}-{max:.1}")
            }
            _ => String::new(),
        }
    }
}

/// Everything the bench prints at the end.
#[derive(Default)]
pub struct Report {
    pub lines: Vec<Line>,
    pub latency: Vec<(&'static str, R<Latency>)>,
    pub headers: Vec<String>,
    /// The memory part: pgbridge's peak RSS in MiB.
    pub memory: Option<R<f64>>,
}

impl Report {
    /// Adds one run of a contender (one failed run fails its line).
    pub fn add(
        &mut self,
        part: &'static str,
        shape: &'static str,
        contender: &'static str,
        result: R<Measured>,
    ) {
        match &result {
            Ok(m) => eprintln!("  {part} {shape} {contender}: {:.2} s {}", m.secs, m.note),
            Err(e) => eprintln!("  {part} {shape} {contender}: FAILED: {e}"),
        }
        let i = match self
            .lines
            .iter()
            .position(|l| l.part == part && l.shape == shape && l.contender == contender)
        {
            Some(i) => i,
            None => {
                self.lines.push(Line {
                    part,
                    shape,
                    contender,
                    result: Ok(Vec::new()),
                });
                self.lines.len() - 1
            }
        };
        let line = &mut self.lines[i];
        match (&mut line.result, result) {
            (Ok(runs), Ok(m)) => runs.push(m),
            (Ok(_), Err(e)) => line.result = Err(e),
            (Err(_), _) => {}
        }
    }

    /// The median time of a contender's runs (None when it failed).
    pub fn secs(&self, part: &str, shape: &str, contender: &str) -> Option<f64> {
        self.lines
            .iter()
            .find(|l| l.part == part && l.shape == shape && l.contender == contender)
            .and_then(Line::median)
            .map(|m| m.secs)
    }
}

/// A ratio target: (name, numerator, denominator, limit).
struct Ratio {
    pub label: &'static str,
    pub part: &'static str,
    pub num: (&'static str, &'static str),
    pub den: (&'static str, &'static str),
    pub limit: Option<f64>,
}

const RATIOS: &[Ratio] = &[
    Ratio {
        label: "backlog (a) pgbridge / drain",
        part: "backlog",
        num: ("a", "pgbridge"),
        den: ("-", "pg_recvlogical"),
        limit: Some(1.1),
    },
    Ratio {
        label: "backlog (a) native / drain",
        part: "backlog",
        num: ("a", "native"),
        den: ("-", "pg_recvlogical"),
        limit: None,
    },
    Ratio {
        label: "backlog (b) native / drain",
        part: "backlog",
        num: ("b", "native"),
        den: ("-", "pg_recvlogical"),
        limit: None,
    },
    Ratio {
        label: "backlog (b) pgbridge / drain",
        part: "backlog",
        num: ("b", "pgbridge"),
        den: ("-", "pg_recvlogical"),
        limit: None,
    },
    Ratio {
        label: "backlog (b) pgbridge / native",
        part: "backlog",
        num: ("b", "pgbridge"),
        den: ("b", "native"),
        limit: Some(0.6),
    },
    Ratio {
        label: "kafka pgbridge / drain",
        part: "kafka",
        num: ("-", "pgbridge"),
        den: ("-", "pg_recvlogical"),
        limit: Some(1.1),
    },
    Ratio {
        label: "kafka wal2json+python / drain",
        part: "kafka",
        num: ("-", "wal2json+python"),
        den: ("-", "pg_recvlogical"),
        limit: None,
    },
    Ratio {
        label: "kafka pgbridge / wal2json+python",
        part: "kafka",
        num: ("-", "pgbridge"),
        den: ("-", "wal2json+python"),
        limit: None,
    },
    Ratio {
        label: "copy pgbridge / native",
        part: "copy",
        num: ("-", "pgbridge"),
        den: ("-", "native"),
        limit: Some(0.5),
    },
    Ratio {
        label: "copy pgbridge / pgcopydb",
        part: "copy",
        num: ("-", "pgbridge"),
        den: ("-", "pgcopydb"),
        limit: None,
    },
    Ratio {
        label: "copy pgcopydb / native",
        part: "copy",
        num: ("-", "pgcopydb"),
        den: ("-", "native"),
        limit: None,
    },
    Ratio {
        label: "backfill while streaming / initial copy",
        part: "backfill",
        num: ("bf", "pgbridge"),
        den: ("copy", "pgbridge"),
        limit: Some(1.5),
    },
];

/// Prints the report: the headers, the contenders' times, the ratios, the
/// latency percentiles and the PASS/FAIL summary.
pub fn print_report(r: &Report) {
    let mut out = String::new();
    let _ = writeln!(out, "\n=== pgbridge end-to-end benchmark ===");
    for h in &r.headers {
        let _ = writeln!(out, "{h}");
    }
    if !r.lines.is_empty() {
        write_times(&mut out, r);
        write_ratios(&mut out, r);
    }
    if !r.latency.is_empty() {
        write_latency(&mut out, r);
    }
    let _ = writeln!(out, "\nsummary");
    for s in summary(r) {
        let _ = writeln!(out, "{s}");
    }
    print!("{out}");
}

/// One line per contender: its median time, range and CPU use.
fn write_times(out: &mut String, r: &Report) {
    let _ = writeln!(
        out,
        "\n{:<8} {:<5} {:<15} {:>8} {:>10}  {:>7} {:>7} {:>7} {:>7}  result",
        "part", "shape", "contender", "time s", "range", "src CPU", "tool", "tgt CPU", "floor"
    );
    let _ = writeln!(out, "{}", "-".repeat(98));
    for l in &r.lines {
        match (&l.result, l.median()) {
            (Ok(runs), Some(m)) => {
                let _ = writeln!(
                    out,
                    "{:<8} {:<5} {:<15} {:>8.2} {:>10}  {:>7.1} {:>7.1} {:>7.1} {:>7.1}  ok x{} {}",
                    l.part,
                    l.shape,
                    l.contender,
                    m.secs,
                    l.range(),
                    m.cpu.source,
                    m.cpu.tool,
                    m.cpu.target,
                    m.cpu.floor(),
                    runs.len(),
                    m.note
                );
            }
            (Err(e), _) => {
                let first = e.lines().next().unwrap_or("");
                let _ = writeln!(
                    out,
                    "{:<8} {:<5} {:<15} {:>8} {:>10}  {:>7} {:>7} {:>7} {:>7}  FAILED: {first}",
                    l.part, l.shape, l.contender, "-", "", "-", "-", "-", "-"
                );
            }
            (Ok(_), None) => {}
        }
    }
    let _ = writeln!(
        out,
        "(time: the median of the runs (range: fastest-slowest); CPU seconds of that run: \
         src = backends of the source database (walsenders, COPY), tool = the client's \
         process tree, tgt = backends of the target database (native apply/tablesync \
         workers, the tools' sessions); floor = the shortest time that CPU allows: all of it \
         over the cores, or the busiest process's, whichever is more)"
    );
}

/// The ratios of the parts that ran, with their targets.
fn write_ratios(out: &mut String, r: &Report) {
    let _ = writeln!(
        out,
        "\n{:<32} {:>7}  {:>7}  {:>7}",
        "ratio", "value", "target", "floor"
    );
    let _ = writeln!(out, "{}", "-".repeat(59));
    let show = |v: Option<f64>| v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into());
    for q in RATIOS {
        if !r.lines.iter().any(|l| l.part == q.part) {
            continue;
        }
        let _ = writeln!(
            out,
            "{:<32} {:>7}  {:>7}  {:>7}",
            q.label,
            show(ratio(r, q)),
            q.limit.map(|l| format!("<= {l}")).unwrap_or_default(),
            show(floor_ratio(r, q))
        );
    }
    let _ = writeln!(
        out,
        "(floor: the numerator's CPU floor over the denominator's time; the floor is the \
         run's CPU seconds of every process over the cores, or its busiest process's, \
         whichever is more: the ratio a run could reach if nothing waited)"
    );
}

/// The numerator's CPU floor (its median run's) over the denominator's time.
fn floor_ratio(r: &Report, q: &Ratio) -> Option<f64> {
    let n = r
        .lines
        .iter()
        .find(|l| l.part == q.part && l.shape == q.num.0 && l.contender == q.num.1)
        .and_then(Line::median)?;
    let d = r.secs(q.part, q.den.0, q.den.1)?;
    (d > 0.0).then_some(n.cpu.floor() / d)
}

/// The latency part's percentiles per contender.
fn write_latency(out: &mut String, r: &Report) {
    let _ = writeln!(
        out,
        "\n{:<10} {:>8} {:>9} {:>8} {:>8} {:>8} {:>8}",
        "latency", "rows", "rate/s", "p50 ms", "p90 ms", "p99 ms", "max ms"
    );
    let _ = writeln!(out, "{}", "-".repeat(66));
    for (who, l) in &r.latency {
        match l {
            Ok(l) => {
                let p = l.pcts();
                let _ = writeln!(
                    out,
                    "{:<10} {:>8} {:>9.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
                    who,
                    l.rows(),
                    l.tps(),
                    p.p50,
                    p.p90,
                    p.p99,
                    p.max
                );
            }
            Err(e) => {
                let _ = writeln!(
                    out,
                    "{:<10} FAILED: {}",
                    who,
                    e.lines().next().unwrap_or("")
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "(ms from the source commit to the row's `arrived` default on the target; \
         rate/s: pgbench's tps)"
    );
}

fn ratio(r: &Report, q: &Ratio) -> Option<f64> {
    let n = r.secs(q.part, q.num.0, q.num.1)?;
    let d = r.secs(q.part, q.den.0, q.den.1)?;
    (d > 0.0).then_some(n / d)
}

fn line_result<'a>(
    r: &'a Report,
    part: &str,
    shape: &str,
    who: &str,
) -> Option<&'a R<Vec<Measured>>> {
    r.lines
        .iter()
        .find(|l| l.part == part && l.shape == shape && l.contender == who)
        .map(|l| &l.result)
}

/// One PASS/FAIL line per target of the parts that ran.
pub fn summary(r: &Report) -> Vec<String> {
    let mut out = Vec::new();
    for q in RATIOS.iter().filter(|q| q.limit.is_some()) {
        if !r.lines.iter().any(|l| l.part == q.part) {
            continue;
        }
        let limit = q.limit.unwrap_or(f64::INFINITY);
        let failed = [q.num, q.den]
            .iter()
            .filter_map(|(s, c)| match line_result(r, q.part, s, c) {
                Some(Err(e)) => Some(format!(
                    "{c} ({s}) failed: {}",
                    e.lines().next().unwrap_or("")
                )),
                None => Some(format!("{c} ({s}) not measured")),
                _ => None,
            })
            .collect::<Vec<_>>();
        out.push(match ratio(r, q) {
            Some(v) if v <= limit => format!("PASS  {} = {v:.2} (target <= {limit})", q.label),
            Some(v) => format!("FAIL  {} = {v:.2} (target <= {limit})", q.label),
            None => format!("FAIL  {}: {}", q.label, failed.join("; ")),
        });
    }
    if let Some(m) = &r.memory {
        out.push(match m {
            Ok(mib) if *mib <= MEMORY_LIMIT_MIB => {
                format!("PASS  memory: peak RSS {mib:.1} MiB (target <= {MEMORY_LIMIT_MIB} MiB)")
            }
            Ok(mib) => {
                format!("FAIL  memory: peak RSS {mib:.1} MiB (target <= {MEMORY_LIMIT_MIB} MiB)")
            }
            Err(e) => format!("FAIL  memory: {}", e.lines().next().unwrap_or("")),
        });
    }
    if !r.latency.is_empty() {
        let get = |who: &str| r.latency.iter().find(|(w, _)| *w == who).map(|(_, l)| l);
        out.push(match (get("native"), get("pgbridge")) {
            (Some(Ok(n)), Some(Ok(p))) => {
                let (n, p) = (n.pcts(), p.pcts());
                let d = p.p99 - n.p99;
                format!(
                    "{}  latency p99 pgbridge - native = {d:+.2} ms \
                     ({:.2} vs {:.2}; target <= +2 ms)",
                    if d <= 2.0 { "PASS" } else { "FAIL" },
                    p.p99,
                    n.p99
                )
            }
            (n, p) => {
                let why = |x: Option<&R<Latency>>| match x {
                    Some(Err(e)) => e.lines().next().unwrap_or("").to_string(),
                    Some(Ok(_)) => "ok".into(),
                    None => "not measured".into(),
                };
                format!(
                    "FAIL  latency p99 difference: native {}, pgbridge {}",
                    why(n),
                    why(p)
                )
            }
        });
    }
    out
}
