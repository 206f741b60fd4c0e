//! What the HTTP sinks share (the NDJSON POST, Loki and Elasticsearch): their URL options, the
//! client, authentication, gzip, and what an answer's status means for the batch.
//!
//! podkit's options ride in the sink URL's query and are taken out of it before anything is
//! sent: `gzip=true`, `timeout=10s`, `ca=/path/ca.pem`, `bearer_file=/path`,
//! `password_file=/path` (with `http://USER@host`), and per sink `tenant=` (Loki) and
//! `api_key_file=` (Elasticsearch). Secrets come from files, not the command line (where `ps`
//! shows them); a token file is read again for every batch, so a rotated token is picked up.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use url::Url;

use super::{Delivered, SendError, Sink};
use crate::record::{self, Record};

/// The default bound on one whole request (connect, send, answer).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A secret given inline (in the URL's user info) or as a file read at each use.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Secret {
    Inline(String),
    File(PathBuf),
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Secret::Inline(_) => f.write_str("Inline(<redacted>)"),
            Secret::File(p) => f.debug_tuple("File").field(p).finish(),
        }
    }
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Auth {
    None,
    Basic {
        user: String,
        password: Option<Secret>,
    },
    Bearer(Secret),
    /// Elasticsearch's `Authorization: ApiKey …` (the encoded key, as Kibana shows it).
    ApiKey(Secret),
}

/// An HTTP sink's target and options, parsed from its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HttpOptions {
    /// The target, without user info or podkit's options.
    pub(crate) url: Url,
    pub(crate) gzip: bool,
    pub(crate) timeout: Duration,
    pub(crate) ca: Option<PathBuf>,
    pub(crate) auth: Auth,
    pub(crate) headers: Vec<(String, String)>,
}

impl HttpOptions {
    /// Parses `url` (its scheme already made `http` or `https`). `extra` are the sink's own
    /// option names, returned by name; with `keep_unknown` other query pairs stay in the
    /// target URL (they are the receiver's), else they are an error.
    pub(crate) fn parse(
        given: &str,
        mut url: Url,
        extra: &[&str],
        keep_unknown: bool,
    ) -> Result<(HttpOptions, HashMap<String, String>), String> {
        if url.host_str().is_none_or(str::is_empty) {
            return Err(format!("{given}: no host"));
        }
        let mut opts = HttpOptions {
            url: url.clone(),
            gzip: false,
            timeout: DEFAULT_TIMEOUT,
            ca: None,
            auth: Auth::None,
            headers: Vec::new(),
        };
        let mut extras = HashMap::new();
        let mut kept = Vec::new();
        let (mut bearer, mut password_file, mut api_key) = (None, None, None);
        for (k, v) in url.query_pairs() {
            let file = || {
                if v.starts_with('/') {
                    Ok(PathBuf::from(&*v))
                } else {
                    Err(format!("{given}: {k}={v}: give an absolute path"))
                }
            };
            match &*k {
                "gzip" => {
                    opts.gzip = match &*v {
                        "true" | "1" => true,
                        "false" | "0" => false,
                        _ => return Err(format!("{given}: gzip={v}: expected true or false")),
                    }
                }
                "timeout" => opts.timeout = super::parse_timeout(given, &v)?,
                "ca" => opts.ca = Some(file()?),
                "bearer_file" => bearer = Some(file()?),
                "password_file" => password_file = Some(file()?),
                "api_key_file" if extra.contains(&"api_key_file") => api_key = Some(file()?),
                k if extra.contains(&k) => {
                    extras.insert(k.to_string(), v.into_owned());
                }
                _ if keep_unknown => kept.push((k.into_owned(), v.into_owned())),
                other => {
                    let mut known = vec!["gzip", "timeout", "ca", "bearer_file", "password_file"];
                    known.extend(extra);
                    return Err(format!("{given}: unknown option {other} (known: {})", known.join(", ")));
                }
            }
        }
        let user = percent(url.username());
        let inline_password = url.password().map(percent);
        opts.auth = match (user.is_empty(), inline_password, password_file, bearer, api_key) {
            (true, None, None, None, None) => Auth::None,
            (false, None, None, None, None) => Auth::Basic { user, password: None },
            (false, Some(p), None, None, None) => Auth::Basic { user, password: Some(Secret::Inline(p)) },
            (false, None, Some(f), None, None) => Auth::Basic { user, password: Some(Secret::File(f)) },
            (true, None, None, Some(f), None) => Auth::Bearer(Secret::File(f)),
            (true, None, None, None, Some(f)) => Auth::ApiKey(Secret::File(f)),
            (true, None, Some(_), None, None) => {
                return Err(format!("{given}: password_file needs a user name: http://USER@host/…"));
            }
            _ => {
                return Err(format!(
                    "{given}: give one kind of authentication (user info, bearer_file or api_key_file)"
                ));
            }
        };
        url.set_username("").and_then(|()| url.set_password(None)).map_err(|()| format!("{given}: bad user info"))?;
        if kept.is_empty() {
            url.set_query(None);
        } else {
            url.query_pairs_mut().clear().extend_pairs(&kept);
        }
        opts.url = url;
        Ok((opts, extras))
    }

    /// The target as shown in metrics and logs: no user info, no query (either may carry a
    /// secret).
    pub(crate) fn display(&self, scheme_prefix: &str) -> String {
        let mut u = self.url.clone();
        u.set_query(None);
        format!("{scheme_prefix}{u}")
    }
}

fn percent(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| s.to_string())
}

/// A connected HTTP target: the client, and the encoded body of the batch being sent.
#[derive(Debug)]
pub(crate) struct HttpTarget {
    client: reqwest::Client,
    pub(crate) opts: HttpOptions,
    headers: HeaderMap,
    /// The last batch's body: a retry of the same batch sends the same bytes without encoding
    /// (and compressing) them again.
    cached: Option<(Arc<[Record]>, Body)>,
}

/// An encoded batch.
#[derive(Debug, Clone)]
pub(crate) struct Body {
    /// What goes on the wire (compressed with `gzip=true`).
    pub(crate) wire: Bytes,
    /// Its length before compression.
    pub(crate) len: u64,
}

impl HttpTarget {
    /// Checks that the secret files can be read and builds the client.
    pub(crate) fn open(opts: HttpOptions) -> Result<HttpTarget, String> {
        match &opts.auth {
            Auth::Basic { password: Some(s), .. } | Auth::Bearer(s) | Auth::ApiKey(s) => {
                s.read()?;
            }
            Auth::Basic { password: None, .. } | Auth::None => {}
        }
        let mut builder = reqwest::Client::builder()
            .timeout(opts.timeout)
            .connect_timeout(opts.timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("podkit/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &opts.ca {
            let pem = std::fs::read(ca).map_err(|e| format!("ca {}: {e}", ca.display()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| format!("ca {}: {e}", ca.display()))? {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = podkit_core::http::build(builder)?;
        let mut headers = HeaderMap::new();
        for (k, v) in &opts.headers {
            let name = HeaderName::try_from(k.as_str()).map_err(|e| format!("header {k}: {e}"))?;
            let value = HeaderValue::try_from(v.as_str()).map_err(|e| format!("header {k}: {e}"))?;
            headers.insert(name, value);
        }
        Ok(HttpTarget { client, opts, headers, cached: None })
    }

    /// The batch encoded by `encode`, gzipped if asked; encoded once per batch.
    pub(crate) async fn body(
        &mut self,
        records: &Arc<[Record]>,
        encode: fn(&[Record]) -> Vec<u8>,
    ) -> Result<Body, SendError> {
        if let Some((r, body)) = &self.cached
            && Arc::ptr_eq(r, records)
        {
            return Ok(body.clone());
        }
        let gzip = self.opts.gzip;
        let batch = records.clone();
        // Encoding a batch of thousands of records (and compressing it) is CPU work: it runs
        // beside the runtime that serves the admin endpoints, not on it.
        let body = tokio::task::spawn_blocking(move || {
            let raw = encode(&batch);
            let len = raw.len() as u64;
            let wire = if gzip {
                let mut gz =
                    flate2::write::GzEncoder::new(Vec::with_capacity(raw.len() / 4), flate2::Compression::fast());
                gz.write_all(&raw).and_then(|()| gz.finish()).expect("gzip into memory")
            } else {
                raw
            };
            Body { wire: Bytes::from(wire), len }
        })
        .await
        .map_err(|e| SendError::Retry(format!("encoding the batch: {e}")))?;
        self.cached = Some((records.clone(), body.clone()));
        Ok(body)
    }

    /// POSTs `body`; an answer of any status is `Ok`, a failure to get one is `Retry`.
    pub(crate) async fn post(&self, url: Url, body: &Body, content_type: &str) -> Result<Answer, SendError> {
        let mut req = self
            .client
            .post(url)
            .headers(self.headers.clone())
            .header(CONTENT_TYPE, content_type)
            .body(body.wire.clone());
        if self.opts.gzip {
            req = req.header(CONTENT_ENCODING, "gzip");
        }
        req = match &self.opts.auth {
            Auth::None => req,
            Auth::Basic { user, password } => {
                let password = password.as_ref().map(Secret::read).transpose().map_err(SendError::Retry)?;
                req.basic_auth(user, password)
            }
            Auth::Bearer(s) => req.bearer_auth(s.read().map_err(SendError::Retry)?),
            Auth::ApiKey(s) => {
                let mut v = HeaderValue::try_from(format!("ApiKey {}", s.read().map_err(SendError::Retry)?))
                    .map_err(|e| SendError::Retry(format!("api key: {e}")))?;
                v.set_sensitive(true);
                req.header(AUTHORIZATION, v)
            }
        };
        let resp = req.send().await.map_err(|e| SendError::Retry(podkit_core::error_chain(&e)))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| SendError::Retry(format!("reading the answer: {}", podkit_core::error_chain(&e))))?;
        Ok(Answer { status, body })
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) body: Bytes,
}

impl Answer {
    /// What a non-success status means for the batch. Only an answer that says the records
    /// themselves are wrong rejects them (they go to the dead-letter file); a server that is
    /// down, busy, or refuses our credentials or path is tried again (fixing it delivers them).
    pub(crate) fn failure(&self) -> SendError {
        let snippet = String::from_utf8_lossy(&self.body[..self.body.len().min(512)]).trim().to_string();
        let why = format!("answered {}: {snippet}", self.status);
        match self.status.as_u16() {
            401 | 403 | 404 | 408 | 409 | 425 | 429 => SendError::Retry(why),
            400..=499 => SendError::Reject(why),
            _ => SendError::Retry(why),
        }
    }
}

/// `http(s)://…`: the batch as NDJSON in one POST.
#[derive(Debug)]
pub(crate) struct HttpSink {
    target: HttpTarget,
}

impl HttpSink {
    pub(crate) fn open(opts: HttpOptions) -> Result<HttpSink, String> {
        Ok(HttpSink { target: HttpTarget::open(opts)? })
    }
}

fn ndjson(records: &[Record]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(records.len() * 256);
    for r in records {
        record::write_ndjson(&mut buf, r);
    }
    buf
}

impl Sink for HttpSink {
    async fn send(&mut self, records: Arc<[Record]>) -> Result<Delivered, SendError> {
        let body = self.target.body(&records, ndjson).await?;
        let answer = self.target.post(self.target.opts.url.clone(), &body, "application/x-ndjson").await?;
        if !answer.status.is_success() {
            return Err(answer.failure());
        }
        Ok(Delivered { records: records.len() as u64, bytes: body.len, ..Delivered::default() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str, extra: &[&str], keep: bool) -> Result<HttpOptions, String> {
        HttpOptions::parse(s, Url::parse(s).unwrap(), extra, keep).map(|(o, _)| o)
    }

    #[test]
    fn options_leave_the_url_and_the_receivers_own_query_stays() {
        let o = parse("http://u:p%40ss@h:1/in?gzip=true&timeout=5s&app=x", &[], true).unwrap();
        assert_eq!(o.url.as_str(), "http://h:1/in?app=x");
        assert!(o.gzip);
        assert_eq!(o.timeout, Duration::from_secs(5));
        assert_eq!(o.auth, Auth::Basic { user: "u".into(), password: Some(Secret::Inline("p@ss".into())) });
        assert_eq!(o.display("http+"), "http+http://h:1/in");
        assert!(!format!("{o:?}").contains("p@ss"), "secrets stay out of Debug");
    }

    #[test]
    fn bad_options_say_why() {
        assert!(parse("http://h/x?gzip=yes", &[], true).unwrap_err().contains("gzip=yes"));
        assert!(parse("http://h/x?colour=red", &[], false).unwrap_err().contains("unknown option colour"));
        assert!(parse("http://h/x?bearer_file=tok", &[], true).unwrap_err().contains("absolute path"));
        assert!(parse("http://u:p@h/x?bearer_file=/t", &[], true).unwrap_err().contains("one kind"));
        assert!(parse("http://h/x?password_file=/p", &[], true).unwrap_err().contains("user name"));
        assert!(parse("http://h/x?timeout=0s", &[], true).unwrap_err().contains("timeout"));
    }

    #[test]
    fn statuses_retry_unless_the_records_are_wrong() {
        let a = |code: u16| Answer { status: StatusCode::from_u16(code).unwrap(), body: Bytes::from_static(b"no") };
        for code in [400, 413, 422] {
            assert!(matches!(a(code).failure(), SendError::Reject(_)), "{code}");
        }
        for code in [401, 403, 404, 408, 429, 500, 502, 503] {
            assert!(matches!(a(code).failure(), SendError::Retry(_)), "{code}");
        }
    }
}
