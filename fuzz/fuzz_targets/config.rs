//! cargo-fuzz entry of the `config` target (its code and invariants: crates/fuzzing).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| caas_fuzzing::config(data));
