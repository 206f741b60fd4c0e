//! A scatter root whose leaves are found by DNS (`dns://leaf`, Docker's embedded DNS, leaf
//! containers sharing the network alias): a killed leaf stops being asked, an added one is.

use std::time::Duration;

use podkit_testkit::assert_eventually;
use podkit_testkit::docker::{Container, Network};

use crate::support::{http_get, podkit, tools};

/// A leaf: busybox httpd answering /search with its own host name.
fn leaf(net: &Network) -> Container {
    let tools = tools();
    Container::run(
        "leaf",
        &[
            "--network",
            &net.name,
            "--network-alias",
            "leaf",
            &tools,
            "sh",
            "-c",
            "mkdir -p /tmp/www && echo \"[{\\\"leaf\\\":\\\"$(hostname)\\\"}]\" > /tmp/www/search && exec httpd -f -p 8080 -h /tmp/www",
        ],
    )
}

#[test]
fn leaves_found_by_dns_come_and_go_while_requests_run() {
    let net = Network::new(true);
    let mut leaves = vec![leaf(&net), leaf(&net), leaf(&net), leaf(&net)];
    let image = podkit();
    let root = Container::run(
        "scatter",
        &[
            "--network",
            &net.name,
            &image,
            "scatter",
            "--listen",
            "0.0.0.0:8080",
            "--admin",
            "0.0.0.0:9195",
            "--leaves",
            "dns://leaf:8080",
            "--resolve-interval",
            "1s",
            "--merge",
            "concat",
            "--deadline",
            "1s",
        ],
    );
    let addr = format!("{}:8080", root.ip(&net));
    let answered = || -> usize {
        let (code, body) = http_get(&addr, "/search");
        if code != 200 {
            return 0;
        }
        serde_json::from_slice::<serde_json::Value>(&body).ok().and_then(|v| v.as_array().map(Vec::len)).unwrap_or(0)
    };
    assert_eventually!(
        timeout = Duration::from_secs(20),
        answered() == 4,
        "four leaves never answered: {}",
        root.logs()
    );
    // A leaf killed: the root stops asking it once DNS no longer names it.
    leaves.remove(0).kill("KILL");
    assert_eventually!(
        timeout = Duration::from_secs(20),
        answered() == 3,
        "still asking the dead leaf: {}",
        root.logs()
    );
    // A leaf added: it is asked.
    leaves.push(leaf(&net));
    leaves.push(leaf(&net));
    assert_eventually!(
        timeout = Duration::from_secs(20),
        answered() == 5,
        "the new leaves were not asked: {}",
        root.logs()
    );
}
