//! CPU profiles for `GET /debug/pprof/profile`.

use std::time::Duration;

use pprof::protos::Message;

/// Samples the whole process for `duration` and returns a pprof protobuf, or an SVG flame graph
/// when `svg` is set. Blocks the calling thread for `duration`.
pub(crate) fn cpu(duration: Duration, svg: bool) -> Result<Vec<u8>, String> {
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(99)
        // Unwinding through these while they hold locks can deadlock the sampled thread.
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()
        .map_err(|e| e.to_string())?;
    std::thread::sleep(duration);
    let report = guard.report().build().map_err(|e| e.to_string())?;
    let mut body = Vec::new();
    if svg {
        report.flamegraph(&mut body).map_err(|e| e.to_string())?;
    } else {
        let profile = report.pprof().map_err(|e| e.to_string())?;
        profile.encode(&mut body).map_err(|e| e.to_string())?;
    }
    Ok(body)
}
