//! The Prometheus text exposition format (version 0.0.4, what the exporters serve): metric
//! families built by the sources, merged into one scrape, and written out.
//!
//! Families are kept sorted by name, as the Go client sorts them, so a scrape is deterministic
//! and diffs against an exporter's output line up.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// A metric family's type, as `# TYPE` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
    Summary,
    Untyped,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
            Kind::Summary => "summary",
            Kind::Untyped => "untyped",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "counter" => Kind::Counter,
            "gauge" => Kind::Gauge,
            "histogram" => Kind::Histogram,
            "summary" => Kind::Summary,
            "untyped" | "unknown" => Kind::Untyped,
            _ => return None,
        })
    }
}

/// Label pairs in the order they are written.
pub type Labels = Vec<(String, String)>;

/// One sample line: `NAME+suffix{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// `_bucket`, `_sum`, `_count` for histograms and summaries; empty otherwise.
    pub suffix: &'static str,
    pub labels: Labels,
    pub value: f64,
    /// Milliseconds since the epoch, when the source gives the sample's own time.
    pub timestamp_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub help: String,
    pub kind: Kind,
    pub samples: Vec<Sample>,
}

/// The families of one scrape (or of one source within it).
#[derive(Debug, Default, Clone)]
pub struct Scrape {
    families: BTreeMap<String, Family>,
    /// Labels every sample added from now on gets first (a source's configured labels).
    base: Labels,
    /// Samples that could not be added because their family exists with another type.
    pub conflicts: u64,
}

impl Scrape {
    pub fn new() -> Self {
        Scrape::default()
    }

    /// A scrape whose every sample starts with `base` (a source's own labels).
    pub fn with_base(base: Labels) -> Self {
        Scrape { base, ..Scrape::default() }
    }

    pub fn is_empty(&self) -> bool {
        self.families.is_empty()
    }

    pub fn len(&self) -> usize {
        self.families.len()
    }

    pub fn family(&self, name: &str) -> Option<&Family> {
        self.families.get(name)
    }

    pub fn families(&self) -> impl Iterator<Item = (&String, &Family)> {
        self.families.iter()
    }

    /// The number of series (sample lines).
    pub fn series(&self) -> usize {
        self.families.values().map(|f| f.samples.len()).sum()
    }

    pub fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.add(name, help, Kind::Gauge, "", labels, value);
    }

    pub fn counter(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.add(name, help, Kind::Counter, "", labels, value);
    }

    /// Adds one sample to the family `name`, creating it with `help` and `kind` if needed. A
    /// family that exists with another type keeps its own samples and the new one is counted
    /// in [`Scrape::conflicts`]: one bad series never breaks the scrape for the rest.
    pub fn add(
        &mut self,
        name: &str,
        help: &str,
        kind: Kind,
        suffix: &'static str,
        labels: &[(&str, &str)],
        value: f64,
    ) {
        let labels = labels.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect();
        self.add_sample(name, help, kind, Sample { suffix, labels, value, timestamp_ms: None });
    }

    /// Adds a sample whose labels are already owned. The base labels go first.
    pub fn add_sample(&mut self, name: &str, help: &str, kind: Kind, mut sample: Sample) {
        if !self.base.is_empty() {
            let mut labels = self.base.clone();
            labels.append(&mut sample.labels);
            sample.labels = labels;
        }
        match self.families.get_mut(name) {
            Some(f) if f.kind == kind => f.samples.push(sample),
            Some(_) => self.conflicts += 1,
            None => {
                self.families.insert(name.to_string(), Family { help: help.to_string(), kind, samples: vec![sample] });
            }
        }
    }

    /// Moves every family of `other` into this scrape. A family of the same name and type gets
    /// the other's samples appended; one of another type is refused and counted.
    pub fn merge(&mut self, other: Scrape) {
        self.conflicts += other.conflicts;
        for (name, fam) in other.families {
            match self.families.get_mut(&name) {
                Some(f) if f.kind == fam.kind => f.samples.extend(fam.samples),
                Some(_) => self.conflicts += fam.samples.len() as u64,
                None => {
                    self.families.insert(name, fam);
                }
            }
        }
    }

    /// Writes the scrape in the text format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(64 * self.series() + 128 * self.families.len());
        for (name, fam) in &self.families {
            if !fam.help.is_empty() {
                out.push_str("# HELP ");
                out.push_str(name);
                out.push(' ');
                escape_help(&mut out, &fam.help);
                out.push('\n');
            }
            out.push_str("# TYPE ");
            out.push_str(name);
            out.push(' ');
            out.push_str(fam.kind.as_str());
            out.push('\n');
            for s in &fam.samples {
                out.push_str(name);
                out.push_str(s.suffix);
                write_labels(&mut out, &s.labels);
                out.push(' ');
                write_value(&mut out, s.value);
                if let Some(ts) = s.timestamp_ms {
                    let _ = write!(out, " {ts}");
                }
                out.push('\n');
            }
        }
        out
    }
}

fn escape_help(out: &mut String, help: &str) {
    for c in help.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn write_labels(out: &mut String, labels: &[(String, String)]) {
    if labels.is_empty() {
        return;
    }
    out.push('{');
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(k);
        out.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
}

/// Writes a value as Prometheus reads it: integers without a fraction, `+Inf`, `-Inf`, `NaN`.
pub fn write_value(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        let _ = write!(out, "{}", v as i64);
    } else {
        let _ = write!(out, "{v}");
    }
}

/// Is `name` a valid metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`)?
pub fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Is `name` a valid label name (`[a-zA-Z_][a-zA-Z0-9_]*`, not starting with `__`)?
pub fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__")
}

/// Turns any text into a valid metric or label name: every other character becomes `_`, and a
/// leading digit gets a `_` before it.
pub fn sanitize_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 1);
    for (i, c) in name.chars().enumerate() {
        if i == 0 && c.is_ascii_digit() {
            out.push('_');
        }
        out.push(if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_families_sorted_with_escapes() {
        let mut s = Scrape::new();
        s.gauge("b_gauge", "A \\ help\nline", &[("path", "C:\\x \"q\"\n")], 1.5);
        s.counter("a_total", "Counts", &[], 3.0);
        s.add("a_total", "ignored", Kind::Gauge, "", &[], 1.0);
        assert_eq!(s.conflicts, 1);
        assert_eq!(
            s.render(),
            "# HELP a_total Counts\n# TYPE a_total counter\na_total 3\n\
             # HELP b_gauge A \\\\ help\\nline\n# TYPE b_gauge gauge\nb_gauge{path=\"C:\\\\x \\\"q\\\"\\n\"} 1.5\n"
        );
    }

    #[test]
    fn values_as_prometheus_reads_them() {
        let mut out = String::new();
        for v in [0.0, -2.0, 1e20, 0.25, f64::INFINITY, f64::NEG_INFINITY, f64::NAN] {
            write_value(&mut out, v);
            out.push(' ');
        }
        assert_eq!(out, "0 -2 100000000000000000000 0.25 +Inf -Inf NaN ");
    }

    #[test]
    fn base_labels_come_first_and_merge_appends() {
        let mut a = Scrape::with_base(vec![("instance".into(), "a".into())]);
        a.gauge("up", "Up", &[], 1.0);
        let mut b = Scrape::with_base(vec![("instance".into(), "b".into())]);
        b.gauge("up", "Up", &[("x", "y")], 0.0);
        a.merge(b);
        assert_eq!(a.render(), "# HELP up Up\n# TYPE up gauge\nup{instance=\"a\"} 1\nup{instance=\"b\",x=\"y\"} 0\n");
    }

    #[test]
    fn names() {
        assert!(valid_metric_name("a:b_c1"));
        assert!(!valid_metric_name("1a"));
        assert!(!valid_label_name("__name"));
        assert_eq!(sanitize_name("1.a-b"), "_1_a_b");
    }
}
