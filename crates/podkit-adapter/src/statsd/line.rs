//! The StatsD line protocol, read as prometheus/statsd_exporter reads it: `name:value|type`
//! with `|@rate`, DogStatsD `|#k:v` tags and `|c:container`, several values per line
//! (`a:1|c:2|ms`, or DogStatsD's `a:1:2|ms`), and tags in the name in the InfluxDB
//! (`name,k=v`), Librato (`name#k=v`) and SignalFx (`name[k=v]`) styles.
//!
//! This is the hot path: a line is split into borrowed pieces and nothing is allocated. Tags
//! are only parsed (by [`name_and_tags`]) the first time a series is seen; after that the
//! raw pieces are the series' cache key.

/// What decides a series' type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Class {
    Counter,
    Gauge,
    /// Timers (`ms`), histograms (`h`) and distributions (`d`).
    Observer,
}

impl Class {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Class::Counter => "counter",
            Class::Gauge => "gauge",
            Class::Observer => "observer",
        }
    }

    fn key_byte(self) -> char {
        match self {
            Class::Counter => 'c',
            Class::Gauge => 'g',
            Class::Observer => 'o',
        }
    }
}

/// What a sample does to its series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Op {
    /// Add to a counter (already scaled by the sample rate).
    Count(f64),
    Set(f64),
    /// A relative gauge: `+3|g`, `-3|g`.
    Add(f64),
    /// Observe `value` (timers already in seconds) `times` times (the sample rate).
    Observe {
        value: f64,
        times: u32,
    },
}

/// One sample of a line, borrowed from it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sample<'a> {
    /// The name as it came, with any InfluxDB/Librato/SignalFx tags still in it.
    pub(crate) name: &'a str,
    /// The DogStatsD tag sections (`#k:v,…` without the `#`) and the container id (`c:ID`).
    pub(crate) extras: Extras<'a>,
    pub(crate) class: Class,
    pub(crate) op: Op,
}

/// Up to four `|#…` / `|c:…` components: what a line can carry (a sample has at most six).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Extras<'a> {
    items: [&'a str; 4],
    len: u8,
}

impl<'a> Extras<'a> {
    fn push(&mut self, s: &'a str) {
        self.items[self.len as usize] = s;
        self.len += 1;
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.items[..self.len as usize].iter().copied()
    }
}

impl Sample<'_> {
    /// The series' cache key: the class, the raw name and the raw tag components.
    pub(crate) fn key_into(&self, key: &mut String) {
        key.clear();
        key.push(self.class.key_byte());
        key.push_str(self.name);
        for e in self.extras.iter() {
            key.push('\u{1f}');
            key.push_str(e);
        }
    }
}

/// Why a line or sample was not used: statsd_exporter's `reason` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Reason {
    MalformedLine,
    MixedTaggingStyles,
    NotEnoughPartsAfterColon,
    InvalidExtendedAggregateType,
    MalformedComponent,
    MalformedValue,
    InvalidSampleFactor,
    MalformedContainerId,
    IllegalEvent,
}

impl Reason {
    pub(crate) const ALL: [Reason; 9] = [
        Reason::MalformedLine,
        Reason::MixedTaggingStyles,
        Reason::NotEnoughPartsAfterColon,
        Reason::InvalidExtendedAggregateType,
        Reason::MalformedComponent,
        Reason::MalformedValue,
        Reason::InvalidSampleFactor,
        Reason::MalformedContainerId,
        Reason::IllegalEvent,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reason::MalformedLine => "malformed_line",
            Reason::MixedTaggingStyles => "mixed_tagging_styles",
            Reason::NotEnoughPartsAfterColon => "not_enough_parts_after_colon",
            Reason::InvalidExtendedAggregateType => "invalid_extended_aggregate_type",
            Reason::MalformedComponent => "malformed_component",
            Reason::MalformedValue => "malformed_value",
            Reason::InvalidSampleFactor => "invalid_sample_factor",
            Reason::MalformedContainerId => "malformed_container_id",
            Reason::IllegalEvent => "illegal_event",
        }
    }
}

/// What reading one line gave: each sample (or why it was not used), in order. A sample with
/// an unreadable rate is still used, after the error for the rate.
pub(crate) fn parse_line<'a>(line: &'a str, mut each: impl FnMut(Result<Sample<'a>, Reason>)) {
    if line.is_empty() {
        return;
    }
    let Some((name, rest)) = line.split_once(':') else {
        return each(Err(Reason::MalformedLine));
    };
    if name.is_empty() {
        return each(Err(Reason::MalformedLine));
    }
    let dogstatsd = rest.contains("|#");
    if dogstatsd && name_has_tags(name) {
        return each(Err(Reason::MixedTaggingStyles));
    }
    let mut parts = rest.splitn(3, '|');
    let (Some(values), Some(kind)) = (parts.next(), parts.next()) else {
        return each(Err(Reason::NotEnoughPartsAfterColon));
    };
    if values.contains(':') {
        // DogStatsD's extended aggregation: several values sharing one type, rate and tags.
        if !matches!(kind, "ms" | "h" | "d") {
            return each(Err(Reason::InvalidExtendedAggregateType));
        }
        let after = &rest[values.len()..];
        for v in values.split(':') {
            sample(name, v, after, &mut each);
        }
    } else if dogstatsd {
        sample(name, values, &rest[values.len()..], &mut each);
    } else {
        for s in rest.split(':') {
            let (v, after) = s.split_at(s.find('|').unwrap_or(s.len()));
            sample(name, v, after, &mut each);
        }
    }
}

/// Whether the name carries tags of its own (InfluxDB `,`, Librato `#`, SignalFx `[`).
fn name_has_tags(name: &str) -> bool {
    name.bytes().any(|b| matches!(b, b',' | b'#' | b'[' | b']'))
}

/// One sample: `value` and what follows it (`|type|@rate|#tags…`).
fn sample<'a>(name: &'a str, value: &'a str, after: &'a str, each: &mut impl FnMut(Result<Sample<'a>, Reason>)) {
    let mut comps = after.split('|');
    // `after` starts with its `|`: the first piece is empty.
    comps.next();
    let Some(kind) = comps.next() else {
        return each(Err(Reason::MalformedComponent));
    };
    let relative = value.starts_with(['+', '-']);
    let Ok(v) = value.parse::<f64>() else {
        return each(Err(Reason::MalformedValue));
    };
    let mut rate = 1.0f64;
    let mut rate_given = false;
    let mut extras = Extras::default();
    for (n, c) in comps.enumerate() {
        // value|type plus at most four components.
        if n >= 4 {
            return each(Err(Reason::MalformedComponent));
        }
        match c.as_bytes().first() {
            None => return each(Err(Reason::MalformedComponent)),
            Some(b'@') => match c[1..].parse::<f64>() {
                Ok(r) if r != 0.0 => {
                    rate = if rate_given { rate * r } else { r };
                    rate_given = true;
                }
                // @0 counts as 1, as statsd_exporter takes it.
                Ok(_) => {}
                // Counted, and the sample is still used at rate 1.
                Err(_) => each(Err(Reason::InvalidSampleFactor)),
            },
            Some(b'#') => extras.push(&c[1..]),
            Some(b'c') => match c.strip_prefix("c:") {
                Some(id) if !id.is_empty() => extras.push(c),
                _ => return each(Err(Reason::MalformedContainerId)),
            },
            // DogStatsD 1.3 timestamps: accepted and ignored, as statsd_exporter does.
            Some(b'T') => {}
            Some(_) => return each(Err(Reason::InvalidSampleFactor)),
        }
    }
    let (class, op) = match kind {
        "c" => (Class::Counter, Op::Count(v / rate)),
        "g" if relative => (Class::Gauge, Op::Add(v)),
        "g" => (Class::Gauge, Op::Set(v)),
        "ms" | "h" | "d" => {
            let value = if kind == "ms" { v / 1000.0 } else { v };
            // A sampled observation stands for 1/rate of them; a rate above 1 stands for none.
            let times = if rate > 0.0 && rate <= 1.0 { (1.0 / rate) as u32 } else { 0 };
            (Class::Observer, Op::Observe { value, times })
        }
        _ => return each(Err(Reason::IllegalEvent)),
    };
    each(Ok(Sample { name, extras, class, op }))
}

/// The name without its tags, the tags as labels (keys escaped, values as they came), and how
/// many tags could not be read. Duplicate keys: the last wins.
pub(crate) fn name_and_tags(sample: &Sample<'_>) -> (String, Vec<(String, String)>, u32) {
    let mut labels: Vec<(String, String)> = Vec::new();
    let mut errors = 0u32;
    // False for a key Prometheus reserves (`__` first, after escaping): a tag error.
    let put = |labels: &mut Vec<(String, String)>, k: &str, v: &str| {
        let k = escape_name(k);
        if k.starts_with("__") {
            return false;
        }
        match labels.iter_mut().find(|(have, _)| *have == k) {
            Some(l) => l.1 = v.to_string(),
            None => labels.push((k, v.to_string())),
        }
        true
    };
    let pairs = |labels: &mut Vec<(String, String)>, text: &str, sep: char, trim_hash: bool, errors: &mut u32| {
        for tag in text.split(',') {
            let tag = if trim_hash { tag.strip_prefix('#').unwrap_or(tag) } else { tag };
            match tag.split_once(sep) {
                Some((k, v)) if !k.is_empty() && !v.is_empty() && put(labels, k, v) => {}
                _ => *errors += 1,
            }
        }
    };
    let raw = sample.name;
    let mut name = raw.to_string();
    let (open, close) = (raw.find('['), raw.find(']'));
    match (open, close) {
        (Some(o), Some(c)) if o < c => {
            // SignalFx: `name[k=v,…]rest`.
            let inner = &raw[o + 1..c];
            if !inner.is_empty() {
                pairs(&mut labels, inner, '=', false, &mut errors);
            }
            name = format!("{}{}", &raw[..o], &raw[c + 1..]);
        }
        (None, None) => {
            // InfluxDB `name,k=v` or Librato `name#k=v`: the first of the two ends the name.
            if let Some(at) = raw.find([',', '#']) {
                name = raw[..at].to_string();
                pairs(&mut labels, &raw[at + 1..], '=', false, &mut errors);
            }
        }
        // One bracket, or `]` before `[`: a tag error, and the name stays as it came.
        _ => errors += 1,
    }
    for e in sample.extras.iter() {
        if let Some(id) = e.strip_prefix("c:") {
            put(&mut labels, "container_id", id);
        } else {
            pairs(&mut labels, e, ':', true, &mut errors);
        }
    }
    (name, labels, errors)
}

/// statsd_exporter's escaping of names and tag keys: every character outside `[a-zA-Z0-9_]`
/// becomes `_`, a run of `-` becomes one `_`, and a leading digit gets a `_` before it.
pub(crate) fn escape_name(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 1);
    let mut dash = false;
    for (i, c) in s.chars().enumerate() {
        if i == 0 && c.is_ascii_digit() {
            out.push('_');
        }
        if c == '-' {
            if !dash {
                out.push('_');
            }
            dash = true;
            continue;
        }
        dash = false;
        out.push(if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(line: &str) -> Vec<Result<(String, Class, Op), Reason>> {
        let mut out = Vec::new();
        parse_line(line, |r| out.push(r.map(|s| (s.name.to_string(), s.class, s.op))));
        out
    }

    #[test]
    fn types_rates_and_multi_values() {
        assert_eq!(all("a.b:1|c"), [Ok(("a.b".into(), Class::Counter, Op::Count(1.0)))]);
        assert_eq!(all("a:1|c|@0.1"), [Ok(("a".into(), Class::Counter, Op::Count(10.0)))]);
        assert_eq!(all("g:5|g"), [Ok(("g".into(), Class::Gauge, Op::Set(5.0)))]);
        assert_eq!(all("g:+5|g"), [Ok(("g".into(), Class::Gauge, Op::Add(5.0)))]);
        assert_eq!(all("g:-5|g|@0.5"), [Ok(("g".into(), Class::Gauge, Op::Add(-5.0)))]);
        assert_eq!(all("t:320|ms"), [Ok(("t".into(), Class::Observer, Op::Observe { value: 0.32, times: 1 }))]);
        assert_eq!(all("t:0.5|ms|@0.1"), [Ok(("t".into(), Class::Observer, Op::Observe { value: 0.0005, times: 10 }))]);
        assert_eq!(all("h:3|h|@2"), [Ok(("h".into(), Class::Observer, Op::Observe { value: 3.0, times: 0 }))]);
        assert_eq!(
            all("a:1|c:2|ms"),
            [
                Ok(("a".into(), Class::Counter, Op::Count(1.0))),
                Ok(("a".into(), Class::Observer, Op::Observe { value: 0.002, times: 1 }))
            ]
        );
        assert_eq!(all("x:1:2|d|#k:v").len(), 2);
        // An unreadable rate is counted and the sample kept at rate 1.
        assert_eq!(
            all("foo:1|c|@bar"),
            [Err(Reason::InvalidSampleFactor), Ok(("foo".into(), Class::Counter, Op::Count(1.0)))]
        );
    }

    #[test]
    fn bad_lines_say_why() {
        for (line, why) in [
            ("novalue", Reason::MalformedLine),
            (":1|c", Reason::MalformedLine),
            ("a:1", Reason::NotEnoughPartsAfterColon),
            ("a,k=v:1|c|#x:y", Reason::MixedTaggingStyles),
            ("a:1:2|c", Reason::InvalidExtendedAggregateType),
            ("a:x|c", Reason::MalformedValue),
            ("a:1|s", Reason::IllegalEvent),
            ("a:1|c\r", Reason::IllegalEvent),
            ("a:1|c|", Reason::MalformedComponent),
            ("a:1|c|c", Reason::MalformedContainerId),
            ("a:1|c|x", Reason::InvalidSampleFactor),
            ("a:1|c|@1|#a:b|#c:d|c:e|T1|@1", Reason::MalformedComponent),
        ] {
            assert_eq!(all(line).last(), Some(&Err(why)), "{line}");
        }
        assert!(all("").is_empty());
    }

    #[test]
    fn tags_in_every_style() {
        let tags = |line: &str| {
            let mut got = None;
            parse_line(line, |r| got = Some(name_and_tags(&r.unwrap())));
            got.unwrap()
        };
        let kv = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>();
        assert_eq!(
            tags("req:1|c|#env:prod,tag1:foo:bar"),
            ("req".into(), kv(&[("env", "prod"), ("tag1", "foo:bar")]), 0)
        );
        assert_eq!(tags("req,env=prod,dc=x:1|c"), ("req".into(), kv(&[("env", "prod"), ("dc", "x")]), 0));
        assert_eq!(tags("req#env=prod:1|c"), ("req".into(), kv(&[("env", "prod")]), 0));
        assert_eq!(tags("foo.[env=prod]test:1|c"), ("foo.test".into(), kv(&[("env", "prod")]), 0));
        assert_eq!(tags("a]b[c:1|c"), ("a]b[c".into(), vec![], 1));
        assert_eq!(
            tags("req:1|c|#novalue,k.x:v|c:abc"),
            ("req".into(), kv(&[("k_x", "v"), ("container_id", "abc")]), 1)
        );
    }

    #[test]
    fn names_escape_as_statsd_exporter_escapes_them() {
        for (from, to) in [
            ("with.dot", "with_dot"),
            ("with.*.multiple", "with___multiple"),
            ("with---multiple-dashes", "with_multiple_dashes"),
            ("with😱emoji", "with_emoji"),
            ("0starts", "_0starts"),
            ("test.web-server.foo.bar", "test_web_server_foo_bar"),
        ] {
            assert_eq!(escape_name(from), to);
        }
    }
}
