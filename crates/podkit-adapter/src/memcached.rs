//! memcached: `stats`, `stats slabs`, `stats items` and `stats settings` on one kept
//! connection (sent together, one round trip), translated to prometheus/memcached_exporter's
//! names, types, labels and HELP texts, with its derived values (the `set` hit count is
//! `cmd_set` less the CAS commands memcached counts in it). A stat the server does not report
//! leaves its metric out, as the exporter does. docs/adapter.md has the table.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::conn::{Kept, exchange};
use crate::expo::{Kind, Scrape};

/// The largest answer read: `stats items` of a server with every slab class is a few KiB.
const MAX_ANSWER: usize = 4 << 20;

#[derive(Debug)]
pub(crate) struct MemcachedSource {
    conn: Kept,
}

/// The four answers, as memcached_exporter's client splits them.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) global: HashMap<String, String>,
    pub(crate) slabs: BTreeMap<u32, HashMap<String, String>>,
    pub(crate) items: BTreeMap<u32, HashMap<String, String>>,
    pub(crate) settings: HashMap<String, String>,
}

impl MemcachedSource {
    pub(crate) fn new(addr: String) -> Self {
        MemcachedSource { conn: Kept::new(addr) }
    }

    pub(crate) async fn collect(&self, out: &mut Scrape, timeout: Duration) -> Result<(), String> {
        let mut conn = self.conn.take(timeout).await?;
        let lines = exchange(&mut conn, b"stats\r\nstats slabs\r\nstats items\r\nstats settings\r\n", 4, MAX_ANSWER)
            .await
            .map_err(|e| format!("{}: {e}", self.conn.addr()))?;
        self.conn.put(conn).await;
        let stats = split(&lines)?;
        // Like the exporter, a stat that cannot be read sets `memcached_up` to 0 (the caller
        // writes it) and the rest is still served.
        if translate(&stats, out) { Ok(()) } else { Err("some stats could not be read".into()) }
    }
}

/// Splits the four `END`-terminated answers.
fn split(lines: &[String]) -> Result<Stats, String> {
    let mut s = Stats::default();
    let mut block = 0;
    for line in lines {
        if line.is_empty() {
            block += 1;
            continue;
        }
        if block == 3 {
            // stats settings: values may hold spaces.
            let mut it = line.splitn(3, ' ');
            match (it.next(), it.next(), it.next()) {
                (Some("STAT"), Some(k), Some(v)) => {
                    s.settings.insert(k.to_string(), v.trim().to_string());
                }
                _ => return Err(format!("unexpected stats settings line {line:?}")),
            }
            continue;
        }
        let f: Vec<&str> = line.split(' ').collect();
        let [stat, key, value] = f.as_slice() else { continue };
        if !stat.starts_with("STAT") {
            continue;
        }
        let parts: Vec<&str> = key.split(':').collect();
        match parts.as_slice() {
            [k] => {
                s.global.insert((*k).to_string(), value.trim().to_string());
            }
            [n, k] => {
                let n = n.parse().map_err(|_| format!("bad slab id in {line:?}"))?;
                s.slabs.entry(n).or_default().insert((*k).to_string(), value.trim().to_string());
            }
            [_, n, k] => {
                let n = n.parse().map_err(|_| format!("bad slab id in {line:?}"))?;
                s.items.entry(n).or_default().insert((*k).to_string(), value.trim().to_string());
            }
            _ => {}
        }
    }
    Ok(s)
}

/// A stat and its series: (stat, name, kind, help).
type Row = (&'static str, &'static str, Kind, &'static str);

/// `stats`.
const GLOBAL: &[Row] = &[
    ("uptime", "memcached_uptime_seconds", Kind::Counter, "Number of seconds since the server started."),
    ("time", "memcached_time_seconds", Kind::Gauge, "current UNIX time according to the server."),
    (
        "bytes_read",
        "memcached_read_bytes_total",
        Kind::Counter,
        "Total number of bytes read by this server from network.",
    ),
    (
        "bytes_written",
        "memcached_written_bytes_total",
        Kind::Counter,
        "Total number of bytes sent by this server to network.",
    ),
    ("curr_connections", "memcached_current_connections", Kind::Gauge, "Current number of open connections."),
    (
        "total_connections",
        "memcached_connections_total",
        Kind::Counter,
        "Total number of connections opened since the server started running.",
    ),
    (
        "rejected_connections",
        "memcached_connections_rejected_total",
        Kind::Counter,
        "Total number of connections rejected due to hitting the memcached's -c limit in maxconns_fast mode.",
    ),
    (
        "conn_yields",
        "memcached_connections_yielded_total",
        Kind::Counter,
        "Total number of connections yielded running due to hitting the memcached's -R limit.",
    ),
    (
        "listen_disabled_num",
        "memcached_connections_listener_disabled_total",
        Kind::Counter,
        "Number of times that memcached has hit its connections limit and disabled its listener.",
    ),
    ("bytes", "memcached_current_bytes", Kind::Gauge, "Current number of bytes used to store items."),
    (
        "limit_maxbytes",
        "memcached_limit_bytes",
        Kind::Gauge,
        "Number of bytes this server is allowed to use for storage.",
    ),
    ("curr_items", "memcached_current_items", Kind::Gauge, "Current number of items stored by this instance."),
    (
        "total_items",
        "memcached_items_total",
        Kind::Counter,
        "Total number of items stored during the life of this instance.",
    ),
    (
        "evictions",
        "memcached_items_evicted_total",
        Kind::Counter,
        "Total number of valid items removed from cache to free memory for new items.",
    ),
    (
        "reclaimed",
        "memcached_items_reclaimed_total",
        Kind::Counter,
        "Total number of times an entry was stored using memory from an expired entry.",
    ),
    (
        "store_too_large",
        "memcached_item_too_large_total",
        Kind::Counter,
        "The number of times an item exceeded the max-item-size when being stored.",
    ),
    (
        "store_no_memory",
        "memcached_item_no_memory_total",
        Kind::Counter,
        "The number of times an item could not be stored due to no more memory.",
    ),
    (
        "direct_reclaims",
        "memcached_direct_reclaims_total",
        Kind::Counter,
        "Times worker threads had to directly reclaim or evict items.",
    ),
    ("lru_crawler_starts", "memcached_lru_crawler_starts_total", Kind::Counter, "Times an LRU crawler was started."),
    (
        "crawler_items_checked",
        "memcached_lru_crawler_items_checked_total",
        Kind::Counter,
        "Total items examined by LRU Crawler.",
    ),
    ("crawler_reclaimed", "memcached_lru_crawler_reclaimed_total", Kind::Counter, "Total items freed by LRU Crawler."),
    (
        "moves_to_cold",
        "memcached_lru_crawler_moves_to_cold_total",
        Kind::Counter,
        "Total number of items moved from HOT/WARM to COLD LRU's.",
    ),
    (
        "moves_to_warm",
        "memcached_lru_crawler_moves_to_warm_total",
        Kind::Counter,
        "Total number of items moved from COLD to WARM LRU.",
    ),
    (
        "moves_within_lru",
        "memcached_lru_crawler_moves_within_lru_total",
        Kind::Counter,
        "Total number of items reshuffled within HOT or WARM LRU's.",
    ),
    ("total_malloced", "memcached_malloced_bytes", Kind::Gauge, "Number of bytes of memory allocated to slab pages."),
    (
        "accepting_conns",
        "memcached_accepting_connections",
        Kind::Gauge,
        "The Memcached server is currently accepting new connections.",
    ),
];

/// Exported only when the server runs extstore (`extstore_limit_maxbytes` is reported).
const EXTSTORE: &[Row] = &[
    (
        "extstore_compact_lost",
        "memcached_extstore_compact_lost_total",
        Kind::Counter,
        "Total number of items lost because they were locked during extstore compaction.",
    ),
    (
        "extstore_compact_rescues",
        "memcached_extstore_compact_rescued_total",
        Kind::Counter,
        "Total number of items moved to a new page during extstore compaction,",
    ),
    (
        "extstore_compact_skipped",
        "memcached_extstore_compact_skipped_total",
        Kind::Counter,
        "Total number of items dropped due to inactivity during extstore compaction.",
    ),
    (
        "extstore_page_allocs",
        "memcached_extstore_pages_allocated_total",
        Kind::Counter,
        "Total number of times a page was allocated in extstore.",
    ),
    (
        "extstore_page_evictions",
        "memcached_extstore_pages_evicted_total",
        Kind::Counter,
        "Total number of times a page was evicted from extstore.",
    ),
    (
        "extstore_page_reclaims",
        "memcached_extstore_pages_reclaimed_total",
        Kind::Counter,
        "Total number of times an empty extstore page was freed.",
    ),
    (
        "extstore_pages_free",
        "memcached_extstore_pages_free",
        Kind::Gauge,
        "Number of extstore pages not yet containing any items.",
    ),
    (
        "extstore_pages_used",
        "memcached_extstore_pages_used",
        Kind::Gauge,
        "Number of extstore pages containing at least one item.",
    ),
    (
        "extstore_objects_evicted",
        "memcached_extstore_objects_evicted_total",
        Kind::Counter,
        "Total number of items evicted from extstore to free up space.",
    ),
    (
        "extstore_objects_read",
        "memcached_extstore_objects_read_total",
        Kind::Counter,
        "Total number of items read from extstore.",
    ),
    (
        "extstore_objects_written",
        "memcached_extstore_objects_written_total",
        Kind::Counter,
        "Total number of items written to extstore.",
    ),
    ("extstore_objects_used", "memcached_extstore_objects_used", Kind::Gauge, "Number of items stored in extstore."),
    (
        "extstore_bytes_evicted",
        "memcached_extstore_bytes_evicted_total",
        Kind::Counter,
        "Total number of bytes evicted from extstore to free up space.",
    ),
    (
        "extstore_bytes_written",
        "memcached_extstore_bytes_written_total",
        Kind::Counter,
        "Total number of bytes written to extstore.",
    ),
    (
        "extstore_bytes_read",
        "memcached_extstore_bytes_read_total",
        Kind::Counter,
        "Total number of bytes read from extstore.",
    ),
    (
        "extstore_bytes_used",
        "memcached_extstore_bytes_used",
        Kind::Counter,
        "Current number of bytes used to store items in extstore.",
    ),
    (
        "extstore_bytes_fragmented",
        "memcached_extstore_bytes_fragmented",
        Kind::Gauge,
        "Current number of bytes in extstore pages allocated but not used to store an object.",
    ),
    (
        "extstore_limit_maxbytes",
        "memcached_extstore_bytes_limit",
        Kind::Gauge,
        "Number of bytes of external storage allocated for this server.",
    ),
    (
        "extstore_io_queue",
        "memcached_extstore_io_queue_depth",
        Kind::Gauge,
        "Number of items in the I/O queue waiting to be processed.",
    ),
];

/// `stats settings`, exported when the LRU crawler is on (as the exporter does).
const CRAWLER: &[Row] = &[
    ("lru_crawler_sleep", "memcached_lru_crawler_sleep", Kind::Gauge, "Microseconds to sleep between LRU crawls."),
    ("lru_crawler_tocrawl", "memcached_lru_crawler_to_crawl", Kind::Gauge, "Max items to crawl per slab per run."),
    ("hot_lru_pct", "memcached_lru_crawler_hot_percent", Kind::Gauge, "Percent of slab memory reserved for HOT LRU."),
    (
        "warm_lru_pct",
        "memcached_lru_crawler_warm_percent",
        Kind::Gauge,
        "Percent of slab memory reserved for WARM LRU.",
    ),
    (
        "hot_max_factor",
        "memcached_lru_crawler_hot_max_factor",
        Kind::Gauge,
        "Set idle age of HOT LRU to COLD age * this",
    ),
    (
        "warm_max_factor",
        "memcached_lru_crawler_warm_max_factor",
        Kind::Gauge,
        "Set idle age of WARM LRU to COLD age * this",
    ),
];

/// `stats items` per slab class.
const ITEMS: &[Row] = &[
    ("number", "memcached_slab_current_items", Kind::Gauge, "Number of items currently stored in this slab class."),
    (
        "age",
        "memcached_slab_items_age_seconds",
        Kind::Gauge,
        "Number of seconds the oldest item has been in the slab class.",
    ),
    (
        "crawler_reclaimed",
        "memcached_slab_items_crawler_reclaimed_total",
        Kind::Counter,
        "Number of items freed by the LRU Crawler.",
    ),
    (
        "evicted",
        "memcached_slab_items_evicted_total",
        Kind::Counter,
        "Total number of times an item had to be evicted from the LRU before it expired.",
    ),
    (
        "evicted_nonzero",
        "memcached_slab_items_evicted_nonzero_total",
        Kind::Counter,
        "Total number of times an item which had an explicit expire time set had to be evicted from the LRU before it expired.",
    ),
    (
        "evicted_time",
        "memcached_slab_items_evicted_time_seconds",
        Kind::Counter,
        "Seconds since the last access for the most recent item evicted from this class.",
    ),
    (
        "evicted_unfetched",
        "memcached_slab_items_evicted_unfetched_total",
        Kind::Counter,
        "Total nmber of items evicted and never fetched.",
    ),
    (
        "expired_unfetched",
        "memcached_slab_items_expired_unfetched_total",
        Kind::Counter,
        "Total number of valid items evicted from the LRU which were never touched after being set.",
    ),
    (
        "outofmemory",
        "memcached_slab_items_outofmemory_total",
        Kind::Counter,
        "Total number of items for this slab class that have triggered an out of memory error.",
    ),
    ("reclaimed", "memcached_slab_items_reclaimed_total", Kind::Counter, "Total number of items reclaimed."),
    (
        "tailrepairs",
        "memcached_slab_items_tailrepairs_total",
        Kind::Counter,
        "Total number of times the entries for a particular ID need repairing.",
    ),
    (
        "mem_requested",
        "memcached_slab_mem_requested_bytes",
        Kind::Counter,
        "Number of bytes of memory actual items take up within a slab.",
    ),
    (
        "moves_to_cold",
        "memcached_slab_items_moves_to_cold",
        Kind::Counter,
        "Number of items moved from HOT or WARM into COLD.",
    ),
    (
        "moves_to_warm",
        "memcached_slab_items_moves_to_warm",
        Kind::Counter,
        "Number of items moves from COLD into WARM.",
    ),
    (
        "moves_within_lru",
        "memcached_slab_items_moves_within_lru",
        Kind::Counter,
        "Number of times active items were bumped within HOT or WARM.",
    ),
    ("number_hot", "memcached_slab_hot_items", Kind::Gauge, "Number of items presently stored in the HOT LRU."),
    ("number_warm", "memcached_slab_warm_items", Kind::Gauge, "Number of items presently stored in the WARM LRU."),
    ("number_cold", "memcached_slab_cold_items", Kind::Gauge, "Number of items presently stored in the COLD LRU."),
    (
        "number_temp",
        "memcached_slab_temporary_items",
        Kind::Gauge,
        "Number of items presently stored in the TEMPORARY LRU.",
    ),
    ("age_hot", "memcached_slab_hot_age_seconds", Kind::Gauge, "Age of the oldest item in HOT LRU."),
    ("age_warm", "memcached_slab_warm_age_seconds", Kind::Gauge, "Age of the oldest item in HOT LRU."),
];

/// `stats slabs` per slab class.
const SLABS: &[Row] = &[
    (
        "chunk_size",
        "memcached_slab_chunk_size_bytes",
        Kind::Gauge,
        "Number of bytes allocated to each chunk within this slab class.",
    ),
    (
        "chunks_per_page",
        "memcached_slab_chunks_per_page",
        Kind::Gauge,
        "Number of chunks within a single page for this slab class.",
    ),
    ("total_pages", "memcached_slab_current_pages", Kind::Gauge, "Number of pages allocated to this slab class."),
    ("total_chunks", "memcached_slab_current_chunks", Kind::Gauge, "Number of chunks allocated to this slab class."),
    ("used_chunks", "memcached_slab_chunks_used", Kind::Gauge, "Number of chunks allocated to an item."),
    ("free_chunks", "memcached_slab_chunks_free", Kind::Gauge, "Number of chunks not yet allocated items."),
    (
        "free_chunks_end",
        "memcached_slab_chunks_free_end",
        Kind::Gauge,
        "Number of free chunks at the end of the last allocated page.",
    ),
    (
        "mem_requested",
        "memcached_slab_mem_requested_bytes",
        Kind::Gauge,
        "Number of bytes of memory actual items take up within a slab.",
    ),
];

const OPS: [&str; 6] = ["get", "delete", "incr", "decr", "cas", "touch"];
const COMMANDS_HELP: &str = "Total number of all requests broken down by command (get, set, etc.) and status.";
const SLAB_COMMANDS_HELP: &str =
    "Total number of all requests broken down by command (get, set, etc.) and status per slab.";

/// `sec.usec` as memcached prints rusage.
fn timeval(v: &str) -> Option<f64> {
    let (s, u) = v.split_once('.')?;
    Some(s.parse::<f64>().ok()? + u.parse::<f64>().ok()? / 1e6)
}

/// Translates the answers; false when a stat could not be read (then `memcached_up` is 0, as
/// the exporter reports it, and the rest is still exported).
pub(crate) fn translate(s: &Stats, out: &mut Scrape) -> bool {
    let mut r = Reader { ok: true };
    out.gauge(
        "memcached_version",
        "The version of this memcached server.",
        &[("version", s.global.get("version").map_or("", String::as_str))],
        1.0,
    );
    r.rows(out, &s.global, GLOBAL, &[]);
    for (stat, name, help) in [
        ("rusage_user", "memcached_process_user_cpu_seconds_total", "Accumulated user time for this process."),
        ("rusage_system", "memcached_process_system_cpu_seconds_total", "Accumulated system time for this process."),
    ] {
        if let Some(v) = s.global.get(stat) {
            match timeval(v) {
                Some(v) => out.counter(name, help, &[], v),
                None => r.ok = false,
            }
        }
    }
    for op in OPS {
        for (status, stat) in [("hit", format!("{op}_hits")), ("miss", format!("{op}_misses"))] {
            if let Some(v) = r.num(&s.global, &stat) {
                out.counter("memcached_commands_total", COMMANDS_HELP, &[("command", op), ("status", status)], v);
            }
        }
    }
    if let Some(v) = r.num(&s.global, "cas_badval") {
        out.counter("memcached_commands_total", COMMANDS_HELP, &[("command", "cas"), ("status", "badval")], v);
    }
    if let Some(v) = r.num(&s.global, "cmd_flush") {
        out.counter("memcached_commands_total", COMMANDS_HELP, &[("command", "flush"), ("status", "hit")], v);
    }
    // memcached counts CAS commands in cmd_set again.
    match ["cmd_set", "cas_misses", "cas_hits", "cas_badval"].map(|k| r.num(&s.global, k)) {
        [Some(set), Some(m), Some(h), Some(b)] => out.counter(
            "memcached_commands_total",
            COMMANDS_HELP,
            &[("command", "set"), ("status", "hit")],
            set - (m + h + b),
        ),
        _ => r.ok = false,
    }
    if s.global.contains_key("extstore_limit_maxbytes") {
        r.rows(out, &s.global, EXTSTORE, &[]);
    }
    if let Some(v) = r.num(&s.settings, "maxconns") {
        out.gauge("memcached_max_connections", "Maximum number of clients allowed.", &[], v);
    }
    if s.settings.get("lru_crawler").map(String::as_str) == Some("yes") {
        out.gauge("memcached_lru_crawler_enabled", "Whether the LRU crawler is enabled.", &[], 1.0);
        r.rows(out, &s.settings, CRAWLER, &[]);
        let thread = match s.settings.get("lru_maintainer_thread").map(String::as_str) {
            Some("yes") => Some(1.0),
            Some("no") => Some(0.0),
            Some(_) => {
                r.ok = false;
                None
            }
            None => None,
        };
        if let Some(v) = thread {
            out.gauge("memcached_lru_crawler_maintainer_thread", "Split LRU mode and background threads.", &[], v);
        }
    }
    for (slab, items) in &s.items {
        let id = slab.to_string();
        r.rows(out, items, ITEMS, &[("slab", &id)]);
        for (stat, lru) in
            [("hits_to_hot", "hot"), ("hits_to_warm", "warm"), ("hits_to_cold", "cold"), ("hits_to_temp", "temporary")]
        {
            if let Some(v) = r.num(items, stat) {
                out.counter(
                    "memcached_slab_lru_hits_total",
                    "Number of get_hits to the LRU.",
                    &[("slab", &id), ("lru", lru)],
                    v,
                );
            }
        }
    }
    for (slab, stats) in &s.slabs {
        let id = slab.to_string();
        let command = |command, status| [("slab", id.as_str()), ("command", command), ("status", status)];
        for op in OPS {
            if let Some(v) = r.num(stats, &format!("{op}_hits")) {
                out.counter("memcached_slab_commands_total", SLAB_COMMANDS_HELP, &command(op, "hit"), v);
            }
        }
        if let Some(v) = r.num(stats, "cas_badval") {
            out.counter("memcached_slab_commands_total", SLAB_COMMANDS_HELP, &command("cas", "badval"), v);
        }
        match ["cmd_set", "cas_hits", "cas_badval"].map(|k| r.num(stats, k)) {
            [Some(set), Some(h), Some(b)] => {
                out.counter("memcached_slab_commands_total", SLAB_COMMANDS_HELP, &command("set", "hit"), set - (h + b))
            }
            _ => r.ok = false,
        }
        // mem_requested moved from `stats slabs` to `stats items` in 1.5.17 (a counter there,
        // a gauge here): only one of them is exported.
        let in_items = s.items.get(slab).is_some_and(|i| i.contains_key("mem_requested"));
        let rows: Vec<Row> = SLABS.iter().copied().filter(|row| !(in_items && row.0 == "mem_requested")).collect();
        r.rows(out, stats, &rows, &[("slab", &id)]);
    }
    r.ok
}

/// Reads stat values, remembering whether one could not be read.
struct Reader {
    ok: bool,
}

impl Reader {
    /// The stat's value: None when the server does not report it, or (remembered) when it is
    /// not a number.
    fn num(&mut self, m: &HashMap<String, String>, k: &str) -> Option<f64> {
        let n = m.get(k)?.parse::<f64>().ok();
        self.ok &= n.is_some();
        n
    }

    /// One series per row whose stat the server reports.
    fn rows(&mut self, out: &mut Scrape, m: &HashMap<String, String>, rows: &[Row], labels: &[(&str, &str)]) {
        for (stat, name, kind, help) in rows {
            if let Some(v) = self.num(m, stat) {
                out.add(name, help, *kind, "", labels, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(|l| if l == "END" { String::new() } else { l.to_string() }).collect()
    }

    #[test]
    fn derived_values_and_slabs() {
        let s = split(&lines(
            "STAT version 1.6.18\nSTAT rusage_user 0.006997\nSTAT cmd_set 7\nSTAT cas_misses 1\nSTAT cas_hits 1\nSTAT cas_badval 1\n\
             STAT get_hits 2\nSTAT get_misses 1\nSTAT limit_maxbytes 67108864\nEND\n\
             STAT 1:chunk_size 96\nSTAT 1:cmd_set 6\nSTAT 1:cas_hits 1\nSTAT 1:cas_badval 1\nSTAT 1:get_hits 2\nSTAT total_malloced 2097152\nEND\n\
             STAT items:1:number 1\nSTAT items:1:mem_requested 68\nSTAT items:1:hits_to_hot 2\nEND\n\
             STAT maxconns 1024\nSTAT lru_crawler yes\nSTAT hot_max_factor 0.20\nSTAT lru_maintainer_thread yes\nSTAT inter some words\nEND",
        ))
        .unwrap();
        let mut out = Scrape::new();
        assert!(translate(&s, &mut out));
        let t = out.render();
        for want in [
            "memcached_commands_total{command=\"set\",status=\"hit\"} 4\n",
            "memcached_commands_total{command=\"get\",status=\"miss\"} 1\n",
            "memcached_process_user_cpu_seconds_total 0.006997\n",
            "memcached_limit_bytes 67108864\n",
            "memcached_malloced_bytes 2097152\n",
            "memcached_version{version=\"1.6.18\"} 1\n",
            "memcached_max_connections 1024\n",
            "memcached_lru_crawler_hot_max_factor 0.2\n",
            "memcached_slab_commands_total{slab=\"1\",command=\"set\",status=\"hit\"} 4\n",
            "# TYPE memcached_slab_mem_requested_bytes counter\nmemcached_slab_mem_requested_bytes{slab=\"1\"} 68\n",
            "memcached_slab_lru_hits_total{slab=\"1\",lru=\"hot\"} 2\n",
            "memcached_slab_chunk_size_bytes{slab=\"1\"} 96\n",
        ] {
            assert!(t.contains(want), "missing {want:?} in\n{t}");
        }
    }

    #[test]
    fn an_unreadable_stat_sets_up_to_zero_and_keeps_the_rest() {
        let s = split(&lines("STAT curr_items x\nSTAT bytes 5\nEND\nEND\nEND\nEND")).unwrap();
        let mut out = Scrape::new();
        assert!(!translate(&s, &mut out));
        assert!(out.render().contains("memcached_current_bytes 5\n"));
    }
}
