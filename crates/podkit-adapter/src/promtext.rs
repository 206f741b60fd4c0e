//! Reading another process's `/metrics` (the 0.0.4 text format or OpenMetrics) so it can be
//! re-exported with added labels.
//!
//! OpenMetrics is turned into what Prometheus itself stores: a counter family `x` whose sample
//! is `x_total` becomes the family `x_total`, `_created` samples and exemplars are dropped, and
//! types the 0.0.4 format lacks (info, stateset, gaugehistogram) become gauges or histograms.

use std::collections::HashMap;

use crate::expo::{Kind, Labels, Sample, Scrape};

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ParseError {
    pub line: usize,
    pub reason: String,
}

/// Parses an exposition body into `into`. Labels in `add` are put on every sample; a sample
/// that already has one of them keeps its own value as `exported_<name>`, as Prometheus does
/// for a target's labels without `honor_labels`.
pub fn parse_into(body: &str, add: &Labels, into: &mut Scrape) -> Result<(), ParseError> {
    let mut types: HashMap<String, Kind> = HashMap::new();
    let mut helps: HashMap<String, String> = HashMap::new();
    for (i, line) in body.lines().enumerate() {
        let err = |reason: String| ParseError { line: i + 1, reason };
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let rest = rest.trim_start();
            if rest == "EOF" {
                break;
            }
            if let Some(t) = rest.strip_prefix("TYPE ") {
                let (name, kind) = t.trim().split_once(' ').ok_or_else(|| err(format!("bad TYPE line: {line}")))?;
                let kind = match kind.trim() {
                    "info" | "stateset" => Kind::Gauge,
                    "gaugehistogram" => Kind::Histogram,
                    k => Kind::parse(k).ok_or_else(|| err(format!("unknown type {k:?}")))?,
                };
                types.insert(name.to_string(), kind);
            } else if let Some(h) = rest.strip_prefix("HELP ") {
                let (name, text) = h.split_once(' ').unwrap_or((h, ""));
                helps.insert(name.to_string(), unescape_help(text));
            }
            continue;
        }
        let (name, labels, value) = parse_sample(line).map_err(err)?;
        let (family, kind, suffix) = family_of(&name, &types);
        if suffix == "_created" {
            continue;
        }
        // An OpenMetrics counter `x` is stored by Prometheus as `x_total`, an info `x` as
        // `x_info`: keep those names.
        let keep_name = (kind == Kind::Counter && suffix == "_total") || (kind == Kind::Gauge && suffix == "_info");
        let (family, suffix) = if keep_name { (name.as_str(), "") } else { (family, suffix) };
        let help =
            helps.get(family).or_else(|| helps.get(name.trim_end_matches("_total"))).cloned().unwrap_or_default();
        into.add_sample(
            family,
            &help,
            kind,
            Sample { suffix, labels: relabel(labels, add), value, timestamp_ms: None },
        );
    }
    Ok(())
}

const SUFFIXES: [&str; 6] = ["_bucket", "_count", "_sum", "_total", "_created", "_info"];

/// The family a sample belongs to, its type and the sample's suffix.
fn family_of<'a>(name: &'a str, types: &HashMap<String, Kind>) -> (&'a str, Kind, &'static str) {
    if let Some(k) = types.get(name) {
        return (name, *k, "");
    }
    for suffix in SUFFIXES {
        if let Some(base) = name.strip_suffix(suffix)
            && let Some(k) = types.get(base)
        {
            return (base, *k, suffix);
        }
    }
    (name, Kind::Untyped, "")
}

fn relabel(mut labels: Labels, add: &Labels) -> Labels {
    for (k, _) in labels.iter_mut() {
        if add.iter().any(|(a, _)| a == k) {
            *k = format!("exported_{k}");
        }
    }
    let mut out = add.clone();
    out.append(&mut labels);
    out
}

/// `name{a="1",b="2"} value [timestamp] [# exemplar]`
fn parse_sample(line: &str) -> Result<(String, Labels, f64), String> {
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace()).ok_or_else(|| format!("no value: {line}"))?;
    let name = &line[..name_end];
    if !crate::expo::valid_metric_name(name) {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = Labels::new();
    if let Some(r) = rest.strip_prefix('{') {
        let mut r = r;
        loop {
            r = r.trim_start_matches([' ', ',']);
            if let Some(after) = r.strip_prefix('}') {
                r = after;
                break;
            }
            let eq = r.find('=').ok_or_else(|| format!("bad labels: {line}"))?;
            let key = r[..eq].trim();
            if !crate::expo::valid_label_name(key) && key != "__name__" {
                return Err(format!("bad label name {key:?}"));
            }
            let after = r[eq + 1..].trim_start();
            let after = after.strip_prefix('"').ok_or_else(|| format!("label {key}: value not quoted"))?;
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next() {
                    None => return Err(format!("label {key}: unterminated value")),
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c)) => value.push(c),
                        None => return Err(format!("label {key}: unterminated value")),
                    },
                    Some((_, c)) => value.push(c),
                }
            };
            labels.push((key.to_string(), value));
            r = &after[end + 1..];
        }
        rest = r;
    }
    let rest = rest.split(" # ").next().unwrap_or(rest);
    let value = rest.split_whitespace().next().ok_or_else(|| format!("no value: {line}"))?;
    let value = parse_value(value).ok_or_else(|| format!("bad value {value:?}"))?;
    Ok((name.to_string(), labels, value))
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" | "inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        "NaN" | "nan" => Some(f64::NAN),
        s => s.parse().ok(),
    }
}

fn unescape_help(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some(c) => out.push(c),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str, add: &[(&str, &str)]) -> String {
        let add = add.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut s = Scrape::new();
        parse_into(body, &add, &mut s).unwrap();
        s.render()
    }

    #[test]
    fn text_format_gets_labels_and_keeps_its_own_as_exported() {
        let body = "# HELP http_requests_total Requests.\n# TYPE http_requests_total counter\n\
                    http_requests_total{code=\"200\",container=\"x\"} 12 1700000000000\n";
        assert_eq!(
            parse(body, &[("container", "web")]),
            "# HELP http_requests_total Requests.\n# TYPE http_requests_total counter\n\
             http_requests_total{container=\"web\",code=\"200\",exported_container=\"x\"} 12\n"
        );
    }

    #[test]
    fn openmetrics_counters_become_total_and_created_is_dropped() {
        let body = "# HELP podkit_x Things.\n# TYPE podkit_x counter\npodkit_x_total 3\npodkit_x_created 1.7e9\n\
                    # TYPE lat histogram\nlat_bucket{le=\"0.1\"} 1\nlat_bucket{le=\"+Inf\"} 2\nlat_sum 0.3\nlat_count 2\n\
                    # TYPE build info\nbuild_info{version=\"1\"} 1\n# EOF\n";
        let out = parse(body, &[]);
        assert!(out.contains("# TYPE podkit_x_total counter\npodkit_x_total 3\n"), "{out}");
        assert!(out.contains("# HELP podkit_x_total Things.\n"), "{out}");
        assert!(!out.contains("created"), "{out}");
        assert!(
            out.contains(
                "# TYPE lat histogram\nlat_bucket{le=\"0.1\"} 1\nlat_bucket{le=\"+Inf\"} 2\nlat_sum 0.3\nlat_count 2\n"
            ),
            "{out}"
        );
        assert!(out.contains("# TYPE build_info gauge\nbuild_info{version=\"1\"} 1\n"), "{out}");
    }

    #[test]
    fn escapes_and_exemplars() {
        let body = "a{p=\"x\\\"y\\\\z\\n\"} 1 # {trace_id=\"abc\"} 1.0\nb NaN\n";
        assert_eq!(parse(body, &[]), "# TYPE a untyped\na{p=\"x\\\"y\\\\z\\n\"} 1\n# TYPE b untyped\nb NaN\n");
    }

    #[test]
    fn malformed_lines_are_errors_with_their_number() {
        let mut s = Scrape::new();
        let e = parse_into("ok 1\nbad{x=1} 2\n", &Labels::new(), &mut s).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(parse_into("x{a=\"1} 2\n", &Labels::new(), &mut s).is_err());
        assert!(parse_into("x one\n", &Labels::new(), &mut s).is_err());
    }
}

#[cfg(test)]
mod random_input {
    use super::*;

    /// Deterministic random bodies built from exposition fragments: parsing never panics, and
    /// whatever was accepted renders to a body that parses back to the same series.
    #[test]
    fn whatever_parses_renders_back_to_itself() {
        const PIECES: [&str; 22] = [
            "a",
            "b_total",
            "c_bucket",
            "{",
            "}",
            "=",
            "\"",
            "\\",
            ",",
            " ",
            "\n",
            "# TYPE a counter\n",
            "# TYPE c histogram\n",
            "# HELP a x\\ny\n",
            "le=\"+Inf\"",
            "1",
            "-2.5e3",
            "NaN",
            "+Inf",
            "é",
            "# EOF\n",
            "#",
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20_000 {
            let n = (next() % 30) as usize;
            let body: String = (0..n).map(|_| PIECES[(next() % PIECES.len() as u64) as usize]).collect();
            let mut s = Scrape::new();
            if parse_into(&body, &vec![("pod".into(), "p".into())], &mut s).is_err() {
                continue;
            }
            let rendered = s.render();
            let mut again = Scrape::new();
            parse_into(&rendered, &Labels::new(), &mut again)
                .unwrap_or_else(|e| panic!("{e}: {body:?} -> {rendered:?}"));
            assert_eq!(again.series(), s.series(), "{body:?} -> {rendered:?}");
        }
    }
}
