//! Arbitrary bytes as an (uncompressed) layer tar, applied in both whiteout
//! forms onto a fresh root in a fresh sandbox with sentinels beside it. Any
//! panic, and any change outside the root (the check the test suite's
//! `apply_fuzz` uses too), is a crash; libFuzzer's `-timeout` catches hangs.

#![no_main]

#[path = "../../tests/sandbox/mod.rs"]
mod sandbox;

use crated_plugin_diff::apply::Whiteouts;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for whiteouts in [Whiteouts::Remove, Whiteouts::Overlay] {
        let sandbox = sandbox::Sandbox::new();
        if let Err(escape) = sandbox::apply_and_check(&sandbox, data, whiteouts) {
            panic!("{escape}");
        }
    }
});
