//! Metrics every command exports about itself: build information and its own process.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::{Registry, Unit};

use crate::procstat::ProcStats;

pub(crate) fn register_process_metrics(registry: &mut Registry) {
    let info = Family::<Vec<(&'static str, &'static str)>, Gauge>::default();
    info.get_or_create(&vec![("version", env!("CARGO_PKG_VERSION"))]).set(1);
    registry.register("podkit_build_info", "podkit's version; always 1", info);
    registry.register_collector(Box::new(SelfCollector));
}

/// podkit's own process, read from /proc at scrape time.
#[derive(Debug)]
struct SelfCollector;

impl Collector for SelfCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        match crate::procstat::stats(std::process::id() as i32) {
            Some(s) => encode_proc_stats(encoder, "podkit_process", "podkit's own process", &s),
            None => Ok(()),
        }
    }
}

/// Writes a [`ProcStats`] as the usual process metrics under `prefix`
/// (`<prefix>_cpu_seconds_total`, `<prefix>_resident_memory_bytes`, …).
pub fn encode_proc_stats(
    mut encoder: DescriptorEncoder,
    prefix: &str,
    what: &str,
    s: &ProcStats,
) -> Result<(), std::fmt::Error> {
    let name = |thing: &str| format!("{prefix}_{thing}");
    let counter = ConstCounter::new(s.cpu_seconds);
    counter.encode(encoder.encode_descriptor(
        &name("cpu"),
        &format!("User and system CPU time of {what}"),
        Some(&Unit::Seconds),
        MetricType::Counter,
    )?)?;
    let gauges: [(&str, String, Option<Unit>, f64); 5] = [
        ("resident_memory", format!("Resident memory of {what}"), Some(Unit::Bytes), s.resident_bytes as f64),
        ("virtual_memory", format!("Virtual memory of {what}"), Some(Unit::Bytes), s.virtual_bytes as f64),
        ("threads", format!("Threads of {what}"), None, s.threads as f64),
        ("open_fds", format!("Open file descriptors of {what}"), None, s.open_fds as f64),
        (
            "start_time",
            format!("Start time of {what}, in seconds since the Unix epoch"),
            Some(Unit::Seconds),
            s.start_time_seconds,
        ),
    ];
    for (thing, help, unit, value) in gauges {
        ConstGauge::new(value).encode(encoder.encode_descriptor(
            &name(thing),
            &help,
            unit.as_ref(),
            MetricType::Gauge,
        )?)?;
    }
    Ok(())
}

// === exposition formats ===

/// The content type of the OpenMetrics text format.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of Prometheus' classic text format.
pub const TEXT_0_0_4: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether a scraper's `Accept` header asks for OpenMetrics, as Prometheus' own Go client
/// decides it: OpenMetrics when it is offered, the classic text format otherwise (curl, older
/// scrapers, `promtool check metrics`).
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| {
        a.split(',').any(|part| {
            let mut params = part.split(';').map(str::trim);
            let is_om = params.next().is_some_and(|t| t.eq_ignore_ascii_case("application/openmetrics-text"));
            // `q=0` means "not this one".
            is_om && !params.any(|p| p.strip_prefix("q=").is_some_and(|q| q.trim().parse::<f32>() == Ok(0.0)))
        })
    })
}

/// Rewrites an OpenMetrics exposition as the classic text format 0.0.4: counters' and infos'
/// `HELP`/`TYPE` name the samples' full names (`_total`, `_info`), `UNIT` lines, `_created`
/// samples, exemplars and `# EOF` go, and types the classic format lacks become `untyped`.
pub fn to_text_format(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // HELP precedes TYPE in an OpenMetrics family; it is held until the type says what name
    // the classic format gives the family.
    let mut help: Option<(&str, &str)> = None;
    let mut family: Option<(&str, &str)> = None; // (name, type)
    for line in openmetrics.lines() {
        if line == "# EOF" {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            help = Some((name, text));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            family = Some((name, kind));
            let (full, classic) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "info" => (format!("{name}_info"), "gauge"),
                "gauge" | "histogram" | "summary" => (name.to_string(), kind),
                _ => (name.to_string(), "untyped"),
            };
            if let Some((hname, text)) = help.take()
                && hname == name
            {
                // The classic format escapes only backslash and newline in HELP.
                out.push_str(&format!("# HELP {full} {}\n", text.replace("\\\"", "\"")));
            }
            out.push_str(&format!("# TYPE {full} {classic}\n"));
            continue;
        }
        if line.starts_with("# UNIT ") || line.starts_with('#') {
            continue;
        }
        if let Some((name, "counter")) = family
            && line.strip_prefix(name).is_some_and(|r| r.starts_with("_created"))
        {
            continue;
        }
        // A sample, without its exemplar (` # {…} value`), which the classic format lacks.
        let sample = match exemplar_start(line) {
            Some(i) => &line[..i],
            None => line,
        };
        out.push_str(sample.trim_end());
        out.push('\n');
    }
    out
}

/// Where a sample line's exemplar begins: the first ` # ` outside the label set's quotes.
fn exemplar_start(line: &str) -> Option<usize> {
    let bytes = line.as_bytes();
    let (mut in_quotes, mut escaped) = (false, false);
    for i in 0..bytes.len() {
        let b = bytes[i];
        if in_quotes {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_quotes = false,
                _ => {}
            }
        } else if b == b'"' {
            in_quotes = true;
        } else if b == b' ' && bytes.get(i + 1) == Some(&b'#') && bytes.get(i + 2) == Some(&b' ') {
            return Some(i);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiates_as_the_go_client_does() {
        let prometheus = "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
        assert!(wants_openmetrics(Some(prometheus)));
        assert!(!wants_openmetrics(Some("*/*")));
        assert!(!wants_openmetrics(None));
        assert!(!wants_openmetrics(Some("text/plain;version=0.0.4")));
        assert!(!wants_openmetrics(Some("application/openmetrics-text; q=0")));
    }

    #[test]
    fn rewrites_openmetrics_as_the_classic_format() {
        let om = "# HELP podkit_x_requests Requests \\\"served\\\".\n# TYPE podkit_x_requests counter\npodkit_x_requests_total{pool=\"a # b\"} 3 # {trace=\"1\"} 1.0\npodkit_x_requests_created 17\n# HELP podkit_x_up Up.\n# TYPE podkit_x_up gauge\n# UNIT podkit_x_up seconds\npodkit_x_up 1\n# HELP podkit_build Build.\n# TYPE podkit_build info\npodkit_build_info{version=\"1\"} 1\n# EOF\n";
        let text = to_text_format(om);
        assert_eq!(
            text,
            "# HELP podkit_x_requests_total Requests \"served\".\n# TYPE podkit_x_requests_total counter\npodkit_x_requests_total{pool=\"a # b\"} 3\n# HELP podkit_x_up Up.\n# TYPE podkit_x_up gauge\npodkit_x_up 1\n# HELP podkit_build_info Build.\n# TYPE podkit_build_info gauge\npodkit_build_info{version=\"1\"} 1\n"
        );
    }
}
