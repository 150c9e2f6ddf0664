//! Fuzz target `dsn`: the checks are in `blast::fuzzing::dsn`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| blast::fuzzing::dsn(data));
