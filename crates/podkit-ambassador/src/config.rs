//! twemproxy's configuration file, read as it is (`nutcracker.yml`), plus podkit's own pool keys.
//!
//! Every key twemproxy knows is accepted with twemproxy's meaning and default, except `timeout`
//! (see [`DEFAULT_TIMEOUT`]). Unknown keys are rejected, as twemproxy rejects them, with the pool
//! and key named. Durations are milliseconds, as in twemproxy; podkit's own keys also take
//! `"1s"`-style strings.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::hashkit::{Distribution, Hash, ServerSpec};

/// The answer timeout when a pool sets none. twemproxy waits forever; a stopped (not dead)
/// backend would then hang its clients, so podkit bounds the wait. Set `timeout` to choose.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest `server_connections`: each is a socket to the backend per pool.
const MAX_SERVER_CONNECTIONS: u32 = 64;

/// A configuration error, naming the file, the pool and the key.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub(crate) struct ConfigError {
    pub(crate) path: PathBuf,
    pub(crate) reason: String,
}

/// What happens to keys of a server that `auto_eject_hosts` took out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum EjectMode {
    /// twemproxy's behaviour: rebuild the distribution without the server, so its keys move
    /// to the others (and come back when it returns).
    Rehash,
    /// Keep the distribution: keys of the ejected server get an immediate error, the other
    /// servers' keys never move.
    FailFast,
}

/// Where a pool listens or a server is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Addr {
    Tcp { host: String, port: u16 },
    Unix(PathBuf),
}

impl Addr {
    /// Port 0: any free port, a new one at each bind (so never the same listener twice).
    pub(crate) fn is_any_port(&self) -> bool {
        matches!(self, Addr::Tcp { port: 0, .. })
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Addr::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Addr::Tcp { host, port } => write!(f, "{host}:{port}"),
            Addr::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

/// A pool's `listen`: an address, or a Unix socket path with optional permissions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Listen {
    pub(crate) addr: Addr,
    /// Permissions of a Unix socket (`/run/mc.sock 0666`).
    pub(crate) mode: Option<u32>,
}

/// One backend server: `host:port:weight [name]` or `/path/to.sock:weight [name]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Server {
    pub(crate) addr: Addr,
    pub(crate) weight: u32,
    pub(crate) name: Option<String>,
}

impl Server {
    /// The name this server goes by in stats: its name, else its address (as twemproxy).
    pub(crate) fn label(&self) -> String {
        self.name.clone().unwrap_or_else(|| match &self.addr {
            Addr::Tcp { host, port } => format!("{host}:{port}"),
            Addr::Unix(p) => p.display().to_string(),
        })
    }

    pub(crate) fn spec(&self) -> ServerSpec {
        let (host, port) = match &self.addr {
            Addr::Tcp { host, port } => (host.clone(), *port),
            Addr::Unix(p) => (p.display().to_string(), 0),
        };
        ServerSpec { host, port, weight: self.weight, name: self.name.clone() }
    }
}

/// One pool, checked.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Pool {
    pub(crate) name: String,
    pub(crate) listen: Listen,
    pub(crate) hash: Hash,
    pub(crate) hash_tag: Option<[u8; 2]>,
    pub(crate) distribution: Distribution,
    pub(crate) timeout: Duration,
    pub(crate) backlog: u32,
    pub(crate) client_connections: u32,
    pub(crate) redis: bool,
    pub(crate) redis_auth: Option<String>,
    pub(crate) redis_db: u32,
    pub(crate) preconnect: bool,
    pub(crate) tcpkeepalive: bool,
    pub(crate) reuseport: bool,
    pub(crate) server_connections: u32,
    pub(crate) auto_eject_hosts: bool,
    pub(crate) server_retry_timeout: Duration,
    pub(crate) server_failure_limit: u32,
    pub(crate) eject_mode: EjectMode,
    /// Probe every server this often (memcache `version`, Redis `PING`); `None`: no probes.
    pub(crate) health_check_interval: Option<Duration>,
    pub(crate) servers: Vec<Server>,
}

/// The whole file: pools in name order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Config {
    pub(crate) pools: Vec<Pool>,
}

// === the file as written ===

/// A pool as written. Numbers and flags are read as the text written and converted in
/// [`check_pool`]: typed fields would stop serde at the first wrong value with a line number but
/// neither the pool nor the key nor what is expected (`invalid i64`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    listen: Option<String>,
    hash: Option<String>,
    hash_tag: Option<String>,
    distribution: Option<String>,
    timeout: Option<String>,
    backlog: Option<String>,
    client_connections: Option<String>,
    redis: Option<String>,
    redis_auth: Option<String>,
    redis_db: Option<String>,
    preconnect: Option<String>,
    tcpkeepalive: Option<String>,
    reuseport: Option<String>,
    server_connections: Option<String>,
    auto_eject_hosts: Option<String>,
    server_retry_timeout: Option<String>,
    server_failure_limit: Option<String>,
    // podkit's own keys.
    eject_mode: Option<EjectMode>,
    health_check_interval: Option<Millis>,
    servers: Option<Vec<String>>,
}

/// A whole number as twemproxy reads one: decimal, optionally signed.
fn number(key: &str, v: Option<&str>) -> Result<Option<i64>, String> {
    let Some(v) = v else { return Ok(None) };
    v.trim().parse().map(Some).map_err(|_| format!("{key}: {v:?} is not a whole number"))
}

/// Milliseconds, as twemproxy's own duration keys are written. A value such as `"4s"` gets the
/// number to write instead.
fn millis(key: &str, v: Option<&str>) -> Result<Option<i64>, String> {
    let Some(v) = v else { return Ok(None) };
    v.trim().parse().map(Some).map_err(|_| match humantime::parse_duration(v.trim()) {
        Ok(d) => format!("{key}: {v:?} is not a number of milliseconds; write {}", d.as_millis()),
        Err(_) => format!("{key}: {v:?} is not a number of milliseconds, such as 400"),
    })
}

/// A flag, with the spellings YAML 1.1 gives booleans (`true`, `yes`, `on`, …), as before.
fn flag(key: &str, v: Option<&str>) -> Result<Option<bool>, String> {
    let Some(v) = v else { return Ok(None) };
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "y" | "on" => Ok(Some(true)),
        "false" | "no" | "n" | "off" => Ok(Some(false)),
        _ => Err(format!("{key}: {v:?} is not true or false")),
    }
}

/// Milliseconds as a number, or a duration such as `"1s"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Millis {
    Number(u64),
    Text(String),
}

impl Millis {
    fn get(&self) -> Result<Duration, String> {
        match self {
            Millis::Number(ms) => Ok(Duration::from_millis(*ms)),
            Millis::Text(s) => humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}")),
        }
    }
}

/// Reads and checks a configuration file.
pub(crate) fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError { path: path.into(), reason: format!("cannot read it: {e}") })?;
    parse(&text).map_err(|reason| ConfigError { path: path.into(), reason })
}

/// Parses and checks the text of a configuration file.
pub(crate) fn parse(text: &str) -> Result<Config, String> {
    let raw: BTreeMap<String, RawPool> = serde_saphyr::from_str(text).map_err(|e| format!("invalid: {e}"))?;
    if raw.is_empty() {
        return Err(
            "no pools; expected at least one, such as `alpha: {listen: 127.0.0.1:22121, servers: [127.0.0.1:11211:1]}`"
                .into(),
        );
    }
    let mut pools = Vec::with_capacity(raw.len());
    let mut listens = HashSet::new();
    for (name, p) in raw {
        let pool = check_pool(&name, p).map_err(|e| format!("pool `{name}`: {e}"))?;
        if let Addr::Tcp { port: 0, .. } = pool.listen.addr {
            // Port 0 (any free port) may repeat.
        } else if !listens.insert(pool.listen.addr.clone()) {
            return Err(format!("pool `{name}`: listen {} is used by another pool", pool.listen.addr));
        }
        pools.push(pool);
    }
    Ok(Config { pools })
}

fn check_pool(name: &str, p: RawPool) -> Result<Pool, String> {
    let listen = parse_listen(p.listen.as_deref().ok_or("`listen` is missing; expected host:port or a socket path")?)
        .map_err(|e| format!("listen: {e}"))?;
    let hash = match p.hash.as_deref() {
        None => Hash::Fnv1a64,
        Some(h) => h.parse().map_err(|e| format!("hash: {e}"))?,
    };
    let distribution = match p.distribution.as_deref() {
        None => Distribution::Ketama,
        Some(d) => d.parse().map_err(|e| format!("distribution: {e}"))?,
    };
    let hash_tag = match p.hash_tag.as_deref() {
        None => None,
        Some(t) if t.len() == 2 => Some([t.as_bytes()[0], t.as_bytes()[1]]),
        Some(t) => return Err(format!("hash_tag: {t:?} is not two characters, such as \"{{}}\"")),
    };
    let positive = |key: &str, v: Option<&str>, default: i64, max: i64| -> Result<i64, String> {
        match number(key, v)?.unwrap_or(default) {
            v if v < 0 || v > max => Err(format!("{key}: {v} is out of range 0..={max}")),
            v => Ok(v),
        }
    };
    let timeout = match millis("timeout", p.timeout.as_deref())? {
        None => DEFAULT_TIMEOUT,
        Some(ms) if ms > 0 => Duration::from_millis(ms as u64),
        Some(ms) => return Err(format!("timeout: {ms} ms; expected a positive number of milliseconds")),
    };
    let server_connections =
        positive("server_connections", p.server_connections.as_deref(), 1, MAX_SERVER_CONNECTIONS.into())?;
    if server_connections == 0 {
        return Err("server_connections: 0; expected at least 1".into());
    }
    let servers: Vec<Server> = p
        .servers
        .ok_or("`servers` is missing; expected a list of host:port:weight [name]")?
        .iter()
        .map(|s| parse_server(s).map_err(|e| format!("server {s:?}: {e}")))
        .collect::<Result<_, _>>()?;
    if servers.is_empty() {
        return Err("`servers` is empty".into());
    }
    let mut seen = HashSet::new();
    for s in &servers {
        if !seen.insert(s.label()) {
            return Err(format!("server {} appears twice (names and addresses must be unique)", s.label()));
        }
    }
    let redis = flag("redis", p.redis.as_deref())?.unwrap_or(false);
    if !redis && (p.redis_auth.is_some() || p.redis_db.is_some()) {
        return Err("redis_auth and redis_db need `redis: true`".into());
    }
    let server_retry_timeout = match millis("server_retry_timeout", p.server_retry_timeout.as_deref())? {
        None => 30_000,
        Some(ms) if (0..=i64::from(u32::MAX)).contains(&ms) => ms as u64,
        Some(ms) => return Err(format!("server_retry_timeout: {ms} is out of range 0..={}", u32::MAX)),
    };
    let health_check_interval = match p.health_check_interval {
        None => None,
        Some(m) => match m.get().map_err(|e| format!("health_check_interval: {e}"))? {
            d if d.is_zero() => None,
            d => Some(d),
        },
    };
    Ok(Pool {
        name: name.to_string(),
        listen,
        hash,
        hash_tag,
        distribution,
        timeout,
        backlog: positive("backlog", p.backlog.as_deref(), 512, 65535)? as u32,
        client_connections: positive("client_connections", p.client_connections.as_deref(), 0, u32::MAX.into())? as u32,
        redis,
        redis_auth: p.redis_auth.filter(|a| !a.is_empty()),
        redis_db: positive("redis_db", p.redis_db.as_deref(), 0, u32::MAX.into())? as u32,
        preconnect: flag("preconnect", p.preconnect.as_deref())?.unwrap_or(false),
        tcpkeepalive: flag("tcpkeepalive", p.tcpkeepalive.as_deref())?.unwrap_or(false),
        reuseport: flag("reuseport", p.reuseport.as_deref())?.unwrap_or(false),
        server_connections: server_connections as u32,
        auto_eject_hosts: flag("auto_eject_hosts", p.auto_eject_hosts.as_deref())?.unwrap_or(false),
        server_retry_timeout: Duration::from_millis(server_retry_timeout),
        server_failure_limit: positive("server_failure_limit", p.server_failure_limit.as_deref(), 2, u32::MAX.into())?
            .max(1) as u32,
        eject_mode: p.eject_mode.unwrap_or(EjectMode::Rehash),
        health_check_interval,
        servers,
    })
}

fn parse_listen(s: &str) -> Result<Listen, String> {
    let mut parts = s.split_whitespace();
    let addr = parts.next().ok_or("empty")?;
    if addr.starts_with('/') {
        let mode = match parts.next() {
            None => None,
            Some(m) => Some(u32::from_str_radix(m, 8).map_err(|_| format!("{m:?} is not an octal mode such as 0666"))?),
        };
        return Ok(Listen { addr: Addr::Unix(addr.into()), mode });
    }
    let (host, port) = split_host_port(addr)?;
    Ok(Listen { addr: Addr::Tcp { host, port }, mode: None })
}

fn split_host_port(s: &str) -> Result<(String, u16), String> {
    let (host, port) = s.rsplit_once(':').ok_or("expected host:port")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err("the host is empty".into());
    }
    let port = port.parse().map_err(|_| format!("{port:?} is not a port"))?;
    Ok((host.to_string(), port))
}

fn parse_server(s: &str) -> Result<Server, String> {
    let (addr, name) = match s.split_once(char::is_whitespace) {
        Some((a, n)) => (a, Some(n.trim().to_string()).filter(|n| !n.is_empty())),
        None => (s, None),
    };
    if let Some(n) = &name
        && (n.contains(char::is_whitespace) || n.contains(':') || n.starts_with('-'))
    {
        // Most often a mis-indented next line that YAML folded into this one: taking it as a
        // name would silently drop a server (nutcracker refuses it too).
        return Err(format!(
            "server name {n:?} has a space, a colon or a leading `-`; is the next server line indented differently?"
        ));
    }
    let (rest, weight) = addr.rsplit_once(':').ok_or("expected host:port:weight")?;
    let weight: u32 = weight.parse().map_err(|_| format!("weight {weight:?} is not a number"))?;
    if weight == 0 {
        return Err("weight 0; expected at least 1".into());
    }
    let addr = if rest.starts_with('/') {
        Addr::Unix(rest.into())
    } else if !rest.contains(':') {
        return Err("expected host:port:weight".into());
    } else {
        let (host, port) = split_host_port(rest)?;
        if port == 0 {
            return Err("port 0".into());
        }
        Addr::Tcp { host, port }
    };
    Ok(Server { addr, weight, name })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_twemproxys_example() {
        let c = parse(
            "alpha:\n  listen: 127.0.0.1:22121\n  hash: fnv1a_64\n  distribution: ketama\n  auto_eject_hosts: true\n  redis: true\n  server_retry_timeout: 2000\n  server_failure_limit: 1\n  servers:\n   - 127.0.0.1:6379:1\n\nbeta:\n  listen: 127.0.0.1:22122\n  hash: fnv1a_64\n  hash_tag: \"{}\"\n  distribution: ketama\n  auto_eject_hosts: false\n  timeout: 400\n  redis: true\n  servers:\n   - 127.0.0.1:6380:1 server1\n   - 127.0.0.1:6381:1 server2\n\ngamma:\n  listen: /tmp/gamma.sock 0666\n  servers:\n   - /tmp/mc.sock:1 mc\n",
        )
        .unwrap();
        assert_eq!(c.pools.len(), 3);
        let alpha = &c.pools[0];
        assert_eq!(alpha.server_retry_timeout, Duration::from_millis(2000));
        assert_eq!(alpha.timeout, DEFAULT_TIMEOUT);
        let beta = &c.pools[1];
        assert_eq!(beta.hash_tag, Some(*b"{}"));
        assert_eq!(beta.servers[1].name.as_deref(), Some("server2"));
        assert_eq!(beta.timeout, Duration::from_millis(400));
        let gamma = &c.pools[2];
        assert_eq!(gamma.listen, Listen { addr: Addr::Unix("/tmp/gamma.sock".into()), mode: Some(0o666) });
        assert_eq!(gamma.servers[0].addr, Addr::Unix("/tmp/mc.sock".into()));
        assert!(!gamma.redis);
    }

    #[test]
    fn errors_name_the_pool_and_the_key() {
        let err = |t: &str| parse(t).unwrap_err();
        assert!(err("a:\n  listen: 1.2.3.4:1\n  servers: [1.2.3.4:5:1]\n  hsah: md5\n").contains("hsah"));
        assert!(err("a:\n  listen: 1.2.3.4:1\n  hash: sha1\n  servers: [1.2.3.4:5:1]\n").contains("pool `a`: hash"));
        assert!(err("a:\n  listen: 1.2.3.4:1\n  servers: [1.2.3.4:5]\n").contains("weight"));
        // A mis-indented second server folds into the first line's name.
        assert!(
            err("a:\n  listen: 1.2.3.4:1\n  servers:\n    - 1.2.3.4:5:1\n     - 1.2.3.4:6:1\n")
                .contains("indented differently")
        );
        assert!(err("a:\n  listen: 1.2.3.4:1\n  servers: [1.2.3.4:5:1, 1.2.3.4:5:2]\n").contains("twice"));
        assert!(err("a:\n  servers: [1.2.3.4:5:1]\n").contains("listen"));
        assert!(err("a:\n  listen: 1.2.3.4:1\n  hash_tag: \"{\"\n  servers: [1.2.3.4:5:1]\n").contains("hash_tag"));
        assert!(err("a:\n  listen: 1.2.3.4:1\n  redis_db: 2\n  servers: [1.2.3.4:5:1]\n").contains("redis: true"));
        assert!(
            err("a:\n  listen: 1.2.3.4:1\n  servers: [h:5:1]\nb:\n  listen: 1.2.3.4:1\n  servers: [h:5:1]\n")
                .contains("used by another pool")
        );
        assert!(err("").contains("no pools") || err("").contains("invalid"));
    }

    #[test]
    fn wrong_types_name_the_pool_the_key_the_value_and_what_is_expected() {
        let with = |line: &str| parse(&format!("cache:\n  listen: 127.0.0.1:0\n  {line}\n  servers: [h:1:1]\n"));
        let cases = [
            ("timeout: 4s", r#"pool `cache`: timeout: "4s" is not a number of milliseconds; write 4000"#),
            ("timeout: soon", r#"pool `cache`: timeout: "soon" is not a number of milliseconds, such as 400"#),
            (
                "server_retry_timeout: 30s",
                r#"pool `cache`: server_retry_timeout: "30s" is not a number of milliseconds; write 30000"#,
            ),
            ("backlog: lots", r#"pool `cache`: backlog: "lots" is not a whole number"#),
            ("server_failure_limit: 2.5", r#"pool `cache`: server_failure_limit: "2.5" is not a whole number"#),
            ("redis: maybe", r#"pool `cache`: redis: "maybe" is not true or false"#),
            ("auto_eject_hosts: 1", r#"pool `cache`: auto_eject_hosts: "1" is not true or false"#),
        ];
        for (line, expected) in cases {
            assert_eq!(with(line).unwrap_err(), expected, "{line}");
        }
        // What typed fields took before is still taken: YAML 1.1 flags, quoted numbers.
        let c = with("redis: yes\n  preconnect: On\n  timeout: \"250\"\n  backlog: 1024").unwrap();
        let pool = &c.pools[0];
        assert!(pool.redis && pool.preconnect && !pool.reuseport);
        assert_eq!((pool.timeout, pool.backlog), (Duration::from_millis(250), 1024));
        assert_eq!(with("redis_auth: 12345\n  redis: true").unwrap().pools[0].redis_auth.as_deref(), Some("12345"));
    }

    #[test]
    fn podkit_keys() {
        let c = parse(
            "a:\n  listen: 127.0.0.1:0\n  eject_mode: fail_fast\n  health_check_interval: 1s\n  servers: [h:1:1]\nb:\n  listen: 127.0.0.1:0\n  health_check_interval: 250\n  servers: [h:1:1]\n",
        )
        .unwrap();
        assert_eq!(c.pools[0].eject_mode, EjectMode::FailFast);
        assert_eq!(c.pools[0].health_check_interval, Some(Duration::from_secs(1)));
        assert_eq!(c.pools[1].health_check_interval, Some(Duration::from_millis(250)));
    }
}
