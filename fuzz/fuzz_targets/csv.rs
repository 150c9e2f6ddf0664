//! Fuzz target `csv`: the checks are in `blast::fuzzing::csv`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| blast::fuzzing::csv(data));
