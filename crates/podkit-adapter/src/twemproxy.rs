//! twemproxy (nutcracker) and `podkit ambassador`: the stats port's JSON, per pool and per
//! server. The port writes one JSON document to each new connection and closes it.
//!
//! The types follow nutcracker's own declarations (`nc_stats.h`: STATS_COUNTER, STATS_GAUGE,
//! STATS_TIMESTAMP); counters get `_total`. Fields this table does not know (a newer
//! nutcracker, or podkit's own additions) are exported as untyped series under the same
//! prefix, so nothing the proxy reports is hidden.

use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncReadExt;

use crate::expo::{Kind, Scrape};

/// At most this much JSON is read: a proxy with thousands of servers stays far below it.
const MAX_BODY: u64 = 16 << 20;

/// (field, metric name after `twemproxy_pool_`, kind, help)
const POOL: &[(&str, &str, Kind, &str)] = &[
    ("client_eof", "client_eof_total", Kind::Counter, "Clients that closed their connection (EOF)"),
    ("client_err", "client_errors_total", Kind::Counter, "Client connections that ended with an error"),
    ("client_connections", "client_connections", Kind::Gauge, "Open client connections"),
    ("server_ejects", "server_ejects_total", Kind::Counter, "Times a server was ejected from the pool"),
    ("forward_error", "forward_errors_total", Kind::Counter, "Requests that could not be forwarded to a server"),
    ("fragments", "fragments_total", Kind::Counter, "Fragments created from multi-key requests"),
];

/// (field, metric name after `twemproxy_server_`, kind, help)
const SERVER: &[(&str, &str, Kind, &str)] = &[
    ("server_eof", "eof_total", Kind::Counter, "Times the server closed its connection (EOF)"),
    ("server_err", "errors_total", Kind::Counter, "Server connections that ended with an error"),
    ("server_timedout", "timedout_total", Kind::Counter, "Requests to the server that timed out"),
    ("server_connections", "connections", Kind::Gauge, "Open connections to the server"),
    ("requests", "requests_total", Kind::Counter, "Requests sent to the server"),
    ("request_bytes", "request_bytes_total", Kind::Counter, "Request bytes sent to the server"),
    ("responses", "responses_total", Kind::Counter, "Responses received from the server"),
    ("response_bytes", "response_bytes_total", Kind::Counter, "Response bytes received from the server"),
    ("in_queue", "in_queue", Kind::Gauge, "Requests waiting to be sent to the server"),
    ("in_queue_bytes", "in_queue_bytes", Kind::Gauge, "Bytes of requests waiting to be sent to the server"),
    ("out_queue", "out_queue", Kind::Gauge, "Requests sent and waiting for the server's response"),
    ("out_queue_bytes", "out_queue_bytes", Kind::Gauge, "Bytes of requests waiting for the server's response"),
];

#[derive(Debug)]
pub(crate) struct TwemproxySource {
    addr: String,
}

impl TwemproxySource {
    pub(crate) fn new(addr: String) -> Self {
        TwemproxySource { addr }
    }

    pub(crate) async fn collect(&self, out: &mut Scrape, timeout: Duration) -> Result<(), String> {
        let mut stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&self.addr))
            .await
            .map_err(|_| format!("cannot connect to {}: no answer within {timeout:?}", self.addr))?
            .map_err(|e| format!("cannot connect to {}: {e}", self.addr))?;
        let mut body = Vec::new();
        (&mut stream).take(MAX_BODY + 1).read_to_end(&mut body).await.map_err(|e| format!("read: {e}"))?;
        if body.len() as u64 > MAX_BODY {
            return Err(format!("the stats answer is larger than {MAX_BODY} bytes"));
        }
        let doc: Value = serde_json::from_slice(&body).map_err(|e| format!("the stats port did not send JSON: {e}"))?;
        translate(&doc, out)
    }
}

/// Translates one stats document.
pub(crate) fn translate(doc: &Value, out: &mut Scrape) -> Result<(), String> {
    let top = doc.as_object().ok_or("the stats document is not a JSON object")?;
    let str_of = |k: &str| top.get(k).and_then(Value::as_str).unwrap_or("");
    out.gauge(
        "twemproxy_info",
        "The proxy's version and host (value 1)",
        &[("version", str_of("version")), ("source", str_of("source")), ("service", str_of("service"))],
        1.0,
    );
    let num = |k: &str| top.get(k).and_then(Value::as_f64);
    if let Some(v) = num("uptime") {
        out.gauge("twemproxy_uptime_seconds", "Seconds since the proxy started", &[], v);
    }
    if let Some(v) = num("total_connections") {
        out.counter("twemproxy_connections_total", "Client connections accepted since start", &[], v);
    }
    if let Some(v) = num("curr_connections") {
        out.gauge("twemproxy_current_connections", "Open connections (clients and servers)", &[], v);
    }
    for (pool, stats) in top {
        let Some(stats) = stats.as_object() else { continue };
        for (field, value) in stats {
            match value {
                Value::Object(server) => {
                    let labels = [("pool", pool.as_str()), ("server", field.as_str())];
                    for (k, v) in server {
                        let Some(v) = v.as_f64() else { continue };
                        if k == "server_ejected_at" {
                            // Microseconds since the epoch; 0 when never ejected.
                            out.gauge(
                                "twemproxy_server_ejected_at_timestamp_seconds",
                                "When the server was last ejected, Unix time (0: never)",
                                &labels,
                                v / 1e6,
                            );
                            continue;
                        }
                        emit(out, "twemproxy_server_", SERVER, k, &labels, v);
                    }
                }
                v => {
                    if let Some(v) = v.as_f64() {
                        emit(out, "twemproxy_pool_", POOL, field, &[("pool", pool.as_str())], v);
                    }
                }
            }
        }
    }
    Ok(())
}

fn emit(
    out: &mut Scrape,
    prefix: &str,
    table: &[(&str, &str, Kind, &str)],
    field: &str,
    labels: &[(&str, &str)],
    v: f64,
) {
    match table.iter().find(|(f, ..)| *f == field) {
        Some((_, name, kind, help)) => out.add(&format!("{prefix}{name}"), help, *kind, "", labels, v),
        None => {
            let name = format!("{prefix}{}", crate::expo::sanitize_name(field));
            out.add(&name, &format!("{field}, as the stats port reports it"), Kind::Untyped, "", labels, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_and_servers() {
        let doc: Value = serde_json::from_str(
            r#"{"service":"nutcracker","source":"h","version":"0.5.0","uptime":10,"timestamp":1700000000,
                "total_connections":5,"curr_connections":3,
                "alpha":{"client_eof":1,"client_err":0,"client_connections":2,"server_ejects":0,"forward_error":0,"fragments":4,
                         "127.0.0.1:11211":{"server_eof":0,"server_err":0,"server_timedout":1,"server_connections":1,"server_ejected_at":1700000000000000,
                                            "requests":9,"request_bytes":90,"responses":9,"response_bytes":80,"in_queue":0,"in_queue_bytes":0,"out_queue":0,"out_queue_bytes":0,"new_field":3}}}"#,
        )
        .unwrap();
        let mut s = Scrape::new();
        translate(&doc, &mut s).unwrap();
        let text = s.render();
        assert!(text.contains("twemproxy_pool_client_connections{pool=\"alpha\"} 2\n"), "{text}");
        assert!(
            text.contains(
                "# TYPE twemproxy_pool_fragments_total counter\ntwemproxy_pool_fragments_total{pool=\"alpha\"} 4\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("twemproxy_server_requests_total{pool=\"alpha\",server=\"127.0.0.1:11211\"} 9\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "twemproxy_server_ejected_at_timestamp_seconds{pool=\"alpha\",server=\"127.0.0.1:11211\"} 1700000000\n"
            ),
            "{text}"
        );
        assert!(text.contains("# TYPE twemproxy_server_new_field untyped\n"), "{text}");
        assert!(text.contains("twemproxy_connections_total 5\n"), "{text}");
        assert!(!text.contains("timestamp{"), "{text}");
    }
}
