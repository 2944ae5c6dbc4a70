//! cargo-fuzz entry of the `api_json` target (its code and invariants: crates/fuzzing).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| caas_fuzzing::api_json(data));
