//! The real `skiff` binary running components: the compiled-component cache
//! across processes, `component run` and `component serve`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn skiff() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_skiff"));
    cmd.env("RUST_LOG", "warn");
    cmd
}

/// Runs `skiff component compile` and returns its stderr.
fn compile(cache: &Path, file: &str) -> String {
    let out = skiff()
        .args(["component", "compile", file, "--cache-dir"])
        .arg(cache)
        .output()
        .expect("skiff runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    stderr
}

fn cache_entry(cache: &Path) -> std::path::PathBuf {
    let mut entries: Vec<_> = walk(cache)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    entries.pop().unwrap()
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn a_second_process_reuses_the_compiled_artifact_and_a_corrupt_one_is_rebuilt() {
    let cache = tempfile::tempdir().unwrap();
    let first = compile(cache.path(), skiff_guests::HELLO);
    assert!(
        first.contains("HTTP (wasi:http/incoming-handler) component, compiled"),
        "{first}"
    );
    let entry = cache_entry(cache.path());
    let written = std::fs::metadata(&entry).unwrap().modified().unwrap();

    let second = compile(cache.path(), skiff_guests::HELLO);
    assert!(second.contains("loaded from cache"), "{second}");
    assert_eq!(
        std::fs::metadata(&entry).unwrap().modified().unwrap(),
        written,
        "not rewritten"
    );

    // Flip one byte in the middle of the artifact.
    let mut bytes = std::fs::read(&entry).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&entry, &bytes).unwrap();
    let third = compile(cache.path(), skiff_guests::HELLO);
    assert!(
        third.contains("recompiled (cache entry was corrupt: checksum mismatch)"),
        "{third}"
    );

    // Truncated entries too.
    let bytes = std::fs::read(&entry).unwrap();
    std::fs::write(&entry, &bytes[..20]).unwrap();
    let fourth = compile(cache.path(), skiff_guests::HELLO);
    assert!(
        fourth.contains("recompiled (cache entry was corrupt: bad header"),
        "{fourth}"
    );

    let fifth = compile(cache.path(), skiff_guests::HELLO);
    assert!(fifth.contains("loaded from cache"), "{fifth}");
    assert_eq!(cache_entry(cache.path()), entry);
}

#[test]
fn component_run_prints_output_and_exits_with_the_guest_code() {
    let out = skiff()
        .args(["component", "run", skiff_guests::PI, "--", "20"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "3.14159265358979323846\n"
    );

    let out = skiff()
        .args([
            "component",
            "run",
            skiff_guests::MISBEHAVE,
            "--",
            "exit",
            "7",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7));

    let out = skiff()
        .args([
            "component",
            "run",
            skiff_guests::MISBEHAVE,
            "--memory-mib",
            "16",
            "--",
            "oom",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("exceeded its memory limit of 16777216 bytes"),
        "{stderr}"
    );
}

#[test]
fn a_broken_file_gets_one_clear_sentence() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, "not wasm").unwrap();
    let out = skiff()
        .args(["component", "run"])
        .arg(&junk)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim(),
        format!(
            "skiff: {}: not a WebAssembly component: it does not start with the WebAssembly magic number `\\0asm`",
            junk.display()
        )
    );
}

/// Sends a GET over a plain TCP connection on loopback; returns the response.
fn http_get(port: u16, path: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn component_serve_answers_http_and_stops_on_sigterm() {
    let mut child = skiff()
        .args([
            "component",
            "serve",
            skiff_guests::HELLO,
            "--listen",
            "127.0.0.1:0",
            "-e",
            "POD_NAME=cli",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    let port = loop {
        assert!(Instant::now() < deadline, "no serving line");
        let mut line = String::new();
        assert_ne!(
            stderr.read_line(&mut line).unwrap(),
            0,
            "skiff exited early"
        );
        if let Some(addr) = line.trim().rsplit_once("http://127.0.0.1:") {
            break addr.1.parse::<u16>().unwrap();
        }
    };
    let response = http_get(port, "/");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("Hello from cli!\n"), "{response}");

    // Stop it by its pid.
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            break;
        }
        if started.elapsed() > Duration::from_secs(20) {
            child.kill().unwrap();
            panic!("skiff did not exit on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
