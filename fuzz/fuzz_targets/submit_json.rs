//! cargo-fuzz entry of the `submit_json` target (its code and invariants: crates/fuzzing).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| caas_fuzzing::submit_json(data));
