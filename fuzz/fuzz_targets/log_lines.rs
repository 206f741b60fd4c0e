#![no_main]

// The file it reads lives in a directory of its own per process (tmpfs when /dev/shm exists).
static DIR: std::sync::LazyLock<tempfile::TempDir> = std::sync::LazyLock::new(|| {
    let base = if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" };
    tempfile::Builder::new().prefix("podkit-fuzz-logs").tempdir_in(base).expect("temp dir")
});

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    podkit_logs::fuzzing::reading(DIR.path(), data);
});
