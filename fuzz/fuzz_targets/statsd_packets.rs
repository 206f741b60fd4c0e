#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    podkit_adapter::fuzzing::statsd_packet(data);
});
