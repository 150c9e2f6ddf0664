//! Fuzz target `reply`: the checks are in `blast::fuzzing::reply`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| blast::fuzzing::reply(data));
