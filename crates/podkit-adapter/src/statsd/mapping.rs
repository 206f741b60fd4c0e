//! statsd_exporter's mapping file, read as it is: `defaults` and `mappings`, each mapping a
//! glob (`*` is one whole dot-separated segment) or an unanchored regex, with a name and labels
//! built from what it captured (`$1`, `${1}`), `action: drop`, the observer type and its
//! buckets or quantiles, `ttl`, `scale`, `help` and `honor_labels`.
//!
//! As in statsd_exporter, every glob is tried before any regex; among globs the first in the
//! file wins (or, with `glob_disable_ordering`, the most specific), among regexes the first.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::line::Class;

// === the file ===

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MappingFile {
    #[serde(default)]
    defaults: Defaults,
    #[serde(default)]
    mappings: Vec<MappingConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Defaults {
    observer_type: Option<String>,
    match_type: Option<String>,
    #[serde(default)]
    glob_disable_ordering: bool,
    ttl: Option<podkit_core::Duration>,
    summary_options: Option<SummaryOptions>,
    histogram_options: Option<HistogramOptions>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MappingConfig {
    #[serde(rename = "match")]
    pattern: String,
    match_type: Option<String>,
    match_metric_type: Option<String>,
    name: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    honor_labels: bool,
    action: Option<String>,
    observer_type: Option<String>,
    help: Option<String>,
    ttl: Option<podkit_core::Duration>,
    scale: Option<f64>,
    summary_options: Option<SummaryOptions>,
    histogram_options: Option<HistogramOptions>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SummaryOptions {
    #[serde(default)]
    quantiles: Vec<Quantile>,
    max_age: Option<podkit_core::Duration>,
    age_buckets: Option<u32>,
    /// client_golang's buffer before a flush into its stream; podkit's sketch has none.
    buf_cap: Option<u32>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
struct Quantile {
    quantile: f64,
    error: f64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HistogramOptions {
    #[serde(default)]
    buckets: Vec<f64>,
    /// Native histograms only travel in the protobuf format; podkit serves text.
    native_histogram_bucket_factor: Option<f64>,
    native_histogram_max_buckets: Option<u32>,
}

// === compiled ===

/// How an observer's series are kept.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Observer {
    Histogram { buckets: Arc<[f64]> },
    Summary { quantiles: Arc<[f64]>, max_age: Duration, age_buckets: u32 },
}

/// The default buckets (client_golang's `DefBuckets`).
const DEFAULT_BUCKETS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// The default summary: quantiles 0.5, 0.9, 0.99 over the last 10 minutes, in 5 age buckets.
const DEFAULT_QUANTILES: [f64; 3] = [0.5, 0.9, 0.99];

impl Observer {
    pub(crate) fn default_summary() -> Observer {
        Observer::Summary { quantiles: DEFAULT_QUANTILES.into(), max_age: Duration::from_secs(600), age_buckets: 5 }
    }
}

/// What a matched mapping does.
#[derive(Debug)]
pub(crate) struct Mapping {
    pub(crate) drop: bool,
    name: String,
    labels: Vec<(String, String)>,
    pub(crate) honor_labels: bool,
    pub(crate) help: Option<String>,
    pub(crate) ttl: Option<Duration>,
    pub(crate) scale: Option<f64>,
    pub(crate) observer: Observer,
    class: Option<Class>,
}

#[derive(Debug)]
enum Matcher {
    Glob(Vec<Option<String>>),
    Regex(regex::Regex),
}

/// The mapper: a file's mappings, and what an unmapped metric gets.
#[derive(Debug)]
pub(crate) struct Mapper {
    globs: Vec<(Vec<Option<String>>, Mapping)>,
    regexes: Vec<(regex::Regex, Mapping)>,
    most_specific: bool,
    /// For metrics no mapping matches: the default TTL and observer.
    pub(crate) default_ttl: Option<Duration>,
    pub(crate) default_observer: Observer,
    /// Keys read and ignored, for a warning at start.
    pub(crate) ignored: Vec<String>,
}

/// A matched mapping and what it made of the name.
#[derive(Debug)]
pub(crate) struct Matched<'m> {
    pub(crate) mapping: &'m Mapping,
    pub(crate) name: String,
    pub(crate) labels: Vec<(String, String)>,
}

impl Default for Mapper {
    fn default() -> Self {
        Mapper {
            globs: Vec::new(),
            regexes: Vec::new(),
            most_specific: false,
            default_ttl: None,
            default_observer: Observer::default_summary(),
            ignored: Vec::new(),
        }
    }
}

impl Mapper {
    pub(crate) fn load(path: &Path) -> Result<Mapper, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Mapper::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub(crate) fn parse(text: &str) -> Result<Mapper, String> {
        let file: MappingFile = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
        let d = &file.defaults;
        let mut ignored = Vec::new();
        let default_match = match_type(d.match_type.as_deref()).map_err(|e| format!("defaults: {e}"))?;
        let default_kind = observer_kind(d.observer_type.as_deref()).map_err(|e| format!("defaults: {e}"))?;
        let default_observer = observer(default_kind, &d.summary_options, &d.histogram_options, &None, &None)
            .map_err(|e| format!("defaults: {e}"))?;
        note_ignored(&d.summary_options, &d.histogram_options, "defaults", &mut ignored);
        let default_ttl = d.ttl.map(|t| t.get()).filter(|t| !t.is_zero());
        let mut mapper = Mapper {
            globs: Vec::new(),
            regexes: Vec::new(),
            most_specific: d.glob_disable_ordering,
            default_ttl,
            default_observer: default_observer.clone(),
            ignored: Vec::new(),
        };
        for (i, m) in file.mappings.iter().enumerate() {
            let at = format!("mappings[{i}] ({})", m.pattern);
            let (matcher, mapping) =
                compile(m, d, default_match, default_kind, default_ttl).map_err(|e| format!("{at}: {e}"))?;
            note_ignored(&m.summary_options, &m.histogram_options, &at, &mut ignored);
            match matcher {
                Matcher::Glob(g) => mapper.globs.push((g, mapping)),
                Matcher::Regex(r) => mapper.regexes.push((r, mapping)),
            }
        }
        mapper.ignored = ignored;
        Ok(mapper)
    }

    /// The mapping for `name` of `class`, if one matches.
    pub(crate) fn find(&self, name: &str, class: Class) -> Option<Matched<'_>> {
        let segments: Vec<&str> = name.split('.').collect();
        let mut best: Option<(&Vec<Option<String>>, &Mapping)> = None;
        for (glob, mapping) in &self.globs {
            if mapping.class.is_some_and(|c| c != class) || !glob_matches(glob, &segments) {
                continue;
            }
            match best {
                None => best = Some((glob, mapping)),
                // The one with a literal where the other has `*`, first from the left.
                Some((b, _)) if self.most_specific && more_specific(glob, b) => best = Some((glob, mapping)),
                Some(_) => {}
            }
            if !self.most_specific {
                break;
            }
        }
        if let Some((glob, mapping)) = best {
            let captures: Vec<&str> =
                glob.iter().zip(&segments).filter(|(g, _)| g.is_none()).map(|(_, s)| *s).collect();
            let expand = |t: &str| expand_glob(t, &captures);
            return Some(Matched {
                mapping,
                name: expand(&mapping.name),
                labels: mapping.labels.iter().map(|(k, v)| (k.clone(), expand(v))).collect(),
            });
        }
        for (re, mapping) in &self.regexes {
            if mapping.class.is_some_and(|c| c != class) {
                continue;
            }
            if let Some(caps) = re.captures(name) {
                let expand = |t: &str| {
                    let mut out = String::new();
                    caps.expand(t, &mut out);
                    out
                };
                return Some(Matched {
                    mapping,
                    name: expand(&mapping.name),
                    labels: mapping.labels.iter().map(|(k, v)| (k.clone(), expand(v))).collect(),
                });
            }
        }
        None
    }

    pub(crate) fn len(&self) -> usize {
        self.globs.len() + self.regexes.len()
    }
}

fn note_ignored(s: &Option<SummaryOptions>, h: &Option<HistogramOptions>, at: &str, out: &mut Vec<String>) {
    if s.as_ref().is_some_and(|s| s.buf_cap.is_some()) {
        out.push(format!("{at}: summary_options.buf_cap has no effect (podkit's quantile sketch has no buffer)"));
    }
    if h.as_ref()
        .is_some_and(|h| h.native_histogram_bucket_factor.is_some() || h.native_histogram_max_buckets.is_some())
    {
        out.push(format!(
            "{at}: native histograms are not served (they need the protobuf format); the classic buckets are"
        ));
    }
}

fn match_type(s: Option<&str>) -> Result<bool, String> {
    match s {
        None | Some("") | Some("glob") => Ok(false),
        Some("regex") => Ok(true),
        Some(o) => Err(format!("match_type {o:?}: expected glob or regex")),
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum ObserverKind {
    Histogram,
    Summary,
}

fn observer_kind(s: Option<&str>) -> Result<Option<ObserverKind>, String> {
    match s {
        None | Some("") => Ok(None),
        Some("histogram") => Ok(Some(ObserverKind::Histogram)),
        Some("summary") => Ok(Some(ObserverKind::Summary)),
        Some(o) => Err(format!("observer_type {o:?}: expected histogram or summary")),
    }
}

/// An observer of `kind` (summary when unset) with the mapping's options, filled from the
/// defaults' where the mapping leaves them out.
fn observer(
    kind: Option<ObserverKind>,
    summary: &Option<SummaryOptions>,
    histogram: &Option<HistogramOptions>,
    default_summary: &Option<SummaryOptions>,
    default_histogram: &Option<HistogramOptions>,
) -> Result<Observer, String> {
    match kind.unwrap_or(ObserverKind::Summary) {
        ObserverKind::Histogram => {
            if summary.is_some() {
                return Err("summary_options on a histogram".into());
            }
            let buckets = histogram
                .as_ref()
                .map(|h| h.buckets.clone())
                .filter(|b| !b.is_empty())
                .or_else(|| default_histogram.as_ref().map(|h| h.buckets.clone()).filter(|b| !b.is_empty()))
                .unwrap_or_else(|| DEFAULT_BUCKETS.to_vec());
            if buckets.windows(2).any(|w| w[0] >= w[1]) || buckets.iter().any(|b| b.is_nan()) {
                return Err(format!("histogram buckets {buckets:?} must increase"));
            }
            Ok(Observer::Histogram { buckets: buckets.into() })
        }
        ObserverKind::Summary => {
            if histogram.is_some() {
                return Err("histogram_options on a summary".into());
            }
            let pick = |f: fn(&SummaryOptions) -> Option<u64>| {
                summary.as_ref().and_then(f).or_else(|| default_summary.as_ref().and_then(f))
            };
            let quantiles: Vec<f64> = summary
                .as_ref()
                .map(|s| s.quantiles.iter().map(|q| q.quantile).collect::<Vec<_>>())
                .filter(|q| !q.is_empty())
                .or_else(|| {
                    default_summary.as_ref().map(|s| s.quantiles.iter().map(|q| q.quantile).collect::<Vec<_>>())
                })
                .filter(|q| !q.is_empty())
                .unwrap_or_else(|| DEFAULT_QUANTILES.to_vec());
            if let Some(q) = quantiles.iter().find(|q| !(0.0..=1.0).contains(*q)) {
                return Err(format!("quantile {q} is not between 0 and 1"));
            }
            for s in [summary, default_summary].into_iter().flatten() {
                if let Some(q) = s.quantiles.iter().find(|q| !(0.0..1.0).contains(&q.error)) {
                    return Err(format!("quantile {}: error {} is not between 0 and 1", q.quantile, q.error));
                }
            }
            let max_age = pick(|s| s.max_age.map(|d| d.get().as_millis() as u64)).filter(|m| *m > 0).unwrap_or(600_000);
            let age_buckets = pick(|s| s.age_buckets.map(u64::from)).filter(|b| *b > 0).unwrap_or(5);
            Ok(Observer::Summary {
                quantiles: quantiles.into(),
                max_age: Duration::from_millis(max_age),
                age_buckets: age_buckets.min(60) as u32,
            })
        }
    }
}

fn compile(
    m: &MappingConfig,
    d: &Defaults,
    default_regex: bool,
    default_kind: Option<ObserverKind>,
    default_ttl: Option<Duration>,
) -> Result<(Matcher, Mapping), String> {
    let regex = match m.match_type.as_deref() {
        None => default_regex,
        s => match_type(s)?,
    };
    let name =
        m.name.clone().filter(|n| !n.is_empty()).ok_or("the mapping sets no name: (needed even with action: drop)")?;
    for k in m.labels.keys() {
        if !crate::expo::valid_label_name(k) {
            return Err(format!("label name {k:?} is not valid; expected [a-zA-Z_][a-zA-Z0-9_]*"));
        }
    }
    if !valid_name_template(&name) {
        return Err(format!("name {name:?}: expected letters, digits, _ and $1 or ${{1}} references"));
    }
    let matcher = if regex {
        Matcher::Regex(regex::Regex::new(&m.pattern).map_err(|e| format!("invalid regex: {e}"))?)
    } else {
        Matcher::Glob(parse_glob(&m.pattern)?)
    };
    let drop = match m.action.as_deref() {
        None | Some("") | Some("map") => false,
        Some("drop") => true,
        Some(o) => return Err(format!("action {o:?}: expected map or drop")),
    };
    let class = match m.match_metric_type.as_deref() {
        None | Some("") => None,
        Some("counter") => Some(Class::Counter),
        Some("gauge") => Some(Class::Gauge),
        Some("observer" | "timer" | "histogram" | "distribution") => Some(Class::Observer),
        Some(o) => return Err(format!("match_metric_type {o:?}: expected counter, gauge or observer")),
    };
    let kind = match m.observer_type.as_deref() {
        None | Some("") => default_kind,
        s => observer_kind(s)?,
    };
    let observer = observer(kind, &m.summary_options, &m.histogram_options, &d.summary_options, &d.histogram_options)?;
    // A mapping's ttl of 0 falls back to the default, as in statsd_exporter.
    let ttl = m.ttl.map(|t| t.get()).filter(|t| !t.is_zero()).or(default_ttl);
    if m.scale.is_some_and(|s| !s.is_finite()) {
        return Err("scale must be a finite number".into());
    }
    Ok((
        matcher,
        Mapping {
            drop,
            name,
            labels: m.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            honor_labels: m.honor_labels,
            help: m.help.clone(),
            ttl,
            scale: m.scale,
            observer,
            class,
        },
    ))
}

/// A glob as statsd_exporter accepts it: dot-separated segments, each `*` or a literal of
/// `[a-zA-Z0-9_-]` (the first not starting with a digit).
fn parse_glob(pattern: &str) -> Result<Vec<Option<String>>, String> {
    let mut out = Vec::new();
    for (i, seg) in pattern.split('.').enumerate() {
        if seg == "*" {
            out.push(None);
            continue;
        }
        let ok = !seg.is_empty()
            && seg.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            && !(i == 0 && seg.starts_with(|c: char| c.is_ascii_digit() || c == '-'));
        if !ok {
            return Err(format!(
                "invalid match {pattern:?}: each dot-separated segment is * or a literal of letters, digits, _ and - (use match_type: regex for anything else)"
            ));
        }
        out.push(Some(seg.to_string()));
    }
    Ok(out)
}

fn glob_matches(glob: &[Option<String>], segments: &[&str]) -> bool {
    glob.len() == segments.len() && glob.iter().zip(segments).all(|(g, s)| g.as_deref().is_none_or(|g| g == *s))
}

fn more_specific(a: &[Option<String>], b: &[Option<String>]) -> bool {
    for (x, y) in a.iter().zip(b) {
        match (x.is_some(), y.is_some()) {
            (true, false) => return true,
            (false, true) => return false,
            _ => {}
        }
    }
    false
}

fn valid_name_template(name: &str) -> bool {
    let mut chars = name.chars().peekable();
    let mut first = true;
    while let Some(c) = chars.next() {
        if c == '$' {
            if chars.peek() == Some(&'{') {
                chars.next();
            }
            let mut digits = 0;
            while chars.peek().is_some_and(char::is_ascii_digit) {
                chars.next();
                digits += 1;
            }
            if digits == 0 {
                return false;
            }
            if chars.peek() == Some(&'}') {
                chars.next();
            }
        } else if !(c.is_ascii_alphabetic() || c == '_' || (!first && c.is_ascii_digit())) {
            return false;
        }
        first = false;
    }
    !name.is_empty()
}

/// Expands `$N` / `${N}` in a glob mapping's template: the N-th `*`'s segment. A reference is
/// the longest run of `[a-zA-Z0-9_$]` after the `$` (so `$1_total` is the reference
/// `1_total`, which is empty: write `${1}_total`), as in statsd_exporter.
fn expand_glob(template: &str, captures: &[&str]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let braced = after.starts_with('{');
        let body = if braced { &after[1..] } else { after };
        let len = body.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '$')).unwrap_or(body.len());
        let reference = &body[..len];
        let mut consumed = len + usize::from(braced);
        if body[len..].starts_with('}') {
            consumed += 1;
        }
        if let Ok(n) = reference.parse::<usize>()
            && (1..=captures.len()).contains(&n)
        {
            out.push_str(captures[n - 1]);
        }
        rest = &after[consumed..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
defaults:
  observer_type: histogram
  histogram_options: {buckets: [0.1, 1, 10]}
mappings:
- match: "test.dispatcher.*.*.*"
  name: "dispatcher_events_total"
  labels:
    processor: "$1"
    action: "${2}"
    outcome: "$3"
    job: "test_dispatcher"
- match: "*.signup.*.*"
  name: "signup_events_total"
  labels: {provider: "$2", outcome: "$3", job: "${1}_server"}
- match: "request_time.*"
  match_metric_type: observer
  observer_type: summary
  name: "request_time_seconds"
  labels: {route: "$1"}
- match: '(.*)\.(.*)--(.*)\.status\.(.*)\.count'
  match_type: regex
  name: "request_total"
  labels: {hostname: "$1", exec: "$2", protocol: "$3", code: "$4"}
- match: "drop.*"
  action: drop
  name: dropped
- match: ".+"
  match_type: regex
  name: "catchall_$0"
"#;

    #[test]
    fn globs_then_regexes_with_captures() {
        let m = Mapper::parse(FILE).unwrap();
        let got = m.find("test.dispatcher.FooProcessor.send.success", Class::Counter).unwrap();
        assert_eq!(got.name, "dispatcher_events_total");
        assert_eq!(
            got.labels,
            [("action", "send"), ("job", "test_dispatcher"), ("outcome", "success"), ("processor", "FooProcessor")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        let got = m.find("foo_product.signup.facebook.failure", Class::Counter).unwrap();
        assert_eq!(got.labels.iter().find(|(k, _)| k == "job").unwrap().1, "foo_product_server");
        let got = m.find("web.host-1--http.status.500.count", Class::Counter).unwrap();
        assert_eq!(got.name, "request_total");
        assert_eq!(got.labels.iter().find(|(k, _)| k == "code").unwrap().1, "500");
        assert!(m.find("drop.me", Class::Gauge).unwrap().mapping.drop);
        // A glob matches whole segments only, and the segment count must agree; the regex
        // catch-all then takes it.
        assert_eq!(m.find("test.dispatcher.a.b", Class::Counter).unwrap().name, "catchall_test.dispatcher.a.b");
        // match_metric_type: a counter of that name is not the summary's.
        assert!(matches!(
            m.find("request_time.home", Class::Observer).unwrap().mapping.observer,
            Observer::Summary { .. }
        ));
        assert_eq!(m.find("request_time.home", Class::Counter).unwrap().name, "catchall_request_time.home");
        assert_eq!(
            m.find("test.dispatcher.a.b.c", Class::Observer).unwrap().mapping.observer,
            Observer::Histogram { buckets: vec![0.1, 1.0, 10.0].into() }
        );
    }

    #[test]
    fn glob_templates_expand_as_statsd_exporter_does() {
        assert_eq!(expand_glob("${1}_total", &["a"]), "a_total");
        assert_eq!(expand_glob("$1_total", &["a"]), "");
        assert_eq!(expand_glob("x-$1-$2-$3", &["a", "b"]), "x-a-b-");
        assert_eq!(expand_glob("${1}${2}", &["a", "b"]), "ab");
    }

    #[test]
    fn ordering_first_in_file_or_most_specific() {
        let file = |ordering: bool| {
            format!(
                "defaults: {{glob_disable_ordering: {ordering}}}\nmappings:\n- {{match: 'a.*', name: first}}\n- {{match: 'a.b', name: literal}}\n"
            )
        };
        assert_eq!(Mapper::parse(&file(false)).unwrap().find("a.b", Class::Counter).unwrap().name, "first");
        assert_eq!(Mapper::parse(&file(true)).unwrap().find("a.b", Class::Counter).unwrap().name, "literal");
    }

    #[test]
    fn bad_files_say_where() {
        for (text, says) in [
            ("mappings: [{match: 'a.*'}]", "mappings[0] (a.*): the mapping sets no name"),
            ("mappings: [{match: 'a_*', name: x}]", "invalid match"),
            ("mappings: [{match: '(', match_type: regex, name: x}]", "invalid regex"),
            ("mappings: [{match: 'a', name: 'x.y'}]", "name \"x.y\""),
            ("mappings: [{match: 'a', name: x, labels: {'1a': b}}]", "label name"),
            ("mappings: [{match: 'a', name: x, action: keep}]", "expected map or drop"),
            (
                "mappings: [{match: 'a', name: x, observer_type: histogram, summary_options: {}}]",
                "summary_options on a histogram",
            ),
            ("mappings: [{match: 'a', name: x, timer_type: summary}]", "timer_type"),
            ("defaults: {observer_type: gauge}", "expected histogram or summary"),
            (
                "mappings: [{match: 'a', name: x, observer_type: histogram, histogram_options: {buckets: [2, 1]}}]",
                "must increase",
            ),
        ] {
            let e = Mapper::parse(text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
    }
}
