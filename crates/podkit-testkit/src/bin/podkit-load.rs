//! `podkit-load`: a closed-loop HTTP load generator for benchmarks. N workers send GET requests
//! back to back until the total is reached, and the latency distribution is printed as JSON.
//!
//!     podkit-load --url http://127.0.0.1:8080/q --requests 5000 --concurrency 8

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long)]
    url: String,
    #[arg(long, default_value_t = 5000)]
    requests: u64,
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Requests sent (and not counted) first, to warm connections and caches.
    #[arg(long, default_value_t = 200)]
    warmup: u64,
}

fn main() {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async move {
        let client =
            reqwest::Client::builder().no_proxy().pool_max_idle_per_host(args.concurrency).build().expect("client");
        for _ in 0..args.warmup {
            let _ = client.get(&args.url).send().await.and_then(|r| r.error_for_status());
        }
        let next = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let mut workers = Vec::new();
        for _ in 0..args.concurrency {
            let (client, url, next, errors, total) =
                (client.clone(), args.url.clone(), next.clone(), errors.clone(), args.requests);
            workers.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    let t = Instant::now();
                    let ok = match client.get(&url).send().await {
                        Ok(r) => {
                            r.status().is_success()
                                && r.headers().get("x-podkit-partial").is_none()
                                && r.bytes().await.is_ok()
                        }
                        Err(_) => false,
                    };
                    if !ok {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    lat.push(t.elapsed());
                }
                lat
            }));
        }
        let mut all: Vec<Duration> = Vec::new();
        for w in workers {
            all.extend(w.await.expect("worker"));
        }
        let elapsed = started.elapsed();
        all.sort();
        let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)].as_secs_f64() * 1000.0;
        let out = serde_json::json!({
            "requests": all.len(),
            "errors": errors.load(Ordering::Relaxed),
            "rps": all.len() as f64 / elapsed.as_secs_f64(),
            "p50_ms": pct(0.50),
            "p90_ms": pct(0.90),
            "p99_ms": pct(0.99),
            "max_ms": pct(1.0),
        });
        // The JSON result is this program's output.
        #[allow(clippy::print_stdout)]
        {
            println!("{out}");
        }
    });
}
