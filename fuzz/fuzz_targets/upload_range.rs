//! cargo-fuzz entry of the `upload_range` target (its code and invariants: crates/fuzzing).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| caas_fuzzing::upload_range(data));
