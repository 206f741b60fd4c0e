//! A typed client for the admin API every podkit command serves.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Once;
use std::time::Duration;

use serde_json::Value;

/// Talks to one podkit process' admin listener.
#[derive(Debug, Clone)]
pub struct AdminClient {
    base: String,
    http: reqwest::blocking::Client,
    token: Option<String>,
}

/// An HTTP answer: status and body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

impl AdminClient {
    pub fn new(addr: SocketAddr) -> Self {
        install_crypto_provider();
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(30))
            .no_proxy()
            .build()
            .expect("static client configuration");
        Self { base: format!("http://{addr}"), http, token: None }
    }

    /// Waits for `--admin-addr-file` to be written and connects to the address in it.
    pub fn from_addr_file(path: &Path) -> Self {
        let text = crate::wait_for_file(path, Duration::from_secs(20));
        let addr = text.trim().parse().unwrap_or_else(|e| panic!("bad address {text:?}: {e}"));
        Self::new(addr)
    }

    pub fn with_token(mut self, token: &str) -> Self {
        self.token = Some(token.to_string());
        self
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn get(&self, path: &str) -> Answer {
        self.send(self.http.get(format!("{}{path}", self.base)))
    }

    /// Starts a streaming GET (`/logs?follow=1`): the response reads as the body arrives.
    pub fn stream(&self, path: &str) -> reqwest::blocking::Response {
        let client = reqwest::blocking::Client::builder().no_proxy().build().expect("static client configuration");
        client
            .get(format!("{}{path}", self.base))
            .send()
            .unwrap_or_else(|e| panic!("admin request to {} failed: {e}", self.base))
    }

    pub fn post(&self, path: &str) -> Answer {
        self.send(self.http.post(format!("{}{path}", self.base)))
    }

    fn send(&self, mut req: reqwest::blocking::RequestBuilder) -> Answer {
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().unwrap_or_else(|e| panic!("admin request to {} failed: {e}", self.base));
        let status = resp.status().as_u16();
        let body = resp.text().unwrap_or_default();
        Answer { status, body }
    }

    pub fn healthy(&self) -> bool {
        self.get("/healthz").status == 200
    }

    pub fn ready(&self) -> bool {
        self.get("/readyz").status == 200
    }

    /// The reasons `/readyz` gives for not being ready (empty when ready).
    pub fn not_ready_reasons(&self) -> Vec<String> {
        let a = self.get("/readyz");
        a.json()["reasons"]
            .as_array()
            .map(|r| r.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    }

    pub fn metrics(&self) -> String {
        self.get("/metrics").body
    }

    /// The value of the first sample named exactly `name` (labels ignored), if any.
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.metrics().lines().find_map(|line| {
            let (sample, value) = line.rsplit_once(' ')?;
            let sample_name = sample.split('{').next()?;
            (sample_name == name).then(|| value.parse().ok()).flatten()
        })
    }

    /// The sum of every sample named exactly `name`, over all label sets (0 when none).
    pub fn metric_sum(&self, name: &str) -> f64 {
        self.metrics()
            .lines()
            .filter_map(|line| {
                let (sample, value) = line.rsplit_once(' ')?;
                (sample.split('{').next()? == name).then(|| value.parse::<f64>().ok()).flatten()
            })
            .sum()
    }

    /// `GET /logs` with the given query string (without `?`).
    pub fn logs(&self, query: &str) -> Vec<Value> {
        let a = self.get(&format!("/logs?{query}"));
        assert_eq!(a.status, 200, "/logs?{query}: {}", a.body);
        match a.json() {
            Value::Array(v) => v,
            other => panic!("/logs did not return an array: {other}"),
        }
    }

    pub fn config(&self) -> Value {
        self.get("/config").json()
    }

    pub fn shutdown(&self) -> Answer {
        self.post("/lifecycle/shutdown")
    }
}

/// Makes rustls use `ring`, so that a `reqwest` client can be built in a test. Idempotent.
pub fn install_crypto_provider() {
    static PROVIDER: Once = Once::new();
    PROVIDER.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
