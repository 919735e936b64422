//! `misbehave`: a `wasi:cli/command` guest that does one thing, chosen by its
//! first argument, so Skiff's runtime tests can provoke each way a job can
//! behave or fail.
//!
//! | Mode | Behaviour |
//! |---|---|
//! | `loop` | spins on the CPU forever, never yielding |
//! | `oom` | allocates and touches 1 MiB chunks until memory runs out (then traps) |
//! | `trap` | panics with `deliberate trap` (wasm panics abort, so this traps) |
//! | `stack` | recurses without bound until the wasm call stack is exhausted |
//! | `log N` | writes N lines of exactly 100 bytes (`line {i} ` padded with `.`, then `\n`), `i` from 0, even `i` to stdout and odd `i` to stderr; exits 0 |
//! | `exit N` | exits with code N |
//! | `sleep MS` | sleeps MS milliseconds, exits 0 |
//! | `env` | prints `K=V` for every environment variable, one per line; exits 0 |
//! | `args` | prints every argument, including argv\[0\] and the mode, one per line; exits 0 |
//! | `ls DIR` | prints the names of DIR's entries, sorted, one per line |
//! | `cat PATH` | copies the file at PATH to stdout |
//! | `write PATH TEXT` | writes TEXT (no newline added) to the file at PATH |
//! | `tick MS` | prints `tick {i}`, `i` from 0, every MS milliseconds forever |
//!
//! `ls`, `cat` and `write` report an I/O error on stderr and exit 1. A
//! missing or unknown mode, or a missing or unparsable argument, is a usage
//! message on stderr and exit code 2.

use skiff_test_programs::{exhaust_memory, recurse, spin};
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "usage: misbehave loop | oom | trap | stack | log N | exit N | sleep MS \
                     | env | args | ls DIR | cat PATH | write PATH TEXT | tick MS";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| args.get(i).map(String::as_str);
    match (arg(1), arg(2), arg(3)) {
        (Some("loop"), None, None) => spin(),
        (Some("oom"), None, None) => exhaust_memory(),
        (Some("trap"), None, None) => panic!("deliberate trap"),
        (Some("stack"), None, None) => {
            recurse(0);
            unreachable!("unbounded recursion returned")
        }
        (Some("log"), Some(n), None) => number(n).map_or_else(usage, log),
        (Some("exit"), Some(n), None) => match n.parse::<u8>() {
            Ok(0) => std::process::exit(0),
            // `exit` carries only ok/error; `exit-with-code` (WASI 0.2.12)
            // carries the code itself.
            Ok(code) => {
                wasip2::cli::exit::exit_with_code(code);
                unreachable!("exit-with-code returned")
            }
            Err(_) => usage(),
        },
        (Some("sleep"), Some(ms), None) => number(ms).map_or_else(usage, |ms| {
            std::thread::sleep(Duration::from_millis(ms));
            ExitCode::SUCCESS
        }),
        (Some("env"), None, None) => {
            let mut out = String::new();
            for (key, value) in std::env::vars_os() {
                out.push_str(&format!("{}={}\n", key.display(), value.display()));
            }
            print(&out)
        }
        (Some("args"), _, _) => {
            let mut out = String::new();
            for arg in &args {
                out.push_str(arg);
                out.push('\n');
            }
            print(&out)
        }
        (Some("ls"), Some(dir), None) => ls(dir),
        (Some("cat"), Some(path), None) => match std::fs::read(path) {
            Ok(bytes) => {
                let mut stdout = std::io::stdout().lock();
                stdout.write_all(&bytes).expect("writing to stdout");
                stdout.flush().expect("flushing stdout");
                ExitCode::SUCCESS
            }
            Err(e) => fail(&format!("cat {path}: {e}")),
        },
        (Some("write"), Some(path), Some(text)) if args.len() == 4 => {
            match std::fs::write(path, text) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&format!("write {path}: {e}")),
            }
        }
        (Some("tick"), Some(ms), None) => number(ms).map_or_else(usage, tick),
        _ => usage(),
    }
}

fn number(text: &str) -> Option<u64> {
    text.parse().ok()
}

fn usage() -> ExitCode {
    eprintln!("{USAGE}");
    ExitCode::from(2)
}

fn fail(message: &str) -> ExitCode {
    eprintln!("misbehave: {message}");
    ExitCode::FAILURE
}

fn print(text: &str) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .expect("writing to stdout");
    stdout.flush().expect("flushing stdout");
    ExitCode::SUCCESS
}

fn log(lines: u64) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    let mut stderr = std::io::stderr().lock();
    for i in 0..lines {
        let line = format!("{:.<99}\n", format!("line {i} "));
        let written = if i % 2 == 0 {
            stdout.write_all(line.as_bytes())
        } else {
            stderr.write_all(line.as_bytes())
        };
        written.expect("writing a log line");
    }
    stdout.flush().expect("flushing stdout");
    ExitCode::SUCCESS
}

fn ls(dir: &str) -> ExitCode {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => return fail(&format!("ls {dir}: {e}")),
    };
    let mut names = Vec::new();
    for entry in entries {
        match entry {
            Ok(entry) => names.push(entry.file_name().to_string_lossy().into_owned()),
            Err(e) => return fail(&format!("ls {dir}: {e}")),
        }
    }
    names.sort();
    let mut out = String::new();
    for name in names {
        out.push_str(&name);
        out.push('\n');
    }
    print(&out)
}

fn tick(ms: u64) -> ExitCode {
    let period = Duration::from_millis(ms);
    let mut stdout = std::io::stdout().lock();
    for i in 0u64.. {
        writeln!(stdout, "tick {i}").expect("writing to stdout");
        stdout.flush().expect("flushing stdout");
        std::thread::sleep(period);
    }
    unreachable!("ticked forever")
}
