//! The adapter sidecar beside memcached and Redis containers, scraped by a Prometheus
//! container: PromQL sees the translated series.

use std::time::Duration;

use podkit_testkit::assert_eventually;
use podkit_testkit::docker::{Container, ImageSpec, Network, host_image};
use podkit_testkit::require_program;

use crate::support::{Pod, file, http_get, memcache, memcached, podkit, redis};

#[test]
fn prometheus_scrapes_the_adapter_sidecar_over_memcached_and_redis() {
    let net = Network::new(true);
    let m = memcached(&net, "cache");
    let r = redis(&net, "sessions");
    let mip = format!("{}:11211", m.ip(&net));
    assert_eventually!(memcache(&mip, "version\r\n").starts_with("VERSION"), "memcached: {}", m.logs());
    memcache(&mip, "set a 0 0 1\r\n1\r\nset b 0 0 1\r\n2\r\nset c 0 0 1\r\n3\r\n");
    assert_eventually!(r.logs().contains("Ready to accept connections"), "redis: {}", r.logs());
    let mut pod = Pod::new(&net, &["app-pod"]);
    let image = podkit();
    pod.add(
        "adapter",
        &[
            &image,
            "adapter",
            "--memcached",
            "cache:11211",
            "--redis",
            "redis://sessions:6379",
            "--listen",
            "0.0.0.0:9199",
        ],
    );
    let adapter = format!("{}:9199", pod.ip(&net));
    assert_eventually!(http_get(&adapter, "/metrics").0 == 200, "adapter: {}", pod.containers[0].logs());

    let prometheus = require_program("prometheus", "prometheus");
    let image = host_image(
        "prometheus",
        &ImageSpec { programs: vec![prometheus], dirs: vec!["/tmp".into()], ..ImageSpec::default() },
    );
    let conf = file(
        "prometheus.yml",
        "global: {scrape_interval: 1s}\nscrape_configs:\n  - job_name: pod\n    static_configs: [{targets: ['app-pod:9199']}]\n",
    );
    let mount = format!("{}:/etc/prometheus.yml:ro", conf.display());
    let p = Container::run(
        "prometheus",
        &[
            "--network",
            &net.name,
            "-v",
            &mount,
            "--user",
            "65534:65534",
            &image,
            "/usr/bin/prometheus",
            "--config.file=/etc/prometheus.yml",
            "--storage.tsdb.path=/tmp/data",
            "--web.listen-address=0.0.0.0:9090",
        ],
    );
    let api = format!("{}:9090", p.ip(&net));
    let query = |q: &str| -> String {
        let (_, body) = http_get(&api, &format!("/api/v1/query?query={q}"));
        String::from_utf8_lossy(&body).into_owned()
    };
    assert_eventually!(
        timeout = Duration::from_secs(60),
        query("memcached_current_items").contains("\"3\""),
        "PromQL: {} / prometheus: {}",
        query("memcached_current_items"),
        p.logs()
    );
    assert!(query("redis_up").contains("\"1\""), "{}", query("redis_up"));
    assert!(query("up%7Bjob%3D%22pod%22%7D").contains("\"1\""), "{}", query("up{job=\"pod\"}"));
}
