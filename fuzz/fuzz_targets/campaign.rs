//! Fuzz target `campaign`: the checks are in `blast::fuzzing::campaign`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| blast::fuzzing::campaign(data));
