//! Skiff's guest components, built for `wasm32-wasip2` by this crate's build
//! script so host-side tests can load them.
//!
//! Each constant is the absolute path of one component; [`bytes`] reads one.
//! The build script runs a nested `cargo build --release --target
//! wasm32-wasip2` into `<target>/guests` (where `<target>` is
//! `$CARGO_TARGET_DIR`, else the workspace's `target/`), so building this
//! crate needs that target installed (`rustup target add wasm32-wasip2`).
//!
//! ```no_run
//! let component = skiff_guests::bytes(skiff_guests::HELLO);
//! assert!(component.starts_with(b"\0asm"));
//! ```

/// `examples/hello`: an HTTP component answering every request with
/// `200 text/plain` `Hello from {POD_NAME}!\n` (`POD_NAME` defaults to
/// `skiff`; `GREETING`, if set, replaces `Hello`).
pub const HELLO: &str = env!("SKIFF_GUEST_HELLO");

/// `examples/echo`: an HTTP component answering `200 application/json`
/// `{"method", "path" (with query), "headers" (lowercase names, repeated
/// values joined by ", "), "body" (UTF-8, lossy)}`.
pub const ECHO: &str = env!("SKIFF_GUEST_ECHO");

/// `examples/fanout`: an HTTP component that `GET`s `?target=URL` (default
/// `$TARGET`, else `http://hello`) `?n=N` times and answers JSON counting
/// the bodies (`answers`), statuses and errors it got.
pub const FANOUT: &str = env!("SKIFF_GUEST_FANOUT");

/// `examples/pi`: a command printing pi to N decimal places (`3.14159...`,
/// truncated); N is argv\[1\], else `$DIGITS`, else 100. Invalid N: exit 2.
pub const PI: &str = env!("SKIFF_GUEST_PI");

/// `tests/programs`: the `misbehave` command, whose first argument picks a
/// behaviour (`loop`, `oom`, `trap`, `stack`, `log N`, `exit N`, `sleep MS`,
/// `env`, `args`, `ls DIR`, `cat PATH`, `write PATH TEXT`, `tick MS`); see
/// that crate's docs.
pub const MISBEHAVE: &str = env!("SKIFF_GUEST_MISBEHAVE");

/// `tests/programs-http`: an HTTP component whose path picks a behaviour
/// (`/ok`, `/loop`, `/oom`, `/trap`, `/stack`, `/sleep?ms=N`,
/// `/fetch?url=URL`, `/log?lines=N`, `/env?name=X`); see that crate's docs.
pub const HTTP_TEST: &str = env!("SKIFF_GUEST_HTTP_TEST");

/// Every guest, by constant name, for tests that check them all.
pub const ALL: &[(&str, &str)] = &[
    ("HELLO", HELLO),
    ("ECHO", ECHO),
    ("FANOUT", FANOUT),
    ("PI", PI),
    ("MISBEHAVE", MISBEHAVE),
    ("HTTP_TEST", HTTP_TEST),
];

/// Reads the component at `path` (one of this crate's constants).
///
/// # Panics
///
/// If the file cannot be read; the message names the path.
pub fn bytes(path: &str) -> Vec<u8> {
    std::fs::read(path)
        .unwrap_or_else(|e| panic!("cannot read guest component {path}: {e} (was it built?)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The preamble of a component (as opposed to a core module): magic,
    /// then version 0x0d and layer 1.
    const COMPONENT_PREAMBLE: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];

    #[test]
    fn every_guest_is_a_component() {
        for (name, path) in ALL {
            let bytes = bytes(path);
            assert!(
                bytes.starts_with(&COMPONENT_PREAMBLE),
                "{name} ({path}) is not a component: starts with {:02x?}",
                &bytes[..bytes.len().min(8)]
            );
        }
    }
}
