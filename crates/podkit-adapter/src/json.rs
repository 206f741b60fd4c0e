//! JSON over HTTP, translated as prometheus-community/json_exporter 0.7 does it: a module (the
//! same YAML as json_exporter's `config.yml`) lists metrics, each a JSONPath into the app's JSON
//! document, with labels and values taken from it.
//!
//! Paths are written in json_exporter's dialect (kubectl's `{.a.b[*]}` templates). Each action
//! is rewritten into an RFC 9535 query at start, so a path that cannot be read is refused then,
//! instead of being logged at every scrape. Where json_exporter's behaviour is a trap, podkit
//! differs on purpose (see docs/adapter.md): numbers in labels keep their digits
//! (`1234567`, not `1.234567e+06`), numeric filters compare numbers (`@.count == 2`), an object
//! path that yields one array walks its items, a duplicate series is left out and counted
//! instead of failing the whole scrape, and a body that is not JSON marks the source down.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::Value;
use serde_json_path::JsonPath;

use crate::Problems;
use crate::expo::{Kind, Labels, Sample, Scrape};

/// The most of an answer that is read; a larger one is an error, not a memory spike.
const MAX_BODY: usize = 32 << 20;

// === config ===

/// A module, as json_exporter's `modules:` map holds it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ModuleConfig {
    #[serde(default)]
    pub(crate) headers: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) http_client_config: HttpClientConfig,
    pub(crate) body: Option<BodyConfig>,
    /// Statuses taken as an answer (default: any 2xx).
    #[serde(default)]
    pub(crate) valid_status_codes: Vec<u16>,
    #[serde(default)]
    pub(crate) metrics: Vec<MetricConfig>,
}

/// A request body: with one, the request is a POST.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BodyConfig {
    pub(crate) content: String,
    /// json_exporter renders the body as a Go template of the probe's query; podkit does not.
    #[serde(default)]
    pub(crate) templatize: bool,
}

/// The parts of Prometheus' `http_client_config` a module may use.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HttpClientConfig {
    pub(crate) basic_auth: Option<BasicAuth>,
    pub(crate) bearer_token: Option<String>,
    pub(crate) bearer_token_file: Option<PathBuf>,
    pub(crate) authorization: Option<Authorization>,
    #[serde(default)]
    pub(crate) tls_config: TlsConfig,
    pub(crate) follow_redirects: Option<bool>,
    /// Accepted for compatibility; podkit speaks HTTP/1.1 to the app.
    pub(crate) enable_http2: Option<bool>,
    pub(crate) proxy_url: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BasicAuth {
    pub(crate) username: String,
    pub(crate) password: Option<String>,
    pub(crate) password_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Authorization {
    #[serde(rename = "type")]
    pub(crate) kind: Option<String>,
    pub(crate) credentials: Option<String>,
    pub(crate) credentials_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsConfig {
    pub(crate) ca_file: Option<PathBuf>,
    pub(crate) cert_file: Option<PathBuf>,
    pub(crate) key_file: Option<PathBuf>,
    #[serde(default)]
    pub(crate) insecure_skip_verify: bool,
}

/// One metric of a module. The keys are json_exporter's, which are all lower case.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MetricConfig {
    pub(crate) name: String,
    pub(crate) path: String,
    pub(crate) help: Option<String>,
    #[serde(rename = "type", default)]
    pub(crate) kind: Option<String>,
    pub(crate) valuetype: Option<String>,
    #[serde(default)]
    pub(crate) labels: BTreeMap<String, Scalar>,
    #[serde(default)]
    pub(crate) values: BTreeMap<String, Scalar>,
    pub(crate) epochtimestamp: Option<String>,
    #[serde(default)]
    pub(crate) allow_missing_key: bool,
    /// json_exporter's README spells these two in camel case, and json_exporter then ignores
    /// them: read, warned about, and ignored the same way so that a scrape does not change.
    #[serde(rename = "epochTimestamp")]
    pub(crate) epoch_timestamp_camel: Option<String>,
    #[serde(rename = "valueType")]
    pub(crate) value_type_camel: Option<String>,
}

/// A YAML scalar read as the text json_exporter would see (`active: 1` is the template `1`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum Scalar {
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl Scalar {
    fn text(&self) -> String {
        match self {
            Scalar::Text(s) => s.clone(),
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Bool(b) => b.to_string(),
        }
    }
}

/// json_exporter's own file (`--config.file`), of which only `modules:` is read.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExporterFile {
    #[serde(default)]
    pub(crate) modules: BTreeMap<String, ModuleConfig>,
}

// === templates ===

/// One piece of a template: literal text, or a `{…}` action.
#[derive(Debug, Clone)]
enum Piece {
    Text(String),
    Query(JsonPath),
}

/// A json_exporter template: `{.a.b}`, `planet-{.location}`, or literal text.
#[derive(Debug, Clone)]
pub(crate) struct Template {
    pieces: Vec<Piece>,
}

/// What a template gave.
#[derive(Debug, PartialEq)]
enum Eval {
    /// An action matched nothing.
    Missing,
    /// One action's single JSON value, and nothing else: converted without going through text.
    One(Value),
    Text(String),
}

impl Template {
    pub(crate) fn parse(s: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut rest = s;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_string()));
            }
            let close =
                matching_brace(&rest[open..]).ok_or_else(|| format!("{s:?}: unclosed action ({{ without }})"))?;
            let action = &rest[open + 1..open + close];
            pieces.push(Piece::Query(compile_action(action).map_err(|e| format!("{s:?}: {e}"))?));
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_string()));
        }
        Ok(Template { pieces })
    }

    /// The single query of a template that is one action and nothing else.
    fn only_query(&self) -> Option<&JsonPath> {
        match self.pieces.as_slice() {
            [Piece::Query(q)] => Some(q),
            _ => None,
        }
    }

    fn eval(&self, doc: &Value) -> Eval {
        if let Some(q) = self.only_query() {
            let nodes = q.query(doc).all();
            return match nodes.as_slice() {
                [] => Eval::Missing,
                [one] => Eval::One((*one).clone()),
                many => Eval::Text(many.iter().map(|v| text_of(v)).collect::<Vec<_>>().join(" ")),
            };
        }
        let mut out = String::new();
        for p in &self.pieces {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Query(q) => {
                    let nodes = q.query(doc).all();
                    if nodes.is_empty() {
                        return Eval::Missing;
                    }
                    out.push_str(&nodes.iter().map(|v| text_of(v)).collect::<Vec<_>>().join(" "));
                }
            }
        }
        Eval::Text(out)
    }

    /// The template's text, for a label value: a missing action gives "".
    fn text(&self, doc: &Value) -> Result<String, String> {
        match self.eval(doc) {
            Eval::Missing => Err("matched nothing".into()),
            Eval::One(v) => Ok(text_of(&v)),
            Eval::Text(t) => Ok(t),
        }
    }
}

/// The length up to the `}` that closes the `{` at the start of `s`, skipping quoted text.
fn matching_brace(s: &str) -> Option<usize> {
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in s.char_indices().skip(1) {
        if escaped {
            escaped = false;
            continue;
        }
        match (quote, c) {
            (_, '\\') => escaped = true,
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '}') => return Some(i),
            (None, '{') => return None,
            (None, _) => {}
        }
    }
    None
}

/// Rewrites one kubectl JSONPath action (`.a.b[*]`, `..x`, `.m.*`, `[?(@.s=="x")]`) into RFC
/// 9535 and compiles it. Member names become bracketed (`['k-1']`), so names with `-` or an
/// escaped `\.` keep working as they do in kubectl.
fn compile_action(action: &str) -> Result<JsonPath, String> {
    let a = action.trim();
    if a.starts_with("range ") || a == "end" {
        return Err("{range}…{end} is not supported; select items with [*] and use type: object".into());
    }
    let mut out = String::from("$");
    let chars: Vec<char> = a.chars().collect();
    let mut i = 0;
    if matches!(chars.first(), Some('$' | '@')) {
        i = 1;
    }
    while i < chars.len() {
        match chars[i] {
            ' ' | '\t' => i += 1,
            '.' => {
                let descend = chars.get(i + 1) == Some(&'.');
                i += if descend { 2 } else { 1 };
                if descend {
                    out.push_str("..");
                }
                if chars.get(i) == Some(&'*') {
                    out.push_str(if descend { "*" } else { "[*]" });
                    i += 1;
                    continue;
                }
                let mut name = String::new();
                while let Some(&c) = chars.get(i) {
                    match c {
                        '\\' => {
                            if let Some(&n) = chars.get(i + 1) {
                                name.push(n);
                            }
                            i += 2;
                        }
                        ' ' | '\t' | '.' | ',' | '[' | ']' | '$' | '@' | '{' | '}' | '\r' | '\n' => break,
                        c => {
                            name.push(c);
                            i += 1;
                        }
                    }
                }
                if name.is_empty() {
                    if descend {
                        return Err(format!("{action:?}: a name must follow .."));
                    }
                    // A lone `.` (the current value, as in `{.}`).
                    continue;
                }
                out.push_str("['");
                for c in name.chars() {
                    if c == '\'' || c == '\\' {
                        out.push('\\');
                    }
                    out.push(c);
                }
                out.push_str("']");
            }
            '[' => {
                let start = i;
                let mut depth = 0usize;
                let mut quote: Option<char> = None;
                while i < chars.len() {
                    let c = chars[i];
                    match (quote, c) {
                        (Some(_), '\\') => i += 1,
                        (Some(q), c) if c == q => quote = None,
                        (Some(_), _) => {}
                        (None, '"' | '\'') => quote = Some(c),
                        (None, '[') => depth += 1,
                        (None, ']') => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    i += 1;
                }
                if i >= chars.len() {
                    return Err(format!("{action:?}: unterminated ["));
                }
                out.extend(&chars[start..=i]);
                i += 1;
            }
            c => return Err(format!("{action:?}: unexpected {c:?} (expected .name, ..name, [index] or [?(filter)])")),
        }
    }
    JsonPath::parse(&out).map_err(|e| format!("{action:?}: {e}"))
}

/// A JSON value as text, as kubectl's JSONPath prints it: strings as they are, other values as
/// compact JSON.
fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A value as a sample value: numbers, booleans (1/0), and strings that hold either.
fn number_of(v: &Value) -> Result<f64, String> {
    match v {
        Value::Number(n) => n.as_f64().ok_or_else(|| format!("{n} is not a number")),
        Value::Bool(b) => Ok(if *b { 1.0 } else { 0.0 }),
        Value::String(s) => number_of_text(s),
        Value::Null => Err("the value is null".into()),
        other => Err(format!("{} is not a number", truncate(&other.to_string()))),
    }
}

/// Text as json_exporter converts it: a float, or one of Go's spellings of a boolean.
fn number_of_text(s: &str) -> Result<f64, String> {
    if let Ok(f) = s.parse::<f64>() {
        return Ok(f);
    }
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(1.0),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(0.0),
        _ => Err(format!("{:?} is not a number", truncate(s))),
    }
}

fn truncate(s: &str) -> String {
    if s.len() <= 64 {
        return s.to_string();
    }
    let mut end = 64;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

// === compiled module ===

#[derive(Debug)]
struct Metric {
    /// For `type: object`, the prefix of each value's name.
    name: String,
    help: String,
    kind: Kind,
    /// `type: value`: the value's template. `type: object`: the path to the objects.
    path: Template,
    object: bool,
    labels: Vec<(String, Template)>,
    /// `type: object`: (series name, template relative to each object).
    values: Vec<(String, Template)>,
    timestamp: Option<Template>,
    allow_missing: bool,
}

/// A module ready to scrape with: compiled templates, the request it sends, its client.
#[derive(Debug)]
pub(crate) struct Module {
    metrics: Vec<Metric>,
    headers: HeaderMap,
    body: Option<String>,
    valid_status: Vec<u16>,
    auth: Option<Auth>,
    client: reqwest::Client,
}

#[derive(Debug)]
enum Auth {
    Basic { user: String, password: Secret },
    Header { scheme: String, credentials: Secret },
}

/// A secret given inline or read from a file at each request (so a rotated file is used).
#[derive(Debug)]
enum Secret {
    Inline(String),
    File(PathBuf),
}

impl Secret {
    fn read(&self) -> Result<String, String> {
        match self {
            Secret::Inline(s) => Ok(s.clone()),
            Secret::File(p) => std::fs::read_to_string(p)
                .map(|s| s.trim_end_matches(['\r', '\n']).to_string())
                .map_err(|e| format!("{}: {e}", p.display())),
        }
    }
}

impl Module {
    /// Checks every metric (names, types, label names, paths) and builds the module's client.
    /// Warnings are for keys json_exporter also ignores.
    pub(crate) fn compile(cfg: &ModuleConfig, warn: &mut Vec<String>) -> Result<Module, String> {
        let mut metrics = Vec::new();
        let mut kinds: BTreeMap<String, (Kind, Vec<String>)> = BTreeMap::new();
        for (i, m) in cfg.metrics.iter().enumerate() {
            let metric = compile_metric(m, warn).map_err(|e| format!("metrics[{i}] ({}): {e}", m.name))?;
            let label_names: Vec<String> = metric.labels.iter().map(|(k, _)| k.clone()).collect();
            let names: Vec<String> = if metric.object {
                metric.values.iter().map(|(n, _)| n.clone()).collect()
            } else {
                vec![metric.name.clone()]
            };
            for n in names {
                if let Some((k, l)) = kinds.get(&n)
                    && (*k != metric.kind || *l != label_names)
                {
                    return Err(format!(
                        "metrics[{i}] ({}): {n} is also defined with another type or other labels; one name needs one type and one set of labels",
                        m.name
                    ));
                }
                kinds.insert(n, (metric.kind, label_names.clone()));
            }
            metrics.push(metric);
        }
        if cfg.body.as_ref().is_some_and(|b| b.templatize) {
            return Err("body.templatize is not supported: give the body as it is sent".into());
        }
        let mut headers = HeaderMap::new();
        for (k, v) in &cfg.headers {
            let name = HeaderName::try_from(k.as_str()).map_err(|e| format!("headers: {k:?}: {e}"))?;
            let value = HeaderValue::try_from(v.as_str()).map_err(|e| format!("headers: {k}: {e}"))?;
            headers.insert(name, value);
        }
        if !headers.contains_key(ACCEPT) {
            headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        }
        let hc = &cfg.http_client_config;
        let auth = auth_of(hc)?;
        if hc.enable_http2 == Some(true) {
            warn.push("http_client_config.enable_http2 has no effect: podkit speaks HTTP/1.1 to the app".into());
        }
        let client = client_of(hc)?;
        Ok(Module {
            metrics,
            headers,
            body: cfg.body.as_ref().map(|b| b.content.clone()),
            valid_status: cfg.valid_status_codes.clone(),
            auth,
            client,
        })
    }
}

fn compile_metric(m: &MetricConfig, warn: &mut Vec<String>) -> Result<Metric, String> {
    if m.epoch_timestamp_camel.is_some() {
        warn.push(format!(
            "{}: epochTimestamp is ignored, as json_exporter ignores it; spell it epochtimestamp to use it",
            m.name
        ));
    }
    if m.value_type_camel.is_some() {
        warn.push(format!(
            "{}: valueType is ignored, as json_exporter ignores it (the metric stays untyped); spell it valuetype to use it",
            m.name
        ));
    }
    let kind = match m.valuetype.as_deref() {
        None | Some("untyped") => Kind::Untyped,
        Some("gauge") => Kind::Gauge,
        Some("counter") => Kind::Counter,
        Some(other) => return Err(format!("valuetype {other:?}: expected gauge, counter or untyped")),
    };
    let object = match m.kind.as_deref() {
        None | Some("value") => false,
        Some("object") => true,
        Some(other) => return Err(format!("type {other:?}: expected value or object")),
    };
    let mut labels = Vec::new();
    for (k, v) in &m.labels {
        if !crate::expo::valid_label_name(k) {
            return Err(format!("label name {k:?} is not valid; expected [a-zA-Z_][a-zA-Z0-9_]*"));
        }
        labels.push((k.clone(), Template::parse(&v.text()).map_err(|e| format!("labels.{k}: {e}"))?));
    }
    let path = Template::parse(&m.path).map_err(|e| format!("path: {e}"))?;
    let mut values = Vec::new();
    if object {
        if path.only_query().is_none() {
            return Err(format!("path {:?}: an object path is one {{…}} action and nothing else", m.path));
        }
        if m.values.is_empty() {
            return Err("type: object needs values: (each becomes the series NAME_KEY)".into());
        }
        for (k, v) in &m.values {
            let name = format!("{}_{k}", m.name);
            if !crate::expo::valid_metric_name(&name) {
                return Err(format!("{name:?} is not a valid metric name"));
            }
            values.push((name, Template::parse(&v.text()).map_err(|e| format!("values.{k}: {e}"))?));
        }
    } else {
        if !crate::expo::valid_metric_name(&m.name) {
            return Err(format!("{:?} is not a valid metric name; expected [a-zA-Z_:][a-zA-Z0-9_:]*", m.name));
        }
        if !m.values.is_empty() {
            return Err("values: is for type: object".into());
        }
    }
    let timestamp =
        m.epochtimestamp.as_deref().map(Template::parse).transpose().map_err(|e| format!("epochtimestamp: {e}"))?;
    Ok(Metric {
        name: m.name.clone(),
        help: m.help.clone().unwrap_or_else(|| m.name.clone()),
        kind,
        path,
        object,
        labels,
        values,
        timestamp,
        allow_missing: m.allow_missing_key,
    })
}

fn auth_of(hc: &HttpClientConfig) -> Result<Option<Auth>, String> {
    let secret = |inline: &Option<String>, file: &Option<PathBuf>, what: &str| -> Result<Secret, String> {
        match (inline, file) {
            (Some(s), None) => Ok(Secret::Inline(s.clone())),
            (None, Some(p)) => {
                let s = Secret::File(p.clone());
                s.read().map_err(|e| format!("http_client_config: {what}: {e}"))?;
                Ok(s)
            }
            (None, None) => Ok(Secret::Inline(String::new())),
            (Some(_), Some(_)) => Err(format!("http_client_config: give {what} or {what}_file, not both")),
        }
    };
    let given = [
        hc.basic_auth.is_some(),
        hc.bearer_token.is_some() || hc.bearer_token_file.is_some(),
        hc.authorization.is_some(),
    ];
    if given.iter().filter(|g| **g).count() > 1 {
        return Err("http_client_config: give one of basic_auth, bearer_token(_file) and authorization".into());
    }
    if let Some(b) = &hc.basic_auth {
        return Ok(Some(Auth::Basic {
            user: b.username.clone(),
            password: secret(&b.password, &b.password_file, "basic_auth.password")?,
        }));
    }
    if hc.bearer_token.is_some() || hc.bearer_token_file.is_some() {
        return Ok(Some(Auth::Header {
            scheme: "Bearer".into(),
            credentials: secret(&hc.bearer_token, &hc.bearer_token_file, "bearer_token")?,
        }));
    }
    if let Some(a) = &hc.authorization {
        return Ok(Some(Auth::Header {
            scheme: a.kind.clone().unwrap_or_else(|| "Bearer".into()),
            credentials: secret(&a.credentials, &a.credentials_file, "authorization.credentials")?,
        }));
    }
    Ok(None)
}

fn client_of(hc: &HttpClientConfig) -> Result<reqwest::Client, String> {
    let mut b = reqwest::Client::builder().user_agent(concat!("podkit-adapter/", env!("CARGO_PKG_VERSION"))).redirect(
        if hc.follow_redirects == Some(false) {
            reqwest::redirect::Policy::none()
        } else {
            reqwest::redirect::Policy::limited(10)
        },
    );
    b = match &hc.proxy_url {
        Some(p) => b.proxy(reqwest::Proxy::all(p).map_err(|e| format!("http_client_config.proxy_url {p:?}: {e}"))?),
        None => b.no_proxy(),
    };
    let tls = &hc.tls_config;
    if let Some(ca) = &tls.ca_file {
        let pem = std::fs::read(ca).map_err(|e| format!("tls_config.ca_file {}: {e}", ca.display()))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("tls_config.ca_file {}: {e}", ca.display()))?
        {
            b = b.add_root_certificate(cert);
        }
    }
    match (&tls.cert_file, &tls.key_file) {
        (Some(c), Some(k)) => {
            let mut pem = std::fs::read(c).map_err(|e| format!("tls_config.cert_file {}: {e}", c.display()))?;
            pem.extend(std::fs::read(k).map_err(|e| format!("tls_config.key_file {}: {e}", k.display()))?);
            b = b.identity(
                reqwest::Identity::from_pem(&pem).map_err(|e| format!("tls_config: client certificate: {e}"))?,
            );
        }
        (None, None) => {}
        _ => return Err("tls_config: give cert_file and key_file together".into()),
    }
    if tls.insecure_skip_verify {
        b = b.danger_accept_invalid_certs(true);
    }
    podkit_core::http::build(b)
}

// === scraping ===

/// One JSON endpoint and the module that reads it.
#[derive(Debug)]
pub(crate) struct JsonSource {
    url: reqwest::Url,
    module: std::sync::Arc<Module>,
}

impl JsonSource {
    pub(crate) fn new(url: reqwest::Url, module: std::sync::Arc<Module>) -> JsonSource {
        JsonSource { url, module }
    }

    /// Fetches the document and translates it. A failed request or a body that is not JSON is
    /// an error (the source is down); a metric that cannot be read is left out and counted.
    pub(crate) async fn collect(&self, out: &mut Scrape, timeout: Duration) -> Result<Problems, String> {
        let m = &self.module;
        let mut req = match &m.body {
            Some(b) => m.client.post(self.url.clone()).body(b.clone()),
            None => m.client.get(self.url.clone()),
        };
        req = req.headers(m.headers.clone()).timeout(timeout);
        match &m.auth {
            Some(Auth::Basic { user, password }) => req = req.basic_auth(user, Some(password.read()?)),
            Some(Auth::Header { scheme, credentials }) => {
                req = req.header(AUTHORIZATION, format!("{scheme} {}", credentials.read()?));
            }
            None => {}
        }
        let shown = podkit_core::http::shown_url(self.url.as_str());
        let mut resp = req.send().await.map_err(|e| format!("{shown}: {}", podkit_core::error_chain(&e)))?;
        let status = resp.status();
        let accepted =
            if m.valid_status.is_empty() { status.is_success() } else { m.valid_status.contains(&status.as_u16()) };
        if !accepted {
            return Err(format!("{shown} answered {status}"));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| format!("{shown}: {}", podkit_core::error_chain(&e)))? {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(format!("{shown}: the answer is larger than {} MiB", MAX_BODY >> 20));
            }
            body.extend_from_slice(&chunk);
        }
        let doc: Value = serde_json::from_slice(&body).map_err(|e| format!("{shown}: the answer is not JSON: {e}"))?;
        Ok(translate(m, &doc, out))
    }
}

/// Translates one document with a module's metrics.
fn translate(m: &Module, doc: &Value, out: &mut Scrape) -> Problems {
    let mut problems = Problems::default();
    let mut seen: HashSet<(String, Labels)> = HashSet::new();
    let mut emit = |name: &str, metric: &Metric, labels: Labels, value: f64, ts: Option<i64>, p: &mut Problems| {
        if !seen.insert((name.to_string(), labels.clone())) {
            p.add(format!("{name}{labels:?}: a second series with the same labels (left out)"));
            return;
        }
        out.add_sample(name, &metric.help, metric.kind, Sample { suffix: "", labels, value, timestamp_ms: ts });
    };
    for metric in &m.metrics {
        if metric.object {
            let q = metric.path.only_query().expect("checked at compile");
            let nodes = q.query(doc).all();
            // One array is walked item by item, as `[*]` would (json_exporter yields nothing).
            let items: Vec<&Value> = match nodes.as_slice() {
                [Value::Array(a)] => a.iter().collect(),
                _ => nodes,
            };
            for item in items {
                let labels = labels_of(metric, item, &mut problems);
                let ts = timestamp_of(metric, item, &mut problems);
                for (name, t) in &metric.values {
                    match value_of(t, item) {
                        Ok(Some(v)) => emit(name, metric, labels.clone(), v, ts, &mut problems),
                        Ok(None) if metric.allow_missing => {}
                        Ok(None) => problems.add(format!("{name}: {} matched nothing", describe(t))),
                        Err(e) => problems.add(format!("{name}: {e}")),
                    }
                }
            }
        } else {
            match value_of(&metric.path, doc) {
                Ok(Some(v)) => {
                    let labels = labels_of(metric, doc, &mut problems);
                    let ts = timestamp_of(metric, doc, &mut problems);
                    emit(&metric.name, metric, labels, v, ts, &mut problems);
                }
                Ok(None) if metric.allow_missing => {}
                Ok(None) => problems.add(format!("{}: the path matched nothing", metric.name)),
                Err(e) => problems.add(format!("{}: {e}", metric.name)),
            }
        }
    }
    problems
}

fn describe(t: &Template) -> &'static str {
    if t.only_query().is_some() { "the path" } else { "the template" }
}

/// The value of a template: None when it matched nothing.
fn value_of(t: &Template, doc: &Value) -> Result<Option<f64>, String> {
    match t.eval(doc) {
        Eval::Missing => Ok(None),
        Eval::One(v) if v.is_null() => Ok(None),
        Eval::One(v) => number_of(&v).map(Some),
        Eval::Text(s) => number_of_text(&s).map(Some),
    }
}

/// The labels; one that cannot be read is "" (and counted), as json_exporter writes it.
fn labels_of(metric: &Metric, doc: &Value, problems: &mut Problems) -> Labels {
    metric
        .labels
        .iter()
        .map(|(k, t)| {
            let v = t.text(doc).unwrap_or_else(|e| {
                problems.add(format!("{}: label {k}: {e}", metric.name));
                String::new()
            });
            (k.clone(), v)
        })
        .collect()
}

/// The sample's timestamp in milliseconds, when the metric has one and it can be read.
fn timestamp_of(metric: &Metric, doc: &Value, problems: &mut Problems) -> Option<i64> {
    let t = metric.timestamp.as_ref()?;
    let parsed = match t.eval(doc) {
        Eval::Missing => Err("matched nothing".to_string()),
        Eval::One(Value::Number(n)) => n.as_i64().ok_or_else(|| format!("{n} is not a whole number of milliseconds")),
        Eval::One(v) => text_of(&v).parse::<i64>().map_err(|_| format!("{v} is not a whole number of milliseconds")),
        Eval::Text(s) => s.parse::<i64>().map_err(|_| format!("{s:?} is not a whole number of milliseconds")),
    };
    match parsed {
        Ok(ts) => Some(ts),
        Err(e) if metric.allow_missing && e == "matched nothing" => None,
        Err(e) => {
            problems.add(format!("{}: epochtimestamp: {e}", metric.name));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(yaml: &str) -> Module {
        let cfg: ModuleConfig = serde_saphyr::from_str(yaml).unwrap();
        Module::compile(&cfg, &mut Vec::new()).unwrap()
    }

    /// json_exporter's examples/config.yml and examples/data.json, with the outputs its README
    /// shows.
    #[test]
    fn json_exporters_example() {
        let m = module(
            r#"
metrics:
- name: example_global_value
  path: "{ .counter }"
  help: Example of a top-level global value scrape in the json
  labels:
    environment: beta # static label
    location: "planet-{.location}"          # dynamic label
- name: example_timestamped_value
  type: object
  path: '{ .values[?(@.state == "INACTIVE")] }'
  epochTimestamp: '{ .timestamp }'
  help: Example of a timestamped value scrape in the json
  labels:
    environment: beta # static label
  values:
    count: '{.count}' # dynamic value
- name: example_value
  type: object
  help: Example of sub-level value scrapes from a json
  path: '{.values[?(@.state == "ACTIVE")]}'
  labels:
    environment: beta # static label
    id: '{.id}'          # dynamic label
  values:
    active: 1      # static value
    count: '{.count}' # dynamic value
    boolean: '{.some_boolean}'
"#,
        );
        let doc: Value = serde_json::from_str(
            r#"{
    "counter": 1234,
    "timestamp": 1657568506,
    "values": [
        {"id": "id-A", "count": 1, "some_boolean": true, "state": "ACTIVE"},
        {"id": "id-B", "count": 2, "some_boolean": true, "state": "INACTIVE"},
        {"id": "id-C", "count": 3, "some_boolean": false, "state": "ACTIVE"}
    ],
    "location": "mars"
}"#,
        )
        .unwrap();
        let mut out = Scrape::new();
        let p = translate(&m, &doc, &mut out);
        assert_eq!(p.count, 0, "{:?}", p.first);
        let body = out.render();
        for line in [
            "example_global_value{environment=\"beta\",location=\"planet-mars\"} 1234",
            "example_value_active{environment=\"beta\",id=\"id-A\"} 1",
            "example_value_active{environment=\"beta\",id=\"id-C\"} 1",
            "example_value_boolean{environment=\"beta\",id=\"id-A\"} 1",
            "example_value_boolean{environment=\"beta\",id=\"id-C\"} 0",
            "example_value_count{environment=\"beta\",id=\"id-A\"} 1",
            "example_value_count{environment=\"beta\",id=\"id-C\"} 3",
            "example_timestamped_value_count{environment=\"beta\"} 2",
            "# TYPE example_value_count untyped",
        ] {
            assert!(body.lines().any(|l| l == line), "missing {line:?} in\n{body}");
        }
        assert_eq!(out.series(), 8, "{body}");
    }

    #[test]
    fn kubectl_paths_become_rfc9535() {
        let doc: Value = serde_json::from_str(
            r#"{"a": {"k-1": 5, "x.y": 6, "list": [1, 2, 3]}, "deep": {"n": {"count": 7}}, "m": {"p": {"v": 1}, "q": {"v": 2}}}"#,
        )
        .unwrap();
        let eval = |p: &str| Template::parse(p).unwrap().eval(&doc);
        assert_eq!(eval("{.a.k-1}"), Eval::One(Value::from(5)));
        assert_eq!(eval(r"{.a.x\.y}"), Eval::One(Value::from(6)));
        assert_eq!(eval("{$.a['k-1']}"), Eval::One(Value::from(5)));
        assert_eq!(eval("{.a.list[*]}"), Eval::Text("1 2 3".into()));
        assert_eq!(eval("{.a.list[-1]}"), Eval::One(Value::from(3)));
        assert_eq!(eval("{.a.list[0:2]}"), Eval::Text("1 2".into()));
        assert_eq!(eval("{..count}"), Eval::One(Value::from(7)));
        assert_eq!(eval("{.m.*.v}"), Eval::Text("1 2".into()));
        assert_eq!(eval("{.a.list[?(@ > 1)]}"), Eval::Text("2 3".into()));
        assert_eq!(eval("{.nope}"), Eval::Missing);
        assert_eq!(eval("x-{.deep.n.count}-{.a.k-1}"), Eval::Text("x-7-5".into()));
        for bad in ["{.a", "{range .a[*]}{.x}{end}", "{.a[0}", "{.a ^ b}"] {
            assert!(Template::parse(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn values_convert_as_json_exporter_converts_them() {
        for (v, want) in [
            (serde_json::json!(1.5), Some(1.5)),
            (serde_json::json!(true), Some(1.0)),
            (serde_json::json!("12.5"), Some(12.5)),
            (serde_json::json!("TRUE"), Some(1.0)),
            (serde_json::json!("f"), Some(0.0)),
            (serde_json::json!("NaN"), None),
        ] {
            let got = number_of(&v).ok();
            match want {
                Some(w) => assert_eq!(got, Some(w), "{v}"),
                None => assert!(got.is_some_and(f64::is_nan), "{v}"),
            }
        }
        assert!(number_of(&serde_json::json!("yes")).is_err());
        assert!(number_of(&serde_json::json!([1])).is_err());
    }

    #[test]
    fn problems_leave_one_series_out_and_keep_the_rest() {
        let m = module(
            r#"
metrics:
- name: up_things
  type: object
  path: '{.items}'
  valuetype: gauge
  labels: {id: '{.id}'}
  values: {size: '{.size}'}
- name: total
  path: '{.total}'
  valuetype: counter
- name: missing_ok
  path: '{.nothing}'
  allow_missing_key: true
- name: stamped
  path: '{.total}'
  epochtimestamp: '{.ts}'
"#,
        );
        let doc = serde_json::json!({
            "items": [{"id": 1234567, "size": 1}, {"id": 2, "size": "big"}, {"id": 2, "size": 3}, {"id": 2, "size": 4}],
            "total": 10,
            "ts": 1657568506000_i64
        });
        let mut out = Scrape::new();
        let p = translate(&m, &doc, &mut out);
        let body = out.render();
        assert!(body.contains("up_things_size{id=\"1234567\"} 1\n"), "{body}");
        assert!(body.contains("up_things_size{id=\"2\"} 3\n"), "{body}");
        assert!(body.contains("# TYPE total counter\ntotal 10\n"), "{body}");
        assert!(body.contains("stamped 10 1657568506000\n"), "{body}");
        assert!(!body.contains("missing_ok"), "{body}");
        // "big" is not a number, and the last item repeats id 2.
        assert_eq!(p.count, 2, "{:?}", p.first);
    }

    #[test]
    fn bad_modules_are_refused_with_the_metric_named() {
        for (yaml, says) in [
            ("metrics: [{name: a-b, path: '{.x}'}]", "not a valid metric name"),
            ("metrics: [{name: a, path: '{.x'}]", "unclosed"),
            ("metrics: [{name: a, path: '{.x}', type: list}]", "expected value or object"),
            ("metrics: [{name: a, path: '{.x}', type: object}]", "needs values"),
            ("metrics: [{name: a, path: '{.x}', valuetype: summary}]", "expected gauge, counter or untyped"),
            ("metrics: [{name: a, path: '{.x}', labels: {1x: y}}]", "label name"),
            ("metrics: [{name: a, path: '{.x}', valuetype: gauge}, {name: a, path: '{.y}'}]", "another type"),
            ("body: {content: x, templatize: true}", "templatize"),
        ] {
            let cfg: ModuleConfig = serde_saphyr::from_str(yaml).unwrap();
            let e = Module::compile(&cfg, &mut Vec::new()).unwrap_err();
            assert!(e.contains(says), "{yaml}: {e}");
        }
        let unknown = serde_saphyr::from_str::<ModuleConfig>("metrics: [{name: a, path: '{.x}', valueconverter: {}}]");
        assert!(unknown.is_err());
        let mut warn = Vec::new();
        let cfg: ModuleConfig =
            serde_saphyr::from_str("metrics: [{name: a, path: '{.x}', valueType: gauge, epochTimestamp: '{.t}'}]")
                .unwrap();
        Module::compile(&cfg, &mut warn).unwrap();
        assert_eq!(warn.len(), 2, "{warn:?}");
    }
}
