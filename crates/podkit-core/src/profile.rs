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
        if !report.data.is_empty() {
            report.flamegraph(&mut body).map_err(|e| e.to_string())?;
        }
        // With no samples (a process that used no CPU: podkit mostly waits) the flame graph
        // writer writes nothing, and an empty body is no image; say what happened instead.
        if body.is_empty() {
            body = no_samples_svg(duration);
        }
    } else {
        let profile = report.pprof().map_err(|e| e.to_string())?;
        profile.encode(&mut body).map_err(|e| e.to_string())?;
    }
    Ok(body)
}

/// A small SVG saying that a profile of `duration` took no samples.
fn no_samples_svg(duration: Duration) -> Vec<u8> {
    let shown = crate::Duration(Duration::from_millis(duration.as_millis() as u64));
    format!(
        concat!(
            r#"<?xml version="1.0" standalone="no"?>"#,
            "\n",
            r#"<svg version="1.1" width="600" height="60" viewBox="0 0 600 60" xmlns="http://www.w3.org/2000/svg">"#,
            r#"<text x="300" y="35" font-family="Verdana, sans-serif" font-size="14" text-anchor="middle">"#,
            "No samples were taken in {}: the process used no CPU.",
            "</text></svg>\n"
        ),
        shown
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_process_gets_an_svg_that_says_no_samples_were_taken() {
        // nextest runs each test in a process of its own: nothing here uses the CPU while the
        // profiler samples, so it takes no samples.
        // (Were a sample taken after all, the answer is a flame graph: an SVG too.)
        let body = String::from_utf8(cpu(Duration::from_millis(300), true).unwrap()).unwrap();
        assert!(body.starts_with("<?xml") && body.contains("<svg") && body.trim_end().ends_with("</svg>"), "{body:?}");
    }

    #[test]
    fn the_no_samples_svg_is_well_formed_and_says_how_long_was_sampled() {
        let body = String::from_utf8(no_samples_svg(Duration::from_micros(2_000_400))).unwrap();
        assert!(body.starts_with("<?xml") && body.trim_end().ends_with("</svg>"), "{body:?}");
        assert!(body.contains("No samples were taken in 2s"), "{body:?}");
        // Every element that opens closes.
        assert_eq!(body.matches("<svg").count(), body.matches("</svg>").count());
        assert_eq!(body.matches("<text").count(), body.matches("</text>").count());
    }
}
