//! The command line's help: `pgbridge --help` and every command's help
//! say what it does, describe every option and show an example.

use std::process::Command;

use libtest_mimic::Trial;

use crate::trial;

pub fn trials() -> Vec<Trial> {
    vec![trial(
        "cli::every_command_has_help_with_examples",
        every_command_has_help,
    )]
}

fn help(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_pgbridge"))
        .args(args)
        .output()
        .expect("run pgbridge");
    assert!(out.status.success(), "pgbridge {args:?} failed: {out:?}");
    String::from_utf8(out.stdout).expect("utf-8 help")
}

/// The lines of `section` ("Commands:", "Options:") up to the next blank
/// line that is followed by an unindented line.
fn section<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    let mut lines = text.lines().skip_while(|l| *l != name).skip(1).peekable();
    let mut out = Vec::new();
    while let Some(l) = lines.next() {
        if l.is_empty() && lines.peek().is_none_or(|n| !n.starts_with(' ')) {
            break;
        }
        out.push(l);
    }
    out
}

/// Every option in `--help`'s Options section has a description.
fn options_described(cmd: &str, text: &str) {
    let opts = section(text, "Options:");
    assert!(!opts.is_empty(), "{cmd}: no Options section:\n{text}");
    for (i, l) in opts.iter().enumerate() {
        let t = l.trim_start();
        if t.starts_with('-') && l.len() - t.len() <= 6 {
            let next = opts.get(i + 1).map(|n| n.trim()).unwrap_or_default();
            assert!(
                !next.is_empty() && !next.starts_with('-'),
                "{cmd}: option {t:?} has no description:\n{text}"
            );
        }
    }
}

fn every_command_has_help() {
    let top = help(&["--help"]);
    assert!(top.contains("Examples:"), "pgbridge --help:\n{top}");
    options_described("pgbridge", &top);
    let commands: Vec<String> = section(&top, "Commands:")
        .iter()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect();
    assert!(
        commands.len() >= 6 && commands.iter().any(|c| c == "run"),
        "commands: {commands:?}\n{top}"
    );
    for cmd in &commands {
        let long = help(&[cmd, "--help"]);
        assert_eq!(long, help(&["help", cmd]), "{cmd}: --help and help agree");
        // What it does: a description of more than one paragraph before
        // Usage (the one-line summary plus the long text).
        let about: Vec<&str> = long
            .split("Usage:")
            .next()
            .unwrap_or_default()
            .split("\n\n")
            .filter(|p| !p.trim().is_empty())
            .collect();
        assert!(
            about.len() >= 2 && about[1].split_whitespace().count() >= 20,
            "{cmd}: the help says too little about what it does:\n{long}"
        );
        options_described(cmd, &long);
        let examples = long
            .split("Examples:")
            .nth(1)
            .unwrap_or_else(|| panic!("{cmd}: no Examples section:\n{long}"));
        assert!(
            examples.contains(&format!("pgbridge {cmd}")),
            "{cmd}: the examples do not run it:\n{long}"
        );
    }
}
