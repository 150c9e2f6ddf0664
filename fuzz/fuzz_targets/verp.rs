//! Fuzz target `verp`: the checks are in `blast::fuzzing::verp`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| blast::fuzzing::verp(data));
