#![no_main]

// The first byte says how many of the next bytes are read sizes; the rest is the input.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else { return };
    let (cuts, input) = rest.split_at((n as usize % 8).min(rest.len()));
    podkit_ambassador::fuzzing::memcache_requests(input, cuts);
});
