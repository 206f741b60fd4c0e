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
