//! Merging leaf answers into one.
//!
//! Each built-in strategy takes the 2xx bodies of the shards that answered, in shard order.
//! A leaf body a strategy cannot use (not JSON, the wrong JSON type) is not merged: the caller
//! turns it into a missing shard with the reason returned here. An empty body contributes
//! nothing.

use std::cmp::Ordering;
use std::str::FromStr;

use serde_json::{Map, Value};

/// How leaf answers become one answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Strategy {
    /// JSON arrays, concatenated in shard order.
    Concat,
    /// JSON objects, merged key by key; on a key two shards both set, the later shard wins,
    /// or (`merge:error`) the merge fails.
    Merge { conflict_is_error: bool },
    /// JSON objects whose numeric fields are added (recursively); other fields: first shard's.
    Sum,
    /// JSON arrays of objects, sorted by FIELD (largest first), the first K kept.
    TopK { field: String, k: usize },
    /// Lines of NDJSON, concatenated in shard order.
    Ndjson,
}

impl FromStr for Strategy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split(':');
        let name = parts.next().unwrap_or_default();
        let rest: Vec<&str> = parts.collect();
        let expected = "expected concat, merge, merge:error, sum, topk:FIELD:K or ndjson";
        match (name, rest.as_slice()) {
            ("concat", []) => Ok(Strategy::Concat),
            ("merge", []) | ("merge", ["last"]) => Ok(Strategy::Merge { conflict_is_error: false }),
            ("merge", ["error"]) => Ok(Strategy::Merge { conflict_is_error: true }),
            ("sum", []) => Ok(Strategy::Sum),
            ("ndjson", []) => Ok(Strategy::Ndjson),
            ("topk", [field, k]) if !field.is_empty() => {
                let k = k
                    .parse::<usize>()
                    .ok()
                    .filter(|k| *k > 0)
                    .ok_or_else(|| format!("topk: K={k:?} must be a positive number"))?;
                Ok(Strategy::TopK { field: field.to_string(), k })
            }
            _ => Err(format!("unknown merge strategy {s:?}; {expected}")),
        }
    }
}

impl Strategy {
    pub fn content_type(&self) -> &'static str {
        match self {
            Strategy::Ndjson => "application/x-ndjson",
            _ => "application/json",
        }
    }

    /// Checks one leaf body and turns it into the form [`Strategy::merge`] takes. `Err` names
    /// why this shard cannot be merged.
    pub fn accept(&self, body: &[u8]) -> Result<Part, String> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Part::Empty);
        }
        if *self == Strategy::Ndjson {
            let text = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8".to_string())?;
            return Ok(Part::Text(text.to_string()));
        }
        let v: Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
        let ok = match self {
            Strategy::Concat => v.is_array(),
            Strategy::TopK { .. } => v.is_array(),
            Strategy::Merge { .. } | Strategy::Sum => v.is_object(),
            Strategy::Ndjson => unreachable!("handled above"),
        };
        if !ok {
            let want = if matches!(self, Strategy::Merge { .. } | Strategy::Sum) { "an object" } else { "an array" };
            return Err(format!("expected {want}, got {}", kind(&v)));
        }
        Ok(Part::Json(v))
    }

    /// Merges accepted parts, in shard order.
    pub fn merge(&self, parts: Vec<Part>) -> Result<Vec<u8>, String> {
        match self {
            Strategy::Ndjson => {
                let mut out = String::new();
                for p in parts {
                    if let Part::Text(t) = p {
                        out.push_str(&t);
                        if !t.ends_with('\n') {
                            out.push('\n');
                        }
                    }
                }
                Ok(out.into_bytes())
            }
            Strategy::Concat => {
                let mut all = Vec::new();
                for v in jsons(parts) {
                    if let Value::Array(items) = v {
                        all.extend(items);
                    }
                }
                to_vec(&Value::Array(all))
            }
            Strategy::TopK { field, k } => {
                let mut all = Vec::new();
                for v in jsons(parts) {
                    if let Value::Array(items) = v {
                        all.extend(items);
                    }
                }
                // Stable sort, largest first; items without a numeric field go last.
                all.sort_by(|a, b| {
                    let (x, y) = (a.get(field).and_then(Value::as_f64), b.get(field).and_then(Value::as_f64));
                    match (x, y) {
                        (Some(x), Some(y)) => y.partial_cmp(&x).unwrap_or(Ordering::Equal),
                        (Some(_), None) => Ordering::Less,
                        (None, Some(_)) => Ordering::Greater,
                        (None, None) => Ordering::Equal,
                    }
                });
                all.truncate(*k);
                to_vec(&Value::Array(all))
            }
            Strategy::Merge { conflict_is_error } => {
                let mut out = Map::new();
                for v in jsons(parts) {
                    if let Value::Object(m) = v {
                        for (key, value) in m {
                            if *conflict_is_error && out.contains_key(&key) {
                                return Err(format!("key {key:?} is set by more than one shard"));
                            }
                            out.insert(key, value);
                        }
                    }
                }
                to_vec(&Value::Object(out))
            }
            Strategy::Sum => {
                let mut out = Value::Object(Map::new());
                for v in jsons(parts) {
                    add(&mut out, v);
                }
                to_vec(&out)
            }
        }
    }
}

/// One shard's answer, accepted for merging.
#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    Empty,
    Json(Value),
    Text(String),
}

fn jsons(parts: Vec<Part>) -> impl Iterator<Item = Value> {
    parts.into_iter().filter_map(|p| match p {
        Part::Json(v) => Some(v),
        _ => None,
    })
}

fn to_vec(v: &Value) -> Result<Vec<u8>, String> {
    serde_json::to_vec(v).map_err(|e| e.to_string())
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Adds `v` into `acc`: numbers are summed (integers stay integers while they fit), objects
/// recurse, anything else keeps the first value seen.
fn add(acc: &mut Value, v: Value) {
    match (acc, v) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in b {
                match a.get_mut(&key) {
                    Some(slot) => add(slot, value),
                    None => {
                        a.insert(key, value);
                    }
                }
            }
        }
        (slot @ Value::Number(_), Value::Number(n)) => {
            let Value::Number(m) = &*slot else { unreachable!() };
            let sum = match (m.as_i64(), n.as_i64()) {
                (Some(x), Some(y)) => x.checked_add(y).map(Value::from),
                _ => None,
            };
            *slot = sum.unwrap_or_else(|| Value::from(m.as_f64().unwrap_or(0.0) + n.as_f64().unwrap_or(0.0)));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(s: &str, bodies: &[&str]) -> Result<Value, String> {
        let strategy: Strategy = s.parse()?;
        let parts = bodies.iter().map(|b| strategy.accept(b.as_bytes())).collect::<Result<Vec<_>, _>>()?;
        let out = strategy.merge(parts)?;
        Ok(serde_json::from_slice(&out).unwrap_or_else(|_| Value::String(String::from_utf8(out).unwrap())))
    }

    #[test]
    fn concat_keeps_shard_order_and_skips_empty_bodies() {
        assert_eq!(run("concat", &["[1,2]", "", "[3]", "[]"]).unwrap(), json!([1, 2, 3]));
        assert_eq!(run("concat", &[]).unwrap(), json!([]));
        assert!(run("concat", &["{\"a\":1}"]).unwrap_err().contains("expected an array, got an object"));
        assert!(run("concat", &["[1,"]).unwrap_err().contains("invalid JSON"));
    }

    #[test]
    fn merge_later_wins_or_errors() {
        assert_eq!(run("merge", &[r#"{"a":1,"b":1}"#, r#"{"b":2}"#]).unwrap(), json!({"a":1,"b":2}));
        assert!(run("merge:error", &[r#"{"b":1}"#, r#"{"b":2}"#]).unwrap_err().contains("\"b\""));
        assert_eq!(run("merge:error", &[r#"{"a":1}"#, "  ", r#"{"b":2}"#]).unwrap(), json!({"a":1,"b":2}));
    }

    #[test]
    fn sum_adds_numbers_recursively() {
        let got = run("sum", &[r#"{"n":1,"x":{"y":2.5},"s":"first"}"#, r#"{"n":2,"x":{"y":1,"z":1},"s":"second"}"#]);
        assert_eq!(got.unwrap(), json!({"n":3,"x":{"y":3.5,"z":1},"s":"first"}));
        let big = run("sum", &[r#"{"n":9223372036854775807}"#, r#"{"n":1}"#]).unwrap();
        assert!(big["n"].as_f64().unwrap() > 9.2e18, "overflow falls back to floating point");
    }

    #[test]
    fn topk_sorts_by_field_and_keeps_k() {
        let got = run(
            "topk:score:3",
            &[
                r#"[{"id":1,"score":5},{"id":2,"score":1}]"#,
                r#"[{"id":3,"score":9},{"id":4}]"#,
                r#"[{"id":5,"score":5}]"#,
            ],
        );
        assert_eq!(got.unwrap(), json!([{"id":3,"score":9},{"id":1,"score":5},{"id":5,"score":5}]));
        assert!("topk:score:0".parse::<Strategy>().is_err());
        assert!("topk:score".parse::<Strategy>().is_err());
    }

    #[test]
    fn ndjson_concatenates_lines() {
        let got = run("ndjson", &["{\"a\":1}\n", "", "{\"b\":2}"]).unwrap();
        assert_eq!(got, Value::String("{\"a\":1}\n{\"b\":2}\n".into()));
    }

    #[test]
    fn objects_keep_the_leaves_key_order() {
        let text = |s: &str, bodies: &[&str]| {
            let strategy: Strategy = s.parse().unwrap();
            let parts = bodies.iter().map(|b| strategy.accept(b.as_bytes()).unwrap()).collect();
            String::from_utf8(strategy.merge(parts).unwrap()).unwrap()
        };
        let scored = [r#"[{"shard":0,"score":0}]"#, r#"[{"shard":1,"score":1}]"#, r#"[{"shard":2,"score":2}]"#];
        assert_eq!(text("topk:score:2", &scored), r#"[{"shard":2,"score":2},{"shard":1,"score":1}]"#);
        assert_eq!(text("concat", &scored[..2]), r#"[{"shard":0,"score":0},{"shard":1,"score":1}]"#);
        // Keys in the order they first appear; a later shard's value keeps the key's place.
        assert_eq!(text("merge", &[r#"{"z":1,"a":1}"#, r#"{"m":2,"a":2}"#]), r#"{"z":1,"a":2,"m":2}"#);
        assert_eq!(
            text("sum", &[r#"{"z":{"y":1,"b":1},"a":1}"#, r#"{"c":1,"z":{"x":1,"y":1}}"#]),
            r#"{"z":{"y":2,"b":1,"x":1},"a":1,"c":1}"#
        );
    }

    #[test]
    fn unknown_strategy_names_the_known_ones() {
        let err = "median".parse::<Strategy>().unwrap_err();
        assert!(err.contains("concat") && err.contains("topk:FIELD:K"), "{err}");
    }
}
