//! Fuzz target `receiver`: the checks are in `blast::fuzzing::receiver`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| blast::fuzzing::receiver(data));
