//! Redis: `INFO ALL` and a few small commands, translated to oliver006/redis_exporter's names,
//! types, labels and HELP texts (as of its 1.45 release, which Debian ships), so its
//! dashboards work unchanged. docs/adapter.md has the table.
//!
//! Where the exporter opens a new connection and sends six commands one after another per
//! scrape, this keeps one connection and sends its five commands back to back (the multiplexed
//! connection pipelines them): one round trip.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::{Duration, SystemTime};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, IntoConnectionInfo, Value};
use tokio::sync::Mutex;

use crate::expo::Scrape;

/// Where and how to reach one Redis server.
#[derive(Debug, Clone)]
pub(crate) struct RedisOptions {
    /// `redis://[user:password@]host:port[/db]`, `rediss://…` (TLS) or `unix:///path`.
    pub(crate) url: String,
    /// The password, read at each connect (overrides the URL's).
    pub(crate) password_file: Option<PathBuf>,
    /// TLS: the CA that signed the server's certificate (otherwise the system's roots), and a
    /// client certificate and key.
    pub(crate) ca_file: Option<PathBuf>,
    pub(crate) cert_file: Option<PathBuf>,
    pub(crate) key_file: Option<PathBuf>,
}

#[derive(Debug)]
pub(crate) struct RedisSource {
    opts: RedisOptions,
    conn: Mutex<Option<MultiplexedConnection>>,
}

impl RedisSource {
    /// Checks the URL and the files; nothing is connected yet.
    pub(crate) fn new(opts: RedisOptions) -> Result<Self, String> {
        redis::Client::open(opts.url.as_str()).map_err(|e| e.to_string())?;
        for (what, f) in [
            ("password_file", &opts.password_file),
            ("ca_file", &opts.ca_file),
            ("cert_file", &opts.cert_file),
            ("key_file", &opts.key_file),
        ] {
            if let Some(f) = f {
                std::fs::File::open(f).map_err(|e| format!("{what} {}: {e}", f.display()))?;
            }
        }
        if opts.cert_file.is_some() != opts.key_file.is_some() {
            return Err("cert_file and key_file go together".into());
        }
        Ok(RedisSource { opts, conn: Mutex::new(None) })
    }

    fn client(&self) -> Result<redis::Client, String> {
        let mut info = self.opts.url.as_str().into_connection_info().map_err(|e| e.to_string())?;
        // No CLIENT SETINFO on connect: before Redis 7.2 each one is an error reply, which
        // would show in the very error counters the adapter reports.
        let mut settings = info.redis_settings().clone().set_skip_set_lib_name();
        if let Some(f) = &self.opts.password_file {
            let password = std::fs::read_to_string(f).map_err(|e| format!("password_file {}: {e}", f.display()))?;
            settings = settings.set_password(password.trim_end_matches(['\r', '\n']));
        }
        info = info.set_redis_settings(settings);
        let tls = self.opts.ca_file.is_some() || self.opts.cert_file.is_some();
        if !tls {
            return redis::Client::open(info).map_err(|e| e.to_string());
        }
        let read = |f: &PathBuf| std::fs::read(f).map_err(|e| format!("{}: {e}", f.display()));
        let certs = redis::TlsCertificates {
            client_tls: match (&self.opts.cert_file, &self.opts.key_file) {
                (Some(c), Some(k)) => Some(redis::ClientTlsConfig { client_cert: read(c)?, client_key: read(k)? }),
                _ => None,
            },
            root_cert: self.opts.ca_file.as_ref().map(read).transpose()?,
        };
        redis::Client::build_with_tls(info, certs).map_err(|e| e.to_string())
    }

    async fn connection(&self, timeout: Duration) -> Result<MultiplexedConnection, String> {
        if let Some(c) = self.conn.lock().await.clone() {
            return Ok(c);
        }
        let config =
            AsyncConnectionConfig::new().set_connection_timeout(Some(timeout)).set_response_timeout(Some(timeout));
        let c = self
            .client()?
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        *self.conn.lock().await = Some(c.clone());
        Ok(c)
    }

    /// One scrape. On any error the kept connection is dropped, so the next scrape starts
    /// clean.
    pub(crate) async fn collect(&self, out: &mut Scrape, timeout: Duration) -> Result<(), String> {
        let r = self.try_collect(out, timeout).await;
        if r.is_err() {
            *self.conn.lock().await = None;
        }
        r
    }

    async fn try_collect(&self, out: &mut Scrape, timeout: Duration) -> Result<(), String> {
        let conn = self.connection(timeout).await?;
        let query = |cmd: redis::Cmd| {
            let mut c = conn.clone();
            async move { cmd.query_async::<Value>(&mut c).await }
        };
        let mut config = redis::cmd("CONFIG");
        config.arg("GET").arg("databases").arg("maxmemory").arg("maxclients").arg("io-threads");
        let mut slowlog = redis::cmd("SLOWLOG");
        slowlog.arg("GET").arg(1);
        let mut latency = redis::cmd("LATENCY");
        latency.arg("LATEST");
        let mut slowlen = redis::cmd("SLOWLOG");
        slowlen.arg("LEN");
        let mut info = redis::cmd("INFO");
        info.arg("ALL");
        // Sent together: the multiplexed connection writes them back to back.
        let (config, info, latency, slowlen, slowlog) =
            tokio::join!(query(config), query(info), query(latency), query(slowlen), query(slowlog));
        let info = match info {
            Ok(Value::BulkString(b)) => String::from_utf8_lossy(&b).into_owned(),
            Ok(Value::VerbatimString { text, .. }) => text,
            Ok(other) => return Err(format!("INFO ALL answered {other:?}")),
            Err(e) => return Err(format!("INFO ALL: {e}")),
        };
        // CONFIG may be renamed or refused (managed Redis): then the defaults apply and its
        // gauges are left out, as the exporter does.
        let mut databases = 16;
        if let Ok(Value::Array(pairs)) = config {
            for pair in pairs.chunks(2) {
                if let [k, v] = pair {
                    let (Some(k), Some(v)) = (text(k), text(v)) else { continue };
                    let Ok(n) = v.parse::<f64>() else { continue };
                    match k.as_str() {
                        "databases" => databases = n as u32,
                        "maxmemory" | "maxclients" | "io-threads" => {
                            let name = format!("config_{}", k.replace('-', "_"));
                            out.gauge(&format!("redis_{name}"), &format!("{name} metric"), &[], n);
                        }
                        _ => {}
                    }
                }
            }
        }
        translate_info(&info, databases, out);
        if let Ok(Value::Array(rows)) = latency {
            for row in rows {
                let Value::Array(f) = row else { continue };
                if let (Some(event), Some(last), Some(ms)) =
                    (f.first().and_then(text), f.get(1).and_then(int), f.get(2).and_then(int))
                {
                    let l = [("event_name", event.as_str())];
                    out.gauge("redis_latency_spike_last", "When the latency spike last occurred", &l, last as f64);
                    out.gauge(
                        "redis_latency_spike_duration_seconds",
                        "Length of the last latency spike in seconds",
                        &l,
                        ms as f64 / 1e3,
                    );
                }
            }
        }
        if let Ok(Value::Int(n)) = slowlen {
            out.gauge("redis_slowlog_length", "Total slowlog", &[], n as f64);
        }
        if let Ok(Value::Array(entries)) = slowlog {
            let (id, micros) = match entries.first() {
                Some(Value::Array(e)) => (e.first().and_then(int).unwrap_or(0), e.get(2).and_then(int).unwrap_or(0)),
                _ => (0, 0),
            };
            out.gauge("redis_slowlog_last_id", "Last id of slowlog", &[], id as f64);
            out.gauge(
                "redis_last_slow_execution_duration_seconds",
                "The amount of time needed for last slow execution, in seconds",
                &[],
                micros as f64 / 1e6,
            );
        }
        Ok(())
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => text(other)?.parse().ok(),
    }
}

/// INFO fields exported as gauges: field → name (after `redis_`).
const GAUGES: &[(&str, &str)] = &[
    // Server
    ("uptime_in_seconds", "uptime_in_seconds"),
    ("process_id", "process_id"),
    ("io_threads_active", "io_threads_active"),
    // Clients
    ("connected_clients", "connected_clients"),
    ("blocked_clients", "blocked_clients"),
    ("tracking_clients", "tracking_clients"),
    ("clients_in_timeout_table", "clients_in_timeout_table"),
    ("client_longest_output_list", "client_longest_output_list"),
    ("client_biggest_input_buf", "client_biggest_input_buf"),
    ("client_recent_max_output_buffer", "client_recent_max_output_buffer_bytes"),
    ("client_recent_max_input_buffer", "client_recent_max_input_buffer_bytes"),
    // Memory
    ("allocator_active", "allocator_active_bytes"),
    ("allocator_allocated", "allocator_allocated_bytes"),
    ("allocator_resident", "allocator_resident_bytes"),
    ("allocator_frag_ratio", "allocator_frag_ratio"),
    ("allocator_frag_bytes", "allocator_frag_bytes"),
    ("allocator_rss_ratio", "allocator_rss_ratio"),
    ("allocator_rss_bytes", "allocator_rss_bytes"),
    ("used_memory", "memory_used_bytes"),
    ("used_memory_rss", "memory_used_rss_bytes"),
    ("used_memory_peak", "memory_used_peak_bytes"),
    ("used_memory_lua", "memory_used_lua_bytes"),
    ("used_memory_overhead", "memory_used_overhead_bytes"),
    ("used_memory_startup", "memory_used_startup_bytes"),
    ("used_memory_dataset", "memory_used_dataset_bytes"),
    ("used_memory_scripts", "memory_used_scripts_bytes"),
    ("number_of_cached_scripts", "number_of_cached_scripts"),
    ("maxmemory", "memory_max_bytes"),
    ("maxmemory_reservation", "memory_max_reservation_bytes"),
    ("maxmemory_desired_reservation", "memory_max_reservation_desired_bytes"),
    ("maxfragmentationmemory_reservation", "memory_max_fragmentation_reservation_bytes"),
    ("maxfragmentationmemory_desired_reservation", "memory_max_fragmentation_reservation_desired_bytes"),
    ("mem_fragmentation_ratio", "mem_fragmentation_ratio"),
    ("mem_fragmentation_bytes", "mem_fragmentation_bytes"),
    ("mem_clients_slaves", "mem_clients_slaves"),
    ("mem_clients_normal", "mem_clients_normal"),
    ("expired_stale_perc", "expired_stale_percentage"),
    ("mem_not_counted_for_evict", "mem_not_counted_for_eviction_bytes"),
    ("lazyfree_pending_objects", "lazyfree_pending_objects"),
    ("active_defrag_running", "active_defrag_running"),
    ("migrate_cached_sockets", "migrate_cached_sockets_total"),
    ("active_defrag_hits", "defrag_hits"),
    ("active_defrag_misses", "defrag_misses"),
    ("active_defrag_key_hits", "defrag_key_hits"),
    ("active_defrag_key_misses", "defrag_key_misses"),
    ("expired_time_cap_reached_count", "expired_time_cap_reached_total"),
    // Persistence
    ("loading", "loading_dump_file"),
    ("rdb_changes_since_last_save", "rdb_changes_since_last_save"),
    ("rdb_bgsave_in_progress", "rdb_bgsave_in_progress"),
    ("rdb_last_save_time", "rdb_last_save_timestamp_seconds"),
    ("rdb_last_bgsave_status", "rdb_last_bgsave_status"),
    ("rdb_last_bgsave_time_sec", "rdb_last_bgsave_duration_sec"),
    ("rdb_current_bgsave_time_sec", "rdb_current_bgsave_duration_sec"),
    ("rdb_last_cow_size", "rdb_last_cow_size_bytes"),
    ("aof_enabled", "aof_enabled"),
    ("aof_rewrite_in_progress", "aof_rewrite_in_progress"),
    ("aof_rewrite_scheduled", "aof_rewrite_scheduled"),
    ("aof_last_rewrite_time_sec", "aof_last_rewrite_duration_sec"),
    ("aof_current_rewrite_time_sec", "aof_current_rewrite_duration_sec"),
    ("aof_last_cow_size", "aof_last_cow_size_bytes"),
    ("aof_current_size", "aof_current_size_bytes"),
    ("aof_base_size", "aof_base_size_bytes"),
    ("aof_pending_rewrite", "aof_pending_rewrite"),
    ("aof_buffer_length", "aof_buffer_length"),
    ("aof_rewrite_buffer_length", "aof_rewrite_buffer_length"),
    ("aof_pending_bio_fsync", "aof_pending_bio_fsync"),
    ("aof_delayed_fsync", "aof_delayed_fsync"),
    ("aof_last_bgrewrite_status", "aof_last_bgrewrite_status"),
    ("aof_last_write_status", "aof_last_write_status"),
    ("module_fork_in_progress", "module_fork_in_progress"),
    ("module_fork_last_cow_size", "module_fork_last_cow_size"),
    // Stats
    ("pubsub_channels", "pubsub_channels"),
    ("pubsub_patterns", "pubsub_patterns"),
    ("latest_fork_usec", "latest_fork_usec"),
    ("tracking_total_keys", "tracking_total_keys"),
    ("tracking_total_items", "tracking_total_items"),
    ("tracking_total_prefixes", "tracking_total_prefixes"),
    // Replication
    ("connected_slaves", "connected_slaves"),
    ("repl_backlog_size", "replication_backlog_bytes"),
    ("repl_backlog_active", "repl_backlog_is_active"),
    ("repl_backlog_first_byte_offset", "repl_backlog_first_byte_offset"),
    ("repl_backlog_histlen", "repl_backlog_history_bytes"),
    ("master_repl_offset", "master_repl_offset"),
    ("second_repl_offset", "second_repl_offset"),
    ("slave_expires_tracked_keys", "slave_expires_tracked_keys"),
    ("slave_priority", "slave_priority"),
    ("sync_full", "replica_resyncs_full"),
    ("sync_partial_ok", "replica_partial_resync_accepted"),
    ("sync_partial_err", "replica_partial_resync_denied"),
    // Cluster
    ("cluster_stats_messages_sent", "cluster_messages_sent_total"),
    ("cluster_stats_messages_received", "cluster_messages_received_total"),
    // KeyDB
    ("server_threads", "server_threads_total"),
    ("long_lock_waits", "long_lock_waits_total"),
    ("current_client_thread", "current_client_thread"),
];

/// INFO fields exported as counters.
const COUNTERS: &[(&str, &str)] = &[
    ("total_connections_received", "connections_received_total"),
    ("total_commands_processed", "commands_processed_total"),
    ("rejected_connections", "rejected_connections_total"),
    ("total_net_input_bytes", "net_input_bytes_total"),
    ("total_net_output_bytes", "net_output_bytes_total"),
    ("expired_keys", "expired_keys_total"),
    ("cached_keys", "cached_keys_total"),
    ("evicted_keys", "evicted_keys_total"),
    ("keyspace_hits", "keyspace_hits_total"),
    ("keyspace_misses", "keyspace_misses_total"),
    ("used_cpu_sys", "cpu_sys_seconds_total"),
    ("used_cpu_user", "cpu_user_seconds_total"),
    ("used_cpu_sys_children", "cpu_sys_children_seconds_total"),
    ("used_cpu_user_children", "cpu_user_children_seconds_total"),
    ("used_cpu_sys_main_thread", "cpu_sys_main_thread_seconds_total"),
    ("used_cpu_user_main_thread", "cpu_user_main_thread_seconds_total"),
    ("unexpected_error_replies", "unexpected_error_replies"),
    ("total_error_replies", "total_error_replies"),
    ("total_reads_processed", "total_reads_processed"),
    ("total_writes_processed", "total_writes_processed"),
    ("io_threaded_reads_processed", "io_threaded_reads_processed"),
    ("io_threaded_writes_processed", "io_threaded_writes_processed"),
    ("dump_payload_sanitizations", "dump_payload_sanitizations"),
    ("storage_provider_read_hits", "storage_provider_read_hits"),
    ("storage_provider_read_misses", "storage_provider_read_misses"),
];

/// The two tables as maps, built once.
static GAUGE_MAP: LazyLock<HashMap<&str, &str>> = LazyLock::new(|| GAUGES.iter().copied().collect());
static COUNTER_MAP: LazyLock<HashMap<&str, &str>> = LazyLock::new(|| COUNTERS.iter().copied().collect());

const INSTANCE_LABELS: [&str; 9] = [
    "role",
    "redis_version",
    "redis_build_id",
    "redis_mode",
    "os",
    "maxmemory_policy",
    "tcp_port",
    "run_id",
    "process_id",
];

/// `ok`/`true` → 1, `err`/`fail`/`false` → 0, else a number; what does not parse is 0, as the
/// exporter exports it.
fn info_value(v: &str) -> f64 {
    match v {
        "ok" | "true" => 1.0,
        "err" | "fail" | "false" => 0.0,
        v => v.parse().unwrap_or(0.0),
    }
}

fn sanitize(key: &str) -> String {
    key.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect()
}

/// `k=v,k=v,…` → the values in order (the exporter reads them by position).
fn parts(v: &str) -> Option<Vec<(&str, &str)>> {
    v.split(',').map(|p| p.split_once('=')).collect()
}

/// Translates an `INFO ALL` answer. `databases` is the number of DBs to report (those without
/// keys as 0), from `CONFIG GET databases`.
pub(crate) fn translate_info(info: &str, databases: u32, out: &mut Scrape) {
    let (gauges, counters) = (&*GAUGE_MAP, &*COUNTER_MAP);
    let mut values: HashMap<&str, &str> = HashMap::new();
    let mut section = "";
    let (mut master_host, mut master_port) = ("", "");
    let mut dbs_seen = std::collections::HashSet::new();
    let mut latencies: Vec<(&str, Vec<(&str, f64)>)> = Vec::new();
    let mut cmd_calls: HashMap<&str, (f64, f64)> = HashMap::new();
    for line in info.lines() {
        let line = line.trim();
        if let Some(s) = line.strip_prefix("# ") {
            section = s;
            continue;
        }
        let Some((key, value)) = line.split_once(':') else { continue };
        values.insert(key, value);
        if is_master_field(key, "_host") {
            master_host = value;
        } else if is_master_field(key, "_port") {
            master_port = value;
        }
        let master = [("master_host", master_host), ("master_port", master_port)];
        match section {
            "Replication" => {
                if is_master_field(key, "_link_status") {
                    let up = if value == "up" { 1.0 } else { 0.0 };
                    out.gauge("redis_master_link_up", "Master link status on Redis slave", &master, up);
                    continue;
                }
                let int = || value.parse::<i64>().unwrap_or(0) as f64;
                if is_master_field(key, "_last_io_seconds_ago") {
                    out.gauge("redis_master_last_io_seconds_ago", "Master last io seconds ago", &master, int());
                    continue;
                }
                if is_master_field(key, "_sync_in_progress") {
                    out.gauge("redis_master_sync_in_progress", "Master sync in progress", &master, int());
                    continue;
                }
                if key == "slave_repl_offset" {
                    out.gauge("redis_slave_repl_offset", "Slave replication offset", &master, int());
                    continue;
                }
                if key.strip_prefix("slave").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                    && let Some(p) = parts(value)
                {
                    let get = |k: &str| p.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
                    let l = [
                        ("slave_ip", get("ip").unwrap_or("")),
                        ("slave_port", get("port").unwrap_or("")),
                        ("slave_state", get("state").unwrap_or("")),
                    ];
                    let lag = get("lag").map(|v| v.parse::<f64>());
                    if let Some(Ok(offset)) = get("offset").map(|v| v.parse::<f64>())
                        && !matches!(lag, Some(Err(_)))
                    {
                        out.gauge("redis_connected_slave_offset_bytes", "Offset of connected slave", &l, offset);
                        if let Some(Ok(lag)) = lag {
                            out.gauge("redis_connected_slave_lag_seconds", "Lag of connected slave", &l, lag);
                        }
                        continue;
                    }
                }
            }
            "Server" if key == "uptime_in_seconds" => {
                let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs() as f64;
                out.gauge(
                    "redis_start_time_seconds",
                    "Start time of the Redis instance since unix epoch in seconds.",
                    &[],
                    now - info_value(value),
                );
            }
            "Commandstats" => {
                let Some(cmd) = key.strip_prefix("cmdstat_") else { continue };
                let p: Vec<f64> = value
                    .split(',')
                    .map(|p| p.split_once('=').and_then(|(_, v)| v.parse().ok()).unwrap_or(0.0))
                    .collect();
                if p.len() < 3 {
                    continue;
                }
                let l = [("cmd", cmd)];
                out.counter("redis_commands_total", "Total number of calls per command", &l, p[0]);
                out.counter(
                    "redis_commands_duration_seconds_total",
                    "Total amount of time in seconds spent per command",
                    &l,
                    p[1] / 1e6,
                );
                if p.len() >= 5 {
                    out.counter(
                        "redis_commands_rejected_calls_total",
                        "Total number of errors within command execution per command",
                        &l,
                        p[3],
                    );
                    out.counter(
                        "redis_commands_failed_calls_total",
                        "Total number of errors prior command execution per command",
                        &l,
                        p[4],
                    );
                }
                cmd_calls.insert(cmd, (p[0], p[1]));
                continue;
            }
            "Latencystats" => {
                if let (Some(cmd), Some(p)) = (key.strip_prefix("latency_percentiles_usec_"), parts(value)) {
                    let q = p.iter().filter_map(|(k, v)| Some((k.strip_prefix('p')?, v.parse().ok()?))).collect();
                    latencies.push((cmd, q));
                }
                continue;
            }
            "Errorstats" => {
                if let (Some(err), Some(n)) =
                    (key.strip_prefix("errorstat_"), value.strip_prefix("count=").and_then(|n| n.parse().ok()))
                {
                    out.counter("redis_errors_total", "Total number of errors per error type", &[("err", err)], n);
                }
                continue;
            }
            "Keyspace" if key.starts_with("db") => {
                let nums: Option<Vec<f64>> = parts(value).and_then(|p| p.iter().map(|(_, v)| v.parse().ok()).collect());
                if let Some(n) = nums.filter(|n| (2..=4).contains(&n.len())) {
                    let l = [("db", key)];
                    out.gauge("redis_db_keys", "Total number of keys by DB", &l, n[0]);
                    out.gauge("redis_db_keys_expiring", "Total number of expiring keys by DB", &l, n[1]);
                    if let Some(ttl) = n.get(2) {
                        out.gauge("redis_db_avg_ttl_seconds", "Avg TTL in seconds", &l, ttl / 1000.0);
                    }
                    if let Some(cached) = n.get(3) {
                        out.gauge("redis_db_keys_cached", "Total number of cached keys by DB", &l, *cached);
                    }
                    dbs_seen.insert(key.to_string());
                    continue;
                }
            }
            _ => {}
        }
        // The generic step: fields of the two maps, and anything named db*/cluster_*.
        let clean = sanitize(key);
        let (name, counter) = if let Some(n) = gauges.get(key) {
            (n.to_string(), false)
        } else if let Some(n) = counters.get(key) {
            (n.to_string(), true)
        } else if key.starts_with("db") || key.starts_with("cmdstat_") || key.starts_with("cluster_") {
            (clean, false)
        } else {
            continue;
        };
        let (name, v) = if name == "latest_fork_usec" {
            ("latest_fork_seconds".to_string(), info_value(value) / 1e6)
        } else {
            (name, info_value(value))
        };
        let help = format!("{name} metric");
        if counter {
            out.counter(&format!("redis_{name}"), &help, &[], v);
        } else {
            out.gauge(&format!("redis_{name}"), &help, &[], v);
        }
    }
    for i in 0..databases {
        let db = format!("db{i}");
        if !dbs_seen.contains(&db) {
            out.gauge("redis_db_keys", "Total number of keys by DB", &[("db", &db)], 0.0);
            out.gauge("redis_db_keys_expiring", "Total number of expiring keys by DB", &[("db", &db)], 0.0);
        }
    }
    for (cmd, quantiles) in latencies {
        let Some((calls, usec)) = cmd_calls.get(cmd) else { continue };
        let help = "A summary of latency percentile distribution per command";
        for (q, v) in quantiles {
            out.add(
                "redis_latency_percentiles_usec",
                help,
                crate::expo::Kind::Summary,
                "",
                &[("cmd", cmd), ("quantile", q)],
                v,
            );
        }
        out.add("redis_latency_percentiles_usec", help, crate::expo::Kind::Summary, "_sum", &[("cmd", cmd)], *usec);
        out.add("redis_latency_percentiles_usec", help, crate::expo::Kind::Summary, "_count", &[("cmd", cmd)], *calls);
    }
    if values.get("role") == Some(&"slave") {
        let get = |k: &str| values.get(k).copied().unwrap_or("");
        out.gauge(
            "redis_slave_info",
            "Information about the Redis slave",
            &[
                ("master_host", get("master_host")),
                ("master_port", get("master_port")),
                ("read_only", get("slave_read_only")),
            ],
            1.0,
        );
    }
    let labels: Vec<(&str, &str)> =
        INSTANCE_LABELS.iter().map(|k| (*k, values.get(k).copied().unwrap_or(""))).collect();
    out.gauge("redis_instance_info", "Information about the Redis instance", &labels, 1.0);
}

/// `master_host`, `master_1_host`, … for `suffix` `_host`.
fn is_master_field(key: &str, suffix: &str) -> bool {
    let Some(rest) = key.strip_prefix("master") else { return false };
    let Some(mid) = rest.strip_suffix(suffix) else { return false };
    mid.is_empty() || mid.strip_prefix('_').is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\nrole:master\r\nuptime_in_seconds:100\r\nprocess_id:42\r\n\
        # Memory\r\nused_memory:1048576\r\nused_memory_human:1.00M\r\n\
        # Persistence\r\nrdb_last_bgsave_status:ok\r\naof_last_write_status:err\r\n\
        # Stats\r\nkeyspace_hits:7\r\nlatest_fork_usec:250\r\ncluster_connections:0\r\n\
        # Replication\r\nrole:master\r\nconnected_slaves:1\r\nslave0:ip=127.0.0.1,port=6380,state=online,offset=14,lag=0\r\nmaster_repl_offset:14\r\n\
        # Commandstats\r\ncmdstat_get:calls=21,usec=175,usec_per_call=8.33,rejected_calls=1,failed_calls=2\r\ncmdstat_config|get:calls=1,usec=10,usec_per_call=10.00,rejected_calls=0,failed_calls=0\r\n\
        # Errorstats\r\nerrorstat_ERR:count=4\r\n\
        # Latencystats\r\nlatency_percentiles_usec_get:p50=5.023,p99=6,p99.9=7\r\n\
        # Keyspace\r\ndb0:keys=5,expires=1,avg_ttl=999895\r\ndb3:keys=4,expires=2,avg_ttl=0\r\n";

    fn sample(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        s.family(name)?
            .samples
            .iter()
            .find(|x| labels.iter().all(|(k, v)| x.labels.iter().any(|(a, b)| a == k && b == v)))
            .map(|x| x.value)
    }

    #[test]
    fn info_becomes_the_exporters_series() {
        let mut s = Scrape::new();
        translate_info(INFO, 16, &mut s);
        assert_eq!(sample(&s, "redis_memory_used_bytes", &[]), Some(1048576.0));
        assert_eq!(s.family("redis_memory_used_bytes").unwrap().help, "memory_used_bytes metric");
        assert_eq!(s.family("redis_keyspace_hits_total").unwrap().kind, crate::expo::Kind::Counter);
        assert_eq!(sample(&s, "redis_rdb_last_bgsave_status", &[]), Some(1.0));
        assert_eq!(sample(&s, "redis_aof_last_write_status", &[]), Some(0.0));
        assert_eq!(sample(&s, "redis_latest_fork_seconds", &[]), Some(0.00025));
        assert_eq!(sample(&s, "redis_cluster_connections", &[]), Some(0.0));
        assert!(s.family("redis_used_memory_human").is_none());
        assert_eq!(sample(&s, "redis_commands_total", &[("cmd", "config|get")]), Some(1.0));
        assert_eq!(sample(&s, "redis_commands_duration_seconds_total", &[("cmd", "get")]), Some(0.000175));
        assert_eq!(sample(&s, "redis_commands_failed_calls_total", &[("cmd", "get")]), Some(2.0));
        assert_eq!(sample(&s, "redis_errors_total", &[("err", "ERR")]), Some(4.0));
        assert_eq!(sample(&s, "redis_db_keys", &[("db", "db3")]), Some(4.0));
        assert_eq!(sample(&s, "redis_db_keys", &[("db", "db15")]), Some(0.0));
        assert_eq!(sample(&s, "redis_db_avg_ttl_seconds", &[("db", "db0")]), Some(999.895));
        assert!(sample(&s, "redis_db_avg_ttl_seconds", &[("db", "db1")]).is_none());
        assert_eq!(
            sample(&s, "redis_connected_slave_offset_bytes", &[("slave_port", "6380"), ("slave_state", "online")]),
            Some(14.0)
        );
        assert_eq!(sample(&s, "redis_latency_percentiles_usec", &[("cmd", "get"), ("quantile", "99.9")]), Some(7.0));
        assert_eq!(s.family("redis_latency_percentiles_usec").unwrap().samples.len(), 5);
        assert_eq!(
            sample(&s, "redis_instance_info", &[("role", "master"), ("redis_version", "7.0.15"), ("process_id", "42")]),
            Some(1.0)
        );
        assert!(s.family("redis_slave_info").is_none());
        assert!(sample(&s, "redis_start_time_seconds", &[]).unwrap() > 1e9);
    }

    #[test]
    fn a_replicas_master_link() {
        let info = "# Replication\r\nrole:slave\r\nmaster_host:10.0.0.1\r\nmaster_port:6379\r\nmaster_link_status:down\r\nmaster_last_io_seconds_ago:-1\r\nmaster_sync_in_progress:0\r\nslave_repl_offset:99\r\nslave_read_only:1\r\n";
        let mut s = Scrape::new();
        translate_info(info, 1, &mut s);
        let m = [("master_host", "10.0.0.1"), ("master_port", "6379")];
        assert_eq!(sample(&s, "redis_master_link_up", &m), Some(0.0));
        assert_eq!(sample(&s, "redis_master_last_io_seconds_ago", &m), Some(-1.0));
        assert_eq!(sample(&s, "redis_slave_repl_offset", &m), Some(99.0));
        assert_eq!(sample(&s, "redis_slave_info", &[("read_only", "1")]), Some(1.0));
    }
}
