//! The series StatsD samples build: counters, gauges, histograms and summaries, each family
//! with one type and one set of label names, and series that expire after their TTL.
//!
//! A sample whose family exists with another type or other label names is rejected and
//! counted, never added beside it: so `/metrics` always parses, and every PromQL aggregation
//! over a family sees the same labels (statsd_exporter accepts a second label set into the
//! same family, and has failed whole scrapes on the other cases, #114, #186, #456).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use sketches_ddsketch::{Config as SketchConfig, DDSketch};

use super::mapping::Observer;
use crate::expo::{Kind, Labels, Sample, Scrape};

/// A series, as the cache remembers it: its family, its slot and the slot's generation (a
/// series removed by its TTL bumps the generation, so stale cache entries miss).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SeriesRef {
    fam: u32,
    slot: u32,
    generation: u32,
}

/// Why a sample was not added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Conflict {
    /// The name exists with another type (or collides with a histogram's or summary's
    /// `_bucket`/`_sum`/`_count`).
    Type,
    /// The name exists with other label names.
    Labels,
    /// `le` on a histogram or `quantile` on a summary.
    ReservedLabel,
}

impl Conflict {
    pub(crate) const ALL: [Conflict; 3] = [Conflict::Type, Conflict::Labels, Conflict::ReservedLabel];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Conflict::Type => "type",
            Conflict::Labels => "labels",
            Conflict::ReservedLabel => "reserved_label",
        }
    }
}

/// The type a family is created with.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum FamilyKind {
    Counter,
    Gauge,
    Observer(Observer),
}

impl FamilyKind {
    fn expo(&self) -> Kind {
        match self {
            FamilyKind::Counter => Kind::Counter,
            FamilyKind::Gauge => Kind::Gauge,
            FamilyKind::Observer(Observer::Histogram { .. }) => Kind::Histogram,
            FamilyKind::Observer(Observer::Summary { .. }) => Kind::Summary,
        }
    }

    fn has_suffixes(&self) -> bool {
        matches!(self, FamilyKind::Observer(_))
    }
}

#[derive(Debug)]
struct Family {
    name: Arc<str>,
    help: String,
    kind: FamilyKind,
    /// Sorted.
    label_names: Box<[String]>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    by_values: HashMap<Box<[String]>, u32>,
}

#[derive(Debug)]
struct Slot {
    generation: u32,
    series: Option<Series>,
}

#[derive(Debug)]
struct Series {
    values: Box<[String]>,
    state: State,
    /// When it was last written, in registry seconds.
    touched: u64,
    ttl: Option<Duration>,
}

#[derive(Debug)]
enum State {
    Number(f64),
    Histogram { counts: Vec<u64>, sum: f64, count: u64 },
    Summary { windows: VecDeque<(u64, Sketch)>, sum: f64, count: u64 },
}

/// A quantile sketch of one age window.
struct Sketch(DDSketch);

impl std::fmt::Debug for Sketch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sketch").field("count", &self.0.count()).finish()
    }
}

/// One sample's effect, after the mapping's scale.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Apply {
    Add(f64),
    Set(f64),
    Observe { value: f64, times: u32 },
}

/// Every StatsD family and series.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    families: Vec<Family>,
    by_name: HashMap<Arc<str>, u32>,
}

impl Registry {
    /// The series of `name` with `labels`, created if needed; or why it cannot be.
    pub(crate) fn series(
        &mut self,
        name: &str,
        help: &str,
        kind: &FamilyKind,
        mut labels: Vec<(String, String)>,
        ttl: Option<Duration>,
        now: u64,
    ) -> Result<SeriesRef, Conflict> {
        labels.sort_by(|a, b| a.0.cmp(&b.0));
        let reserved = match kind {
            FamilyKind::Observer(Observer::Histogram { .. }) => Some("le"),
            FamilyKind::Observer(Observer::Summary { .. }) => Some("quantile"),
            _ => None,
        };
        if reserved.is_some_and(|r| labels.iter().any(|(k, _)| k == r)) {
            return Err(Conflict::ReservedLabel);
        }
        let fam = match self.by_name.get(name) {
            Some(&i) => {
                let f = &self.families[i as usize];
                if f.kind.expo() != kind.expo() {
                    return Err(Conflict::Type);
                }
                if f.label_names.len() != labels.len() || f.label_names.iter().zip(&labels).any(|(a, (b, _))| a != b) {
                    return Err(Conflict::Labels);
                }
                i
            }
            None => {
                self.check_suffixes(name, kind)?;
                let i = self.families.len() as u32;
                let name: Arc<str> = name.into();
                self.families.push(Family {
                    name: name.clone(),
                    help: help.to_string(),
                    kind: kind.clone(),
                    label_names: labels.iter().map(|(k, _)| k.clone()).collect(),
                    slots: Vec::new(),
                    free: Vec::new(),
                    by_values: HashMap::new(),
                });
                self.by_name.insert(name, i);
                i
            }
        };
        let f = &mut self.families[fam as usize];
        let values: Box<[String]> = labels.into_iter().map(|(_, v)| v).collect();
        if let Some(&slot) = f.by_values.get(&values) {
            let s = &mut f.slots[slot as usize];
            return Ok(SeriesRef { fam, slot, generation: s.generation });
        }
        let state = match &f.kind {
            FamilyKind::Counter | FamilyKind::Gauge => State::Number(0.0),
            FamilyKind::Observer(Observer::Histogram { buckets }) => {
                State::Histogram { counts: vec![0; buckets.len()], sum: 0.0, count: 0 }
            }
            FamilyKind::Observer(Observer::Summary { .. }) => {
                State::Summary { windows: VecDeque::new(), sum: 0.0, count: 0 }
            }
        };
        let series = Series { values: values.clone(), state, touched: now, ttl };
        let slot = match f.free.pop() {
            Some(s) => {
                f.slots[s as usize].series = Some(series);
                s
            }
            None => {
                f.slots.push(Slot { generation: 0, series: Some(series) });
                (f.slots.len() - 1) as u32
            }
        };
        f.by_values.insert(values, slot);
        Ok(SeriesRef { fam, slot, generation: f.slots[slot as usize].generation })
    }

    /// A histogram or summary `x` owns `x_bucket`, `x_sum` and `x_count`.
    fn check_suffixes(&self, name: &str, kind: &FamilyKind) -> Result<(), Conflict> {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix)
                && self.by_name.get(base).is_some_and(|&i| self.families[i as usize].kind.has_suffixes())
            {
                return Err(Conflict::Type);
            }
            if kind.has_suffixes() && self.by_name.contains_key(format!("{name}{suffix}").as_str()) {
                return Err(Conflict::Type);
            }
        }
        Ok(())
    }

    /// Applies to a series the cache knows; false when it has expired since (the caller
    /// looks it up again).
    pub(crate) fn apply(&mut self, r: SeriesRef, op: Apply, now: u64) -> bool {
        let Some(f) = self.families.get_mut(r.fam as usize) else { return false };
        let Some(slot) = f.slots.get_mut(r.slot as usize) else { return false };
        if slot.generation != r.generation {
            return false;
        }
        let Some(s) = slot.series.as_mut() else { return false };
        s.touched = now;
        match (&mut s.state, op) {
            (State::Number(v), Apply::Add(d)) => *v += d,
            (State::Number(v), Apply::Set(n)) => *v = n,
            (State::Histogram { counts, sum, count }, Apply::Observe { value, times }) => {
                let FamilyKind::Observer(Observer::Histogram { buckets }) = &f.kind else { return true };
                let times64 = u64::from(times);
                // The first bucket whose upper bound holds the value; above the last: +Inf only.
                let i = buckets.partition_point(|b| *b < value);
                if let Some(c) = counts.get_mut(i) {
                    *c += times64;
                }
                *sum += value * f64::from(times);
                *count += times64;
            }
            (State::Summary { windows, sum, count }, Apply::Observe { value, times }) => {
                let FamilyKind::Observer(Observer::Summary { max_age, age_buckets, .. }) = &f.kind else {
                    return true;
                };
                if times == 0 {
                    return true;
                }
                let width = window_width(*max_age, *age_buckets);
                let epoch = now_millis(now) / width;
                if windows.back().is_none_or(|(e, _)| *e != epoch) {
                    windows.push_back((epoch, Sketch(DDSketch::new(sketch_config()))));
                    while windows.len() > *age_buckets as usize {
                        windows.pop_front();
                    }
                }
                // A sketch ranks finite values only (an infinite one overflows its bin index);
                // NaN and ±Inf still count in _sum and _count, as in client_golang.
                if let Some((_, sketch)) = windows.back_mut()
                    && value.is_finite()
                {
                    sketch.0.add_with_count(value, u64::from(times));
                }
                *sum += value * f64::from(times);
                *count += u64::from(times);
            }
            // The family's type decided the op; a mismatch cannot reach here.
            _ => {}
        }
        true
    }

    /// Removes the series whose TTL has passed. Returns how many.
    pub(crate) fn expire(&mut self, now: u64) -> usize {
        let mut removed = 0;
        for f in &mut self.families {
            for (i, slot) in f.slots.iter_mut().enumerate() {
                let expired = slot
                    .series
                    .as_ref()
                    .is_some_and(|s| s.ttl.is_some_and(|ttl| now.saturating_sub(s.touched) >= ttl.as_secs().max(1)));
                if expired && let Some(s) = slot.series.take() {
                    f.by_values.remove(&s.values);
                    slot.generation = slot.generation.wrapping_add(1);
                    f.free.push(i as u32);
                    removed += 1;
                }
            }
        }
        removed
    }

    /// The number of live series.
    pub(crate) fn len(&self) -> usize {
        self.families.iter().map(|f| f.by_values.len()).sum()
    }

    /// Writes every family into `out`. Series are sorted by their label values.
    pub(crate) fn render(&self, out: &mut Scrape, now: u64) {
        for f in &self.families {
            let mut live: Vec<&Series> = f.slots.iter().filter_map(|s| s.series.as_ref()).collect();
            live.sort_by(|a, b| a.values.cmp(&b.values));
            let kind = f.kind.expo();
            for s in live {
                let labels: Labels = f.label_names.iter().cloned().zip(s.values.iter().cloned()).collect();
                let mut add = |suffix: &'static str, labels: Labels, value: f64| {
                    out.add_sample(&f.name, &f.help, kind, Sample { suffix, labels, value, timestamp_ms: None });
                };
                match (&s.state, &f.kind) {
                    (State::Number(v), _) => add("", labels, *v),
                    (
                        State::Histogram { counts, sum, count },
                        FamilyKind::Observer(Observer::Histogram { buckets }),
                    ) => {
                        let mut cumulative = 0;
                        for (b, c) in buckets.iter().zip(counts) {
                            cumulative += c;
                            let mut l = labels.clone();
                            l.push(("le".into(), le(*b)));
                            add("_bucket", l, cumulative as f64);
                        }
                        let mut l = labels.clone();
                        l.push(("le".into(), "+Inf".into()));
                        add("_bucket", l, *count as f64);
                        add("_sum", labels.clone(), *sum);
                        add("_count", labels, *count as f64);
                    }
                    (
                        State::Summary { windows, sum, count },
                        FamilyKind::Observer(Observer::Summary { quantiles, max_age, age_buckets }),
                    ) => {
                        let width = window_width(*max_age, *age_buckets);
                        let oldest = (now_millis(now) / width).saturating_sub(u64::from(*age_buckets) - 1);
                        let mut merged = DDSketch::new(sketch_config());
                        for (_, w) in windows.iter().filter(|(e, _)| *e >= oldest) {
                            // Sketches of one config always merge.
                            let _ = merged.merge(&w.0);
                        }
                        for q in quantiles.iter() {
                            let v = merged.quantile(*q).ok().flatten().unwrap_or(f64::NAN);
                            let mut l = labels.clone();
                            l.push(("quantile".into(), le(*q)));
                            add("", l, v);
                        }
                        add("_sum", labels.clone(), *sum);
                        add("_count", labels, *count as f64);
                    }
                    _ => {}
                }
            }
        }
    }
}

/// A bound or quantile as the Go client writes it in a label.
fn le(v: f64) -> String {
    let mut s = String::new();
    crate::expo::write_value(&mut s, v);
    s
}

/// Registry time is whole seconds; windows are in milliseconds.
fn now_millis(now: u64) -> u64 {
    now * 1000
}

fn window_width(max_age: Duration, buckets: u32) -> u64 {
    (max_age.as_millis() as u64 / u64::from(buckets.max(1))).max(1000)
}

/// Quantiles within 1% of the true value, in at most 1,024 bins per window.
fn sketch_config() -> SketchConfig {
    SketchConfig::new(0.01, 1024, 1.0e-9)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn one_type_and_one_label_set_per_family() {
        let mut r = Registry::default();
        let a = r.series("hits", "h", &FamilyKind::Counter, l(&[("b", "1"), ("a", "x")]), None, 0).unwrap();
        assert_eq!(
            r.series("hits", "h", &FamilyKind::Gauge, l(&[("a", "x"), ("b", "1")]), None, 0),
            Err(Conflict::Type)
        );
        assert_eq!(r.series("hits", "h", &FamilyKind::Counter, l(&[("a", "x")]), None, 0), Err(Conflict::Labels));
        let hist = FamilyKind::Observer(Observer::Histogram { buckets: vec![1.0].into() });
        r.series("lat", "h", &hist, vec![], None, 0).unwrap();
        assert_eq!(r.series("lat_count", "h", &FamilyKind::Counter, vec![], None, 0), Err(Conflict::Type));
        assert_eq!(r.series("hits_sum", "h", &FamilyKind::Gauge, vec![], None, 0).map(|_| ()), Ok(()));
        assert_eq!(r.series("hits", "h", &hist, vec![], None, 0), Err(Conflict::Type));
        assert_eq!(r.series("x", "h", &hist, l(&[("le", "1")]), None, 0), Err(Conflict::ReservedLabel));
        assert!(r.apply(a, Apply::Add(2.0), 0));
        let mut out = Scrape::new();
        r.render(&mut out, 0);
        assert!(out.render().contains("hits{a=\"x\",b=\"1\"} 2\n"), "{}", out.render());
    }

    #[test]
    fn histograms_and_summaries() {
        let mut r = Registry::default();
        let hist = FamilyKind::Observer(Observer::Histogram { buckets: vec![0.1, 1.0].into() });
        let h = r.series("h", "h", &hist, vec![], None, 0).unwrap();
        for v in [0.05, 0.1, 0.5, 7.0] {
            r.apply(h, Apply::Observe { value: v, times: 2 }, 0);
        }
        let s = r.series("s", "s", &FamilyKind::Observer(Observer::default_summary()), vec![], None, 0).unwrap();
        for v in 1..=100 {
            r.apply(s, Apply::Observe { value: f64::from(v), times: 1 }, 0);
        }
        let mut out = Scrape::new();
        r.render(&mut out, 0);
        let text = out.render();
        for line in [
            "h_bucket{le=\"0.1\"} 4",
            "h_bucket{le=\"1\"} 6",
            "h_bucket{le=\"+Inf\"} 8",
            "h_sum 15.3",
            "h_count 8",
            "s_sum 5050",
            "s_count 100",
        ] {
            assert!(text.lines().any(|x| x == line), "{line} not in\n{text}");
        }
        let q = |q: &str| -> f64 {
            let p = format!("s{{quantile=\"{q}\"}} ");
            text.lines().find_map(|x| x.strip_prefix(&p)).unwrap().parse().unwrap()
        };
        assert!((q("0.5") - 50.0).abs() <= 1.0, "{text}");
        assert!((q("0.99") - 99.0).abs() <= 1.5, "{text}");
        // Ten minutes later the summary's window has passed: no quantile, but sum and count stay.
        let mut later = Scrape::new();
        r.render(&mut later, 700);
        let text = later.render();
        assert!(text.contains("s{quantile=\"0.5\"} NaN"), "{text}");
        assert!(text.contains("s_count 100"), "{text}");
    }

    #[test]
    fn series_expire_after_their_ttl_and_stale_refs_miss() {
        let mut r = Registry::default();
        let a = r.series("g", "", &FamilyKind::Gauge, vec![], Some(Duration::from_secs(5)), 0).unwrap();
        let b = r.series("k", "", &FamilyKind::Gauge, vec![], None, 0).unwrap();
        assert!(r.apply(a, Apply::Set(1.0), 3));
        assert_eq!(r.expire(7), 0);
        assert_eq!(r.expire(8), 1);
        assert!(!r.apply(a, Apply::Set(2.0), 8));
        assert!(r.apply(b, Apply::Set(2.0), 1000));
        let again = r.series("g", "", &FamilyKind::Gauge, vec![], Some(Duration::from_secs(5)), 9).unwrap();
        assert_ne!(again, a);
        assert_eq!(r.len(), 2);
    }
}
