//! The `podkit` binary: the list of commands, nothing else. Each command lives in its own crate
//! and says there how it is configured and run (`podkit_core::Command`).

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use podkit_core::Command as _;
use podkit_core::config;

/// Declares the commands: one line each (its help, its name, its options type).
macro_rules! commands {
    ($($(#[$meta:meta])* $variant:ident($args:ty),)*) => {
        // Parsed once per process: the size difference between the commands' options costs
        // nothing.
        #[allow(clippy::large_enum_variant)]
        #[derive(Debug, Subcommand)]
        enum Command {
            $($(#[$meta])* $variant($args),)*
        }

        impl Command {
            /// Lets each command adjust its own clap definition.
            fn augment(mut cmd: clap::Command) -> clap::Command {
                $(cmd = cmd.mut_subcommand(<$args as podkit_core::Command>::NAME, <$args as podkit_core::Command>::augment);)*
                cmd
            }

            fn main(self, effective: serde_json::Value) -> i32 {
                match self {
                    $(Command::$variant(args) => args.main(effective),)*
                }
            }
        }
    };
}

commands! {
    /// Run a program as PID 1 (or a subreaper) with the container lifecycle: signal forwarding,
    /// zombie reaping, pre-stop and save hooks, readiness, logs and metrics on the admin port.
    #[command(
        after_help = "Example:\n  podkit run --admin 127.0.0.1:0 --admin-addr-file /tmp/admin --pre-stop-exec 'curl -fsS -X POST http://127.0.0.1:8080/drain' -- my-server --port 8080"
    )]
    Run(podkit_run::RunArgs),

    /// Leader election sidecar: an HTTP API on localhost (campaign, renew, resign, who leads)
    /// with fencing tokens, over a lease file (one host) or etcd (a cluster).
    #[command(
        after_help = "Example:\n  podkit elect --id $HOSTNAME --backend etcd://etcd-0:2379,etcd-1:2379,etcd-2:2379/myapp --ttl 5s\n  curl -s localhost:4040/v1/elections/default"
    )]
    Elect(podkit_elect::ElectArgs),

    /// memcache/Redis sharding proxy that reads twemproxy's nutcracker.yml and places keys where
    /// twemproxy does; multi-threaded, reloads without dropping clients, fails fast or rehashes
    /// when a server is down.
    #[command(
        after_help = "Example:\n  podkit ambassador --config nutcracker.yml\n  podkit ambassador -d -c /etc/nutcracker/nutcracker.yml -o /var/log/nutcracker/nutcracker.log -p /run/nutcracker/nutcracker.pid   # nutcracker's command line works unchanged\n\nPodkit's own options can also come from PODKIT_* variables or --options FILE."
    )]
    Ambassador(podkit_ambassador::AmbassadorArgs),

    /// Scatter/gather root: fans a request out to one leaf per shard, merges the answers, and
    /// answers on time with what came back (deadlines, partial answers, hedges, breakers).
    #[command(
        after_help = "Example:\n  podkit scatter --listen 127.0.0.1:8080 --leaves http://10.0.0.1:80,http://10.0.0.2:80 --merge topk:score:10 --deadline 200ms --min-leaves 90% --hedge"
    )]
    Scatter(podkit_scatter::ScatterArgs),

    /// Work queue: push items, and run any file-in/file-out program on them as a stage, with
    /// leases, retries, dead letters and pipelines (--to), over SQLite (one host) or Redis.
    #[command(
        after_help = "Example:\n  podkit queue push --store sqlite:///tmp/q.db --queue resize images/\n  podkit queue work --store sqlite:///tmp/q.db --queue resize --out-dir out/ --exit-when-empty -- convert {input} -resize 50% {output}\n  podkit queue status --store sqlite:///tmp/q.db"
    )]
    Queue(podkit_queue::QueueArgs),

    /// Log-saver sidecar: follows log files through every kind of rotation and ships their
    /// lines to stdout, files, HTTP, Loki, Elasticsearch, syslog or Redis, checkpointing only
    /// what the sink acknowledged, so nothing is lost across a crash or an outage.
    #[command(
        after_help = "Example:\n  podkit logs --path '/var/log/app/*.log' --sink file:///var/log/saved/app.ndjson --state-dir /var/lib/podkit/logs\n  podkit logs --format cri --path '/var/log/pods/*/*/*.log' --label cluster=prod"
    )]
    Logs(podkit_logs::LogsArgs),

    /// Content sync sidecar: keeps a directory filled with the current content of a git
    /// repository or an HTTP archive, published atomically (git-sync's layout), on a period,
    /// SIGHUP or an authenticated trigger.
    #[command(
        after_help = "Example:\n  podkit sync --repo https://github.com/org/site --ref main --root /srv --link site\n  podkit sync --one-time --repo git@github.com:org/config.git --root /config --ssh-key-file /etc/git/key"
    )]
    Sync(podkit_sync::SyncArgs),

    /// Metrics adapter: one Prometheus /metrics over memcached, Redis, twemproxy (or podkit
    /// ambassador), JSON status pages, StatsD and other /metrics endpoints, under the names
    /// their exporters use, so existing dashboards keep working.
    #[command(
        after_help = "Example:\n  podkit adapter --memcached 127.0.0.1:11211 --redis redis://127.0.0.1:6379 --listen 0.0.0.0:9199\n  podkit adapter --config adapter.yaml\n\nPodkit's own options can also come from PODKIT_* variables or --options FILE."
    )]
    Adapter(podkit_adapter::AdapterArgs),

    /// Run a whole pod (a Kubernetes Pod file) as local programs: init containers, native
    /// sidecars started before the app and stopped after it, probes, restarts, Job completion,
    /// low-priority sidecars stopped under memory pressure, and one container updated at a time.
    #[command(
        after_help = "Example:
  podkit pod run pod.yaml
  podkit pod ps
  podkit pod apply pod.yaml      # restarts only the containers whose spec changed
  podkit pod render pod.yaml --image podkit:0.1.0 | kubectl apply -f -"
    )]
    Pod(podkit_pod::PodArgs),
}

/// Pattern containers for distributed systems, as one small binary: run it beside any app and
/// talk to it over localhost.
#[derive(Debug, Parser)]
#[command(name = "podkit", version, propagate_version = true, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Options whose values `GET /config` never shows.
const SECRETS: &[&str] = &[];

fn main() {
    // The containment shim podkit runs in front of a program (never typed by a user).
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == podkit_process::contain::ARG) {
        std::process::exit(podkit_process::contain::main(&args[2..]));
    }
    let parsed = match config::parse(Command::augment(Cli::command()), std::env::args_os().collect(), SECRETS) {
        Ok(p) => p,
        Err(e) => std::process::exit(e.report()),
    };
    let cli = match Cli::from_arg_matches(&parsed.matches) {
        Ok(cli) => cli,
        Err(e) => std::process::exit(config::ConfigError::Cli(e).report()),
    };
    std::process::exit(cli.command.main(parsed.effective));
}
