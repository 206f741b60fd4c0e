//! The adapter's file (`--config adapter.yaml`): its sources. Every key is checked: an unknown one is an error that names it.
//!
//! ```yaml
//! sources:
//!   - memcached: 127.0.0.1:11211
//!   - redis: redis://127.0.0.1:6379
//!     password_file: /etc/redis/password
//!   - twemproxy: 127.0.0.1:22222
//!   - prometheus: http://127.0.0.1:9191/metrics
//!     labels: {container: elect}
//!   - json: http://127.0.0.1:8080/status
//!     module: status
//!   - statsd: 127.0.0.1:9125     # UDP and TCP, as statsd_exporter listens
//!     mapping_file: /etc/statsd/mapping.yml
//! modules:                  # json_exporter's modules, as its config.yml writes them
//!   status:
//!     metrics:
//!       - {name: app_queue_length, path: '{.queue.length}', valuetype: gauge}
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use podkit_core::Duration;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    #[serde(default)]
    pub(crate) sources: Vec<SourceConfig>,
    /// JSON modules, in json_exporter's format.
    #[serde(default)]
    pub(crate) modules: BTreeMap<String, crate::json::ModuleConfig>,
    /// json_exporter's own config.yml, whose `modules:` are read as they are.
    pub(crate) json_exporter_config: Option<PathBuf>,
}

/// One source: exactly one of the kind keys, plus its options.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SourceConfig {
    /// Names the source in podkit's own series and logs (default: its address).
    pub(crate) name: Option<String>,
    pub(crate) memcached: Option<String>,
    pub(crate) redis: Option<String>,
    pub(crate) twemproxy: Option<String>,
    pub(crate) prometheus: Option<String>,
    pub(crate) json: Option<String>,
    /// The JSON module that reads this source (default: `default`).
    pub(crate) module: Option<String>,
    /// A StatsD listener: UDP and TCP on this address.
    pub(crate) statsd: Option<String>,
    /// statsd_exporter's mapping file.
    pub(crate) mapping_file: Option<PathBuf>,
    /// StatsD over UDP and over TCP (default: both).
    pub(crate) udp: Option<bool>,
    pub(crate) tcp: Option<bool>,
    /// StatsD over a Unix datagram socket at this path, too.
    pub(crate) unixgram: Option<PathBuf>,
    /// The StatsD datagram sockets' receive buffer, in bytes.
    pub(crate) read_buffer: Option<usize>,
    /// Where the StatsD listener writes its bound address.
    pub(crate) addr_file: Option<PathBuf>,
    /// Bound on one scrape of this source (default: --timeout).
    pub(crate) timeout: Option<Duration>,
    /// Labels put on every series of this source.
    #[serde(default)]
    pub(crate) labels: BTreeMap<String, String>,
    // Redis
    pub(crate) password_file: Option<PathBuf>,
    pub(crate) ca_file: Option<PathBuf>,
    pub(crate) cert_file: Option<PathBuf>,
    pub(crate) key_file: Option<PathBuf>,
}

/// The kinds of source, as the config keys and `/scrape?kind=` name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum SourceKind {
    Memcached,
    Redis,
    Twemproxy,
    Prometheus,
    Json,
    Statsd,
}

impl SourceKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SourceKind::Memcached => "memcached",
            SourceKind::Redis => "redis",
            SourceKind::Twemproxy => "twemproxy",
            SourceKind::Prometheus => "prometheus",
            SourceKind::Json => "json",
            SourceKind::Statsd => "statsd",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<SourceKind> {
        Some(match s {
            "memcached" => SourceKind::Memcached,
            "redis" => SourceKind::Redis,
            "twemproxy" | "nutcracker" | "ambassador" => SourceKind::Twemproxy,
            "prometheus" => SourceKind::Prometheus,
            "json" => SourceKind::Json,
            "statsd" => SourceKind::Statsd,
            _ => return None,
        })
    }

    /// The source's own `up` gauge and its HELP, where its exporter has one.
    pub(crate) fn up_metric(self) -> Option<(&'static str, &'static str)> {
        match self {
            SourceKind::Memcached => Some(("memcached_up", "Could the memcached server be reached.")),
            SourceKind::Redis => Some(("redis_up", "Information about the Redis instance")),
            SourceKind::Twemproxy => Some(("twemproxy_up", "Whether the stats port answered (1) or not (0)")),
            SourceKind::Prometheus | SourceKind::Json | SourceKind::Statsd => None,
        }
    }
}

impl SourceConfig {
    /// The kind and address, when exactly one kind key is given.
    pub(crate) fn kind(&self) -> Result<(SourceKind, &str), String> {
        let given: Vec<(SourceKind, &str)> = [
            (SourceKind::Memcached, &self.memcached),
            (SourceKind::Redis, &self.redis),
            (SourceKind::Twemproxy, &self.twemproxy),
            (SourceKind::Prometheus, &self.prometheus),
            (SourceKind::Json, &self.json),
            (SourceKind::Statsd, &self.statsd),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_deref().map(|v| (k, v)))
        .collect();
        match given.as_slice() {
            [one] => Ok(*one),
            [] => {
                Err("give one of memcached:, redis:, twemproxy:, prometheus:, json: or statsd: with the address".into())
            }
            many => Err(format!(
                "give one kind per source, not {}",
                many.iter().map(|(k, _)| format!("{}:", k.as_str())).collect::<Vec<_>>().join(" and ")
            )),
        }
    }
}

/// Reads and checks the file. Errors name the file and, from the YAML parser, the line.
pub(crate) fn load(path: &Path) -> Result<FileConfig, String> {
    read_yaml(path, "--config")
}

/// Reads json_exporter's config.yml: its `modules:`.
pub(crate) fn load_json_exporter(path: &Path, what: &str) -> Result<crate::json::ExporterFile, String> {
    read_yaml(path, what)
}

fn read_yaml<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<T, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
    serde_saphyr::from_str(&text).map_err(|e| format!("{what} {}: {e}", path.display()))
}
