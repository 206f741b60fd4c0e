//! The ambassador's numbers as others read them: the Prometheus collector behind `/metrics` on
//! the admin port, and twemproxy's JSON document on its stats port. Both read the counters of
//! [`crate::stats`] from the running [`Pools`] at the time they are asked.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::registry::Unit;
use serde_json::{Map, Value, json};

use crate::backend::Server;
use crate::pool::Pools;
use crate::stats::{Counter, PoolStats, ServerStats};

// === Prometheus ===

/// Reads every pool's and server's numbers at scrape time.
#[derive(Debug)]
pub(crate) struct Metrics {
    pub(crate) pools: Arc<Pools>,
    pub(crate) reloads_ok: Arc<Counter>,
    pub(crate) reloads_failed: Arc<Counter>,
}

fn none() -> Option<&'static Exemplar<NoLabelSet, f64>> {
    None
}

impl Collector for Metrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let pools = self.pools.snapshot();
        type PoolGet = fn(&PoolStats) -> u64;
        let pool_counters: [(&str, &str, PoolGet); 5] = [
            ("client_connections", "Client connections accepted", |s| s.client_connections_total.get()),
            ("client_errors", "Client connections closed on an error", |s| s.client_err.get()),
            (
                "client_requests_refused",
                "Requests answered with an error by the proxy for bad or unsupported input",
                |s| s.client_errors.get(),
            ),
            ("forward_errors", "Requests answered with an error because a server failed or was ejected", |s| {
                s.forward_error.get()
            }),
            ("fragments", "Parts of multi-key requests split over servers", |s| s.fragments.get()),
        ];
        for (name, help, get) in pool_counters {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for p in &pools {
                let labels = [("pool", p.name.as_str())];
                m.encode_family(&labels)?.encode_counter(&get(&p.stats), none())?;
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "client_connections_open",
                "Open client connections",
                None,
                MetricType::Gauge,
            )?;
            for p in &pools {
                m.encode_family(&[("pool", p.name.as_str())])?.encode_gauge(&p.stats.client_connections.get())?;
            }
        }
        type ServerGet = fn(&ServerStats) -> u64;
        let server_counters: [(&str, &str, Option<Unit>, ServerGet); 8] = [
            ("requests", "Requests sent to the server", None, |s| s.requests.get()),
            ("request", "Request bytes sent to the server", Some(Unit::Bytes), |s| s.request_bytes.get()),
            ("responses", "Answers from the server", None, |s| s.responses.get()),
            ("response", "Answer bytes from the server", Some(Unit::Bytes), |s| s.response_bytes.get()),
            ("server_errors", "Failed connections and invalid answers", None, |s| s.errors.get()),
            ("server_eof", "Connections the server closed with requests in flight", None, |s| s.eof.get()),
            ("server_timeouts", "Requests the server did not answer within `timeout`", None, |s| s.timeouts.get()),
            ("server_ejections", "Times auto_eject_hosts took the server out", None, |s| s.ejections.get()),
        ];
        for (name, help, unit, get) in server_counters {
            let mut m = encoder.encode_descriptor(name, help, unit.as_ref(), MetricType::Counter)?;
            for p in &pools {
                for s in &p.servers {
                    let labels = [("pool", p.name.as_str()), ("server", s.shared.settings.label.as_str())];
                    m.encode_family(&labels)?.encode_counter(&get(&s.shared.stats), none())?;
                }
            }
        }
        type Get = fn(&Server) -> i64;
        let server_gauges: [(&str, &str, Get); 4] = [
            ("server_connections", "Open connections to the server", |s| s.shared.stats.connections.get()),
            ("server_in_flight", "Requests written to the server and not yet answered", |s| {
                s.shared.stats.out_queue.get()
            }),
            ("server_queued", "Requests waiting to be written to the server", |s| s.queued() as i64),
            ("server_ejected", "1 while auto_eject_hosts has the server out", |s| i64::from(s.shared.is_ejected())),
        ];
        for (name, help, get) in server_gauges {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for p in &pools {
                for s in &p.servers {
                    let labels = [("pool", p.name.as_str()), ("server", s.shared.settings.label.as_str())];
                    m.encode_family(&labels)?.encode_gauge(&get(s))?;
                }
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "server_request_duration",
                "Time from writing a request to the server to reading its answer",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            for p in &pools {
                for s in &p.servers {
                    let labels = [("pool", p.name.as_str()), ("server", s.shared.settings.label.as_str())];
                    let (sum, count, buckets) = s.shared.stats.latency.snapshot();
                    m.encode_family(&labels)?.encode_histogram(
                        sum,
                        count,
                        &buckets,
                        None::<&HashMap<usize, Exemplar<NoLabelSet, f64>>>,
                    )?;
                }
            }
        }
        let mut m = encoder.encode_descriptor("config_reloads", "Configuration reloads", None, MetricType::Counter)?;
        m.encode_family(&[("result", "ok")])?.encode_counter(&self.reloads_ok.get(), none())?;
        m.encode_family(&[("result", "failed")])?.encode_counter(&self.reloads_failed.get(), none())?;
        Ok(())
    }
}

// === twemproxy's stats port ===

/// The JSON document nutcracker serves on its stats port, with the same keys, so existing
/// collectors and dashboards read it unchanged.
pub(crate) fn twemproxy_json(pools: &Pools, started: std::time::SystemTime) -> Value {
    let now = std::time::SystemTime::now();
    let epoch = |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
    let source = nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_default();
    let mut doc = Map::new();
    doc.insert("service".into(), json!("nutcracker"));
    doc.insert("source".into(), json!(source));
    doc.insert("version".into(), json!(format!("podkit-{}", env!("CARGO_PKG_VERSION"))));
    doc.insert("uptime".into(), json!(epoch(now).saturating_sub(epoch(started))));
    doc.insert("timestamp".into(), json!(epoch(now)));
    let snapshot = pools.snapshot();
    let total: u64 = snapshot.iter().map(|p| p.stats.client_connections_total.get()).sum();
    let current: i64 = snapshot.iter().map(|p| p.stats.client_connections.get()).sum();
    doc.insert("total_connections".into(), json!(total));
    doc.insert("curr_connections".into(), json!(current));
    for p in snapshot {
        let s = &p.stats;
        let mut pool = Map::new();
        pool.insert("client_eof".into(), json!(s.client_eof.get()));
        pool.insert("client_err".into(), json!(s.client_err.get()));
        pool.insert("client_connections".into(), json!(s.client_connections.get()));
        pool.insert(
            "server_ejects".into(),
            json!(p.servers.iter().map(|s| s.shared.stats.ejections.get()).sum::<u64>()),
        );
        pool.insert("forward_error".into(), json!(s.forward_error.get()));
        pool.insert("fragments".into(), json!(s.fragments.get()));
        for server in &p.servers {
            let st = &server.shared.stats;
            pool.insert(
                server.shared.settings.label.clone(),
                json!({
                    "server_eof": st.eof.get(),
                    "server_err": st.errors.get(),
                    "server_timedout": st.timeouts.get(),
                    "server_connections": st.connections.get(),
                    "server_ejected_at": server.shared.ejected_at_us.load(Ordering::Relaxed),
                    "requests": st.requests.get(),
                    "request_bytes": st.request_bytes.get(),
                    "responses": st.responses.get(),
                    "response_bytes": st.response_bytes.get(),
                    "in_queue": server.queued(),
                    "in_queue_bytes": 0,
                    "out_queue": st.out_queue.get(),
                    "out_queue_bytes": 0,
                }),
            );
        }
        doc.insert(p.name.clone(), Value::Object(pool));
    }
    Value::Object(doc)
}

/// Each pool's keys in [`twemproxy_json`] and their meaning, in nutcracker's words.
const POOL_STATS: [(&str, &str); 6] = [
    ("client_eof", "# eof on client connections"),
    ("client_err", "# errors on client connections"),
    ("client_connections", "# active client connections"),
    ("server_ejects", "# times backend server was ejected"),
    ("forward_error", "# times we encountered a forwarding error"),
    ("fragments", "# fragments created from a multi-vector request"),
];

/// Each server's keys in [`twemproxy_json`] and their meaning.
const SERVER_STATS: [(&str, &str); 13] = [
    ("server_eof", "# eof on server connections"),
    ("server_err", "# errors on server connections"),
    ("server_timedout", "# timeouts on server connections"),
    ("server_connections", "# active server connections"),
    ("server_ejected_at", "timestamp when server was ejected in usec since epoch"),
    ("requests", "# requests"),
    ("request_bytes", "total request bytes"),
    ("responses", "# responses"),
    ("response_bytes", "total response bytes"),
    ("in_queue", "# requests in incoming queue"),
    ("in_queue_bytes", "current request bytes in incoming queue (always 0 in podkit)"),
    ("out_queue", "# requests in outgoing queue"),
    ("out_queue_bytes", "current request bytes in outgoing queue (always 0 in podkit)"),
];

/// `-D`: the stats port's keys with their meaning, laid out as `nutcracker -D` prints them.
pub(crate) fn describe_stats() -> String {
    let mut out = String::from("pool stats:\n");
    for (key, what) in POOL_STATS {
        out.push_str(&format!("  {key:<20}\"{what}\"\n"));
    }
    out.push_str("\nserver stats:\n");
    for (key, what) in SERVER_STATS {
        out.push_str(&format!("  {key:<20}\"{what}\"\n"));
    }
    out
}

/// Serves the JSON document to every connection on `listener`, as nutcracker does (write,
/// close).
pub(crate) async fn serve_stats(listener: tokio::net::TcpListener, pools: Arc<Pools>, started: std::time::SystemTime) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let mut conn = match listener.accept().await {
            Ok((conn, _)) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "cannot accept a stats connection");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let body = twemproxy_json(&pools, started).to_string();
        tokio::spawn(async move {
            let _ = conn.write_all(body.as_bytes()).await;
            let _ = conn.shutdown().await;
            // Read what the client sent (an HTTP request, say) before closing: closing with
            // unread bytes resets the connection, and the client may lose the document.
            let mut sink = [0u8; 1024];
            let drain = async { while matches!(conn.read(&mut sink).await, Ok(n) if n > 0) {} };
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), drain).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn describe_stats_names_every_key_the_stats_port_serves() {
        let cfg = crate::config::parse("p:\n  listen: 127.0.0.1:0\n  servers:\n    - 127.0.0.1:1:1 s1\n").unwrap();
        let workers = crate::workers::Workers::start(1).unwrap();
        let pools = Pools::default();
        pools.handles.store(Arc::new(vec![Arc::new(crate::pool::PoolHandle {
            name: "p".into(),
            bound: String::new(),
            state: arc_swap::ArcSwap::new(crate::pool::PoolState::start(cfg.pools[0].clone(), None, &workers)),
            listener: Arc::new(crate::Listener::Tcp(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap())),
            stop_listening: tokio_util::sync::CancellationToken::new(),
        })]));
        let doc = twemproxy_json(&pools, std::time::SystemTime::now());
        let described = describe_stats();
        let pool = doc["p"].as_object().unwrap();
        for key in pool.keys().filter(|k| *k != "s1") {
            assert!(described.contains(&format!("  {key} ")), "pool key {key} is not described");
        }
        for key in pool["s1"].as_object().unwrap().keys() {
            assert!(described.contains(&format!("  {key} ")), "server key {key} is not described");
        }
        assert!(described.starts_with("pool stats:\n  client_eof "));
    }
}
