//! Bad input gets a typed error naming the component and the reason.

mod common;

use common::runtime;
use skiff_runtime::Error;

#[test]
fn garbage_empty_and_truncated_bytes_are_rejected() {
    let runtime = runtime();
    let err = runtime
        .load("junk.wasm", b"#!/bin/sh\necho hi\n")
        .unwrap_err();
    assert!(
        matches!(&err, Error::NotWasm { name, .. } if name == "junk.wasm"),
        "{err:?}"
    );
    assert!(err.to_string().contains("magic number"), "{err}");

    let err = runtime.load("empty.wasm", b"").unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");

    let hello = std::fs::read(skiff_guests::HELLO).unwrap();
    let err = runtime
        .load("half.wasm", &hello[..hello.len() / 2])
        .unwrap_err();
    assert!(matches!(err, Error::Compile { .. }), "{err:?}");
    assert!(
        err.to_string().starts_with("half.wasm: invalid component"),
        "{err}"
    );

    let err = runtime.load("v2.wasm", b"\0asm\x02\0\0\0").unwrap_err();
    assert!(matches!(err, Error::NotWasm { .. }), "{err:?}");
}

#[test]
fn a_core_module_is_not_a_component() {
    let runtime = runtime();
    let module = wat::parse_str("(module (func (export \"_start\")))").unwrap();
    let err = runtime.load("core.wasm", &module).unwrap_err();
    assert!(matches!(err, Error::CoreModule { .. }), "{err:?}");
    assert!(err.to_string().contains("wasm32-wasip2"), "{err}");
}

#[test]
fn a_component_without_an_entry_point_is_rejected() {
    let runtime = runtime();
    let empty = wat::parse_str("(component)").unwrap();
    let err = runtime.load("nothing.wasm", &empty).unwrap_err();
    assert!(
        matches!(&err, Error::NoEntryPoint { exports, .. } if exports.is_empty()),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("neither wasi:http/incoming-handler nor wasi:cli/run"),
        "{err}"
    );

    let other = wat::parse_str(
        r#"(component
             (core module $m (func (export "f")))
             (core instance $i (instantiate $m))
             (func (export "something-else") (canon lift (core func $i "f"))))"#,
    )
    .unwrap();
    let err = runtime.load("other.wasm", &other).unwrap_err();
    assert!(
        err.to_string().contains("it exports: something-else"),
        "{err}"
    );
}

#[test]
fn an_import_the_sandbox_lacks_is_a_link_error() {
    let runtime = runtime();
    let wasm = wat::parse_str(
        r#"(component
             (import "acme:secret/door@1.0.0" (instance (export "open" (func))))
             (core module $m (func (export "run") (result i32) i32.const 0))
             (core instance $i (instantiate $m))
             (func $run (result (result)) (canon lift (core func $i "run")))
             (instance $inst (export "run" (func $run)))
             (export "wasi:cli/run@0.2.0" (instance $inst)))"#,
    )
    .unwrap();
    let err = runtime.load("needs-door.wasm", &wasm).unwrap_err();
    assert!(matches!(err, Error::Link { .. }), "{err:?}");
    assert!(err.to_string().contains("acme:secret/door"), "{err}");
}

#[test]
fn the_same_bytes_load_once() {
    let runtime = runtime();
    let (a, origin) = runtime.load_file(skiff_guests::HELLO).unwrap();
    assert_eq!(origin, skiff_runtime::Origin::Compiled);
    let (b, origin) = runtime.load_file(skiff_guests::HELLO).unwrap();
    assert_eq!(origin, skiff_runtime::Origin::Memory);
    assert_eq!(a.digest(), b.digest());
    assert_eq!(
        a.digest(),
        skiff_runtime::digest(&std::fs::read(skiff_guests::HELLO).unwrap())
    );
}
