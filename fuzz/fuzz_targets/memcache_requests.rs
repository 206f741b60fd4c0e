#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (input, cuts) = podkit_ambassador::fuzzing::split_input(data);
    podkit_ambassador::fuzzing::memcache_requests(input, cuts);
});
