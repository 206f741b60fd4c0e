//! The `podkit` binary: command-line parsing and dispatch only. Each command lives in its own
//! crate; this file lists them.

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use podkit_core::config::{self, with_admin_default};

/// Pattern containers for distributed systems, as one small binary: run it beside any app and
/// talk to it over localhost.
#[derive(Debug, Parser)]
#[command(name = "podkit", version, propagate_version = true, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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
        after_help = "Example:\n  podkit ambassador --config nutcracker.yml\n  podkit ambassador -c nutcracker.yml -s 22222   # nutcracker's flags work too\n\nPodkit's own options can also come from PODKIT_* variables or --options FILE."
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
}

/// Options whose values `GET /config` never shows.
const SECRETS: &[&str] = &[];

fn main() {
    let cmd = Cli::command()
        .mut_subcommand("run", |c| with_admin_default(c, podkit_run::DEFAULT_ADMIN))
        .mut_subcommand("elect", |c| with_admin_default(c, podkit_elect::DEFAULT_ADMIN))
        .mut_subcommand("ambassador", |c| {
            // --config is twemproxy's file here, as for nutcracker; podkit's own option file
            // is --options.
            with_admin_default(c, podkit_ambassador::DEFAULT_ADMIN).mut_arg("config", |a| {
                a.long("options").help(
                    "Read podkit's options from a YAML or TOML file whose keys are the long option names. Flags and PODKIT_* variables take precedence over it.",
                )
            })
        })
        .mut_subcommand("scatter", |c| with_admin_default(c, podkit_scatter::DEFAULT_ADMIN))
        .mut_subcommand("queue", |c| {
            c.mut_subcommand("work", |w| with_admin_default(w, podkit_queue::DEFAULT_ADMIN))
                .mut_subcommand("pipeline", |w| with_admin_default(w, podkit_queue::DEFAULT_ADMIN))
        });
    let parsed = match config::parse(cmd, std::env::args_os().collect(), SECRETS) {
        Ok(p) => p,
        Err(e) => std::process::exit(e.report()),
    };
    let cli = match Cli::from_arg_matches(&parsed.matches) {
        Ok(cli) => cli,
        Err(e) => std::process::exit(config::ConfigError::Cli(e).report()),
    };
    // run and elect are mostly idle and latency-bound: one thread keeps podkit's own footprint
    // small (the blocking pool still serves file I/O and profiles).
    let runtime = podkit_core::RuntimeBuilder::new_current_thread();
    let code = match cli.command {
        Command::Run(args) => {
            let common = args.common.clone();
            podkit_core::launch(podkit_run::Run::new(args), &common, parsed.effective, runtime)
        }
        Command::Elect(args) => {
            let common = args.common.clone();
            podkit_core::launch(podkit_elect::Elect::new(args), &common, parsed.effective, runtime)
        }
        Command::Ambassador(args) => {
            if args.test_conf {
                std::process::exit(podkit_ambassador::test_config(&args.pools_file));
            }
            let common = args.common.clone();
            // Clients are served by the ambassador's own worker threads (one per core); this
            // runtime only accepts connections and runs the admin side.
            match podkit_ambassador::Ambassador::new(args) {
                Ok(a) => podkit_core::launch(a, &common, parsed.effective, runtime),
                Err(e) => {
                    eprintln!("error: {e}");
                    podkit_core::EX_USAGE
                }
            }
        }
        Command::Scatter(args) => {
            let common = args.common.clone();
            // A root serves many clients and fans out to many leaves: every core it is given.
            let runtime = podkit_core::RuntimeBuilder::new_multi_thread();
            podkit_core::launch(podkit_scatter::Scatter::new(args), &common, parsed.effective, runtime)
        }
        Command::Queue(podkit_queue::QueueArgs { command: podkit_queue::QueueCommand::Work(args) }) => {
            let common = args.common.clone();
            // Items run as processes and the store works on the blocking pool: one thread
            // schedules them all.
            podkit_core::launch(podkit_queue::Work::new(args), &common, parsed.effective, runtime)
        }
        Command::Queue(podkit_queue::QueueArgs { command: podkit_queue::QueueCommand::Pipeline(args) }) => {
            let common = args.common.clone();
            podkit_core::launch(podkit_queue::Pipeline::new(args), &common, parsed.effective, runtime)
        }
        Command::Queue(podkit_queue::QueueArgs { command }) => podkit_queue::run_oneshot(command),
    };
    std::process::exit(code);
}
