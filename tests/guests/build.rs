//! Builds every guest crate for `wasm32-wasip2` with one nested
//! `cargo build`, and hands the artifact paths to `src/lib.rs` as
//! `SKIFF_GUEST_*` environment variables.
//!
//! The nested build uses its own target directory (`<target>/guests`): the
//! outer build holds the lock on `<target>` for as long as this script runs,
//! so sharing it would deadlock. Wasmtime's
//! `crates/test-programs/artifacts/build.rs` does the same.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Guest packages to build.
const PACKAGES: &[&str] = &[
    "hello",
    "echo",
    "fanout",
    "pi",
    "skiff-test-programs",
    "skiff-test-http",
];

/// `(env suffix, artifact file)`: cdylibs are named after the crate with
/// underscores, binaries after the bin.
const ARTIFACTS: &[(&str, &str)] = &[
    ("HELLO", "hello.wasm"),
    ("ECHO", "echo.wasm"),
    ("FANOUT", "fanout.wasm"),
    ("PI", "pi.wasm"),
    ("MISBEHAVE", "misbehave.wasm"),
    ("HTTP_TEST", "skiff_test_http.wasm"),
];

/// Inputs of the guest build, relative to the workspace root.
const WATCHED: &[&str] = &[
    "Cargo.toml",
    "Cargo.lock",
    "guest-sdk/Cargo.toml",
    "guest-sdk/src",
    "examples/hello/Cargo.toml",
    "examples/hello/src",
    "examples/echo/Cargo.toml",
    "examples/echo/src",
    "examples/fanout/Cargo.toml",
    "examples/fanout/src",
    "examples/pi/Cargo.toml",
    "examples/pi/src",
    "tests/programs/Cargo.toml",
    "tests/programs/src",
    "tests/programs-http/Cargo.toml",
    "tests/programs-http/src",
];

/// Variables the outer build sets (or passes through) that would break or
/// distort the nested one: host rustflags and wrappers (clippy's, for one)
/// applied to wasm, a foreign target or target dir, the outer jobserver.
const LEAKED_VARS: &[&str] = &[
    "CARGO_ENCODED_RUSTFLAGS",
    "RUSTFLAGS",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTC_WRAPPER",
    "CLIPPY_ARGS",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_MAKEFLAGS",
];

/// Prefixes of per-package variables the outer build sets for this script.
const LEAKED_PREFIXES: &[&str] = &["CARGO_PROFILE_", "CARGO_CFG_", "CARGO_FEATURE_"];

const TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir
        .parent()
        .and_then(Path::parent)
        .expect("tests/guests sits two levels below the workspace root")
        .to_path_buf();

    for path in WATCHED {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");

    // A relative CARGO_TARGET_DIR is taken relative to the workspace root.
    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map(|dir| root.join(dir))
        .unwrap_or_else(|| root.join("target"));
    let guests_dir = target_dir.join("guests");

    build(&root, &guests_dir);

    let release = guests_dir.join(TARGET).join("release");
    for (name, file) in ARTIFACTS {
        let path = release.join(file);
        assert!(
            path.is_file(),
            "the guest build succeeded but did not produce {}",
            path.display()
        );
        println!("cargo:rustc-env=SKIFF_GUEST_{name}={}", path.display());
    }
}

fn build(root: &Path, guests_dir: &Path) {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .arg("build")
        .arg("--release")
        .arg("--target")
        .arg(TARGET)
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(guests_dir);
    for package in PACKAGES {
        command.arg("-p").arg(package);
    }
    for var in LEAKED_VARS {
        command.env_remove(var);
    }
    for (var, _) in env::vars_os() {
        let leaked = var
            .to_str()
            .is_some_and(|var| LEAKED_PREFIXES.iter().any(|p| var.starts_with(p)));
        if leaked {
            command.env_remove(&var);
        }
    }

    let output = command
        .output()
        .unwrap_or_else(|e| panic!("could not run the guest build {command:?}: {e}"));
    if output.status.success() {
        return;
    }

    let stderr = String::from_utf8_lossy(&output.stderr);
    let missing_target = stderr.contains("may not be installed")
        || (stderr.contains(TARGET) && stderr.contains("not installed"))
        || stderr.contains("can't find crate for `core`")
        || stderr.contains("can't find crate for `std`");
    if missing_target {
        panic!(
            "building the guests needs the {TARGET} target; \
             run `rustup target add {TARGET}`\n\n{command:?} failed ({}):\n{stderr}",
            output.status
        );
    }
    panic!(
        "building the guests failed: {command:?} exited with {}:\n{stderr}",
        output.status
    );
}
