#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    podkit_ambassador::fuzzing::answers(data);
});
