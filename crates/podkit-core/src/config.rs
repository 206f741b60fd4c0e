//! Configuration: flags, `PODKIT_*` environment variables and `--config FILE`, in that order of
//! precedence, all checked by the same clap definitions.
//!
//! Each command declares its options once, as a clap `Args` struct. Every long option also
//! reads `PODKIT_<NAME>` (dashes become underscores). A config file (YAML or TOML) holds the
//! same names as keys; its values are turned into flags and parsed a second time by clap, so a
//! bad value in a file gets the same checks and the same message as on the command line, plus
//! the file and key it came from. Unknown keys are rejected.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Args, Command, ValueEnum};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::types::Duration;

pub use crate::exit::EX_USAGE;

/// Options every long-running command takes: the admin listener, logging, shutdown.
#[derive(Debug, Clone, Args, Serialize)]
pub struct CommonArgs {
    /// Admin listener: healthz, readyz, metrics, logs, profile, config, lifecycle. Port 0 picks
    /// a free port (see --admin-addr-file).
    #[arg(long, value_name = "ADDR", value_parser = parse_listen_addr, help_heading = "Admin and logging")]
    pub admin: SocketAddr,

    /// Write the admin listener's bound address to this file once it listens.
    #[arg(long, value_name = "PATH", help_heading = "Admin and logging")]
    pub admin_addr_file: Option<PathBuf>,

    /// Require `Authorization: Bearer <token>` (the file's content) on state-changing admin
    /// endpoints, from every caller. Without it, those endpoints accept loopback callers only.
    #[arg(long, value_name = "PATH", help_heading = "Admin and logging")]
    pub admin_token_file: Option<PathBuf>,

    /// Log format on stderr: text on a terminal and JSON lines otherwise, unless forced.
    #[arg(long, value_enum, default_value_t = LogFormat::Auto, help_heading = "Admin and logging")]
    pub log_format: LogFormat,

    /// Log filter: a level (error, warn, info, debug, trace) or tracing directives such as
    /// `info,podkit_run=debug`.
    #[arg(long, value_name = "FILTER", default_value = "info", value_parser = parse_log_filter, help_heading = "Admin and logging")]
    pub log_level: String,

    /// Write the log to this file (appending) instead of stderr. It is reopened on SIGHUP, so
    /// logrotate needs no copytruncate: rename the file, then `kill -HUP`.
    #[arg(long, value_name = "FILE", help_heading = "Admin and logging")]
    pub log_file: Option<PathBuf>,

    /// How many recent log records the admin `/logs` endpoint keeps.
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000), help_heading = "Admin and logging")]
    pub log_buffer: u32,

    /// On SIGTERM, how long to drain before giving up (Kubernetes'
    /// terminationGracePeriodSeconds).
    #[arg(long, value_name = "DURATION", default_value = "30s", help_heading = "Admin and logging")]
    pub grace: Duration,

    /// Read options from a YAML or TOML file whose keys are the long option names. Flags and
    /// PODKIT_* variables take precedence over it.
    #[arg(long, value_name = "FILE", help_heading = "Admin and logging")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Auto,
    Text,
    Json,
}

/// A listener address: `IP:PORT`, or `localhost:PORT` (loopback). Other host names are not
/// resolved: a listener binds an address.
pub fn parse_listen_addr(s: &str) -> Result<SocketAddr, String> {
    if let Some(port) = s.strip_prefix("localhost:") {
        let port: u16 = port.parse().map_err(|_| format!("{s}: {port:?} is not a port number"))?;
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse().map_err(|_| {
        format!(
            "{s}: expected IP:PORT such as 127.0.0.1:9190, [::1]:9190 or 0.0.0.0:9190 (localhost:PORT means 127.0.0.1)"
        )
    })
}

fn parse_log_filter(s: &str) -> Result<String, String> {
    // tracing reads a bare word as a target to log at every level, so a misspelt level
    // (`debugg`) would silence everything else. A bare word must be a level; a target is given
    // with its level (`podkit_run=debug`) or as a module path (`podkit_run::reaper`).
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    for d in s.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let bare = !d.contains(['=', ':', '[']);
        if bare && !LEVELS.contains(&d.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "{d:?} is not a level (off, error, warn, info, debug, trace); give a target with its level, as in {d}=debug"
            ));
        }
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(s)
        .map(|_| s.to_string())
        .map_err(|e| format!("{e}; expected a level such as info or directives such as info,podkit_run=debug"))
}

// === impl ConfigError ===

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// clap's own error (bad flag, bad value, --help, --version); it knows how to print itself
    /// and which of those are not errors.
    #[error("{0}")]
    Cli(#[from] clap::Error),
    /// clap's error for a value that came from the config file, with where it came from.
    #[error("{message}")]
    FromFile { message: String },
    #[error("config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
}

impl ConfigError {
    /// Prints the error (or the help/version text) and returns the exit status: 0 for help and
    /// version, 64 for everything else.
    pub fn report(&self) -> i32 {
        match self {
            ConfigError::Cli(e) if e.use_stderr() => {
                // clap repeats the bad value, and a URL's password must not reach a terminal or
                // a log collector that way.
                eprint!("{}", redact_passwords_in(&e.render().to_string()));
                if let Some(tip) = separator_tip(e) {
                    eprintln!("{tip}");
                }
                if let Some(var) = variable_of(e) {
                    eprintln!("note: that value came from the environment variable {var}");
                }
                EX_USAGE
            }
            ConfigError::Cli(e) => {
                let _ = e.print();
                0
            }
            other => {
                eprintln!("error: {other}");
                EX_USAGE
            }
        }
    }
}

/// For a bad value that came from a `PODKIT_*` variable rather than a flag: the variable.
fn variable_of(e: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue};
    let Some(ContextValue::String(value)) = e.get(ContextKind::InvalidValue) else { return None };
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else { return None };
    let long = arg.strip_prefix("--")?.split([' ', '=']).next()?;
    let suffix = format!("_{}", long.to_ascii_uppercase().replace('-', "_"));
    // The flag itself on the command line wins over the variable: then it is not the cause.
    if std::env::args().any(|a| a == format!("--{long}") || a.starts_with(&format!("--{long}="))) {
        return None;
    }
    std::env::vars().find(|(k, v)| k.starts_with("PODKIT_") && k.ends_with(&suffix) && v == value).map(|(k, _)| k)
}

/// For a program given without `--` (`podkit run sleep 1`): where the `--` goes.
fn separator_tip(e: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if e.kind() != ErrorKind::UnknownArgument {
        return None;
    }
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else { return None };
    if arg.starts_with('-') {
        return None;
    }
    Some(format!(
        "tip: a program to run goes after `--`, as in `podkit run [OPTIONS] -- {arg} …` (`podkit queue work [OPTIONS] -- {arg} …`)"
    ))
}

// === impl Parsed ===

/// The outcome of [`parse`]: clap's matches with every layer applied, and the effective
/// configuration as served by `GET /config`.
#[derive(Debug)]
pub struct Parsed {
    pub matches: ArgMatches,
    pub effective: Value,
}

/// Names of options whose values `/config` must never show.
pub type Secrets = &'static [&'static str];

/// Sets the default admin address of one command: each command has its own fixed port, so the
/// commands of one pod (which share localhost) do not collide.
pub fn with_admin_default(cmd: Command, addr: &'static str) -> Command {
    cmd.mut_arg("admin", |a| a.default_value(addr).required(false))
}

/// For a command whose `--config` is a file of its own (nutcracker.yml, adapter.yaml): sets its
/// default admin address and renames podkit's common options file to `--options`.
pub fn with_own_config_file(cmd: Command, admin: &'static str) -> Command {
    with_admin_default(cmd, admin).mut_arg("config", |a| {
        a.long("options").help(
            "Read podkit's options from a YAML or TOML file whose keys are the long option names. Flags and PODKIT_* variables take precedence over it.",
        )
    })
}

/// The options of [`CommonArgs`], whose variables every command shares.
const COMMON: [&str; 9] = [
    "admin",
    "admin_addr_file",
    "admin_token_file",
    "log_format",
    "log_level",
    "log_file",
    "log_buffer",
    "grace",
    "config",
];

/// Gives every long option an environment variable: `PODKIT_<NAME>` for the options every
/// command shares ([`CommonArgs`]: `PODKIT_GRACE`, `PODKIT_ADMIN`, …) and
/// `PODKIT_<COMMAND>_<NAME>` for a command's own (`PODKIT_ELECT_ID`, `PODKIT_QUEUE_PUSH_ID`), so
/// that one command's variable is never read by another.
pub fn with_env(cmd: Command) -> Command {
    cmd.mut_subcommands(|sub| with_env_prefixed(sub, "PODKIT"))
}

fn with_env_prefixed(cmd: Command, parent: &str) -> Command {
    let prefix = format!("{parent}_{}", cmd.get_name().to_ascii_uppercase().replace('-', "_"));
    let own = prefix.clone();
    let cmd = cmd.mut_args(move |arg| {
        if arg.is_positional() || matches!(arg.get_id().as_str(), "help" | "version") {
            return arg;
        }
        match arg.get_long() {
            Some(long) => {
                let name = long.to_ascii_uppercase().replace('-', "_");
                let var = if COMMON.contains(&arg.get_id().as_str()) {
                    format!("PODKIT_{name}")
                } else {
                    format!("{own}_{name}")
                };
                let flag = matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse);
                // Flags read the usual spellings from the environment: 1/0, yes/no, on/off.
                if flag { arg.env(var).value_parser(clap::builder::BoolishValueParser::new()) } else { arg.env(var) }
            }
            None => arg,
        }
    });
    cmd.mut_subcommands(move |sub| with_env_prefixed(sub, &prefix))
}

/// Parses `argv` against `cmd` with flags over `PODKIT_*` environment over `--config FILE`.
pub fn parse(cmd: Command, argv: Vec<OsString>, secrets: Secrets) -> Result<Parsed, ConfigError> {
    let cmd = with_env(cmd);
    // The first pass only finds the subcommand, the config file and where each value came
    // from; required arguments may still come from the file, so none is required yet.
    let first = relaxed(cmd.clone()).try_get_matches_from(&argv)?;
    let (path, leaf) = leaf_matches(&first);
    let leaf_cmd = find_subcommand(&cmd, &path);

    let config_file = leaf.try_get_one::<PathBuf>("config").ok().flatten().cloned();
    let Some(file) = config_file else {
        let matches = cmd.clone().try_get_matches_from(&argv)?;
        let (path, leaf) = leaf_matches(&matches);
        let effective = effective_config(&path, leaf, find_subcommand(&cmd, &path), &BTreeMap::new(), secrets);
        return Ok(Parsed { matches, effective });
    };

    let values = read_file(&file)?;
    let mut injected = Vec::<OsString>::new();
    let mut trailing = Vec::<OsString>::new();
    let mut from_file = BTreeMap::<String, String>::new();
    for (key, value) in &values {
        let long = key.replace('_', "-");
        let Some(arg) = leaf_cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()) || (a.is_positional() && a.get_id() == long.as_str()))
        else {
            let known: Vec<_> = leaf_cmd
                .get_arguments()
                .filter(|a| !matches!(a.get_id().as_str(), "help" | "version" | "config"))
                .map(|a| a.get_long().unwrap_or(a.get_id().as_str()).to_string())
                .collect();
            return Err(ConfigError::File {
                path: file,
                reason: format!("unknown key `{key}`; expected one of: {}", known.join(", ")),
            });
        };
        if long == "config" {
            return Err(ConfigError::File { path: file, reason: "key `config` cannot name another file".into() });
        }
        let id = arg.get_id().as_str();
        let set_above =
            |id: &str| matches!(leaf.value_source(id), Some(ValueSource::CommandLine | ValueSource::EnvVariable));
        if set_above(id) {
            continue; // flags and environment win over the file
        }
        // An option set above wins over a file key it conflicts with (a flag
        // --pre-stop-http over a file's pre-stop-exec), rather than making them clash.
        // (clap records a conflict on the side that declared it, so look both ways.)
        let clashes = leaf_cmd.get_arguments().any(|other| {
            set_above(other.get_id().as_str())
                && (leaf_cmd.get_arg_conflicts_with(arg).iter().any(|c| c.get_id() == other.get_id())
                    || leaf_cmd.get_arg_conflicts_with(other).iter().any(|c| c.get_id() == arg.get_id()))
        });
        if clashes {
            continue;
        }
        from_file.insert(id.to_string(), key.clone());
        let items = value.items();
        if arg.is_positional() {
            trailing.extend(items.into_iter().map(OsString::from));
            continue;
        }
        match arg.get_action() {
            ArgAction::SetTrue | ArgAction::SetFalse => match value {
                FileValue::Bool(b) => {
                    let default_true = matches!(arg.get_action(), ArgAction::SetFalse);
                    if *b != default_true {
                        injected.push(format!("--{long}").into());
                    }
                }
                other => {
                    return Err(ConfigError::File {
                        path: file,
                        reason: format!("key `{key}`: invalid value {other}; expected true or false"),
                    });
                }
            },
            _ => injected.extend(items.into_iter().map(|v| OsString::from(format!("--{long}={v}")))),
        }
    }

    // argv = program, subcommand names, file options, then the caller's own arguments (which
    // were already checked not to repeat any of them).
    let skip = 1 + path.len();
    let mut argv2: Vec<OsString> = argv[..skip.min(argv.len())].to_vec();
    argv2.extend(injected);
    argv2.extend(argv[skip.min(argv.len())..].iter().cloned());
    if !trailing.is_empty() {
        argv2.push("--".into());
        argv2.extend(trailing);
    }

    let matches = cmd.clone().try_get_matches_from(&argv2).map_err(|e| {
        let from = e.get(clap::error::ContextKind::InvalidArg).map(|a| a.to_string());
        let key = from.and_then(|a| {
            from_file.iter().find(|(id, _)| a.contains(&format!("--{}", id.replace('_', "-")))).map(|(_, k)| k.clone())
        });
        match key {
            Some(key) => ConfigError::FromFile {
                message: format!(
                    "{} (from config file {}, key `{key}`)",
                    e.render().to_string().trim_end().trim_start_matches("error: "),
                    file.display()
                ),
            },
            None => ConfigError::Cli(e),
        }
    })?;
    let (path, leaf) = leaf_matches(&matches);
    let effective = effective_config(&path, leaf, find_subcommand(&cmd, &path), &from_file, secrets);
    Ok(Parsed { matches, effective })
}

fn relaxed(cmd: Command) -> Command {
    cmd.mut_args(|a| a.required(false)).mut_subcommands(relaxed)
}

fn leaf_matches(m: &ArgMatches) -> (Vec<String>, &ArgMatches) {
    let mut path = Vec::new();
    let mut cur = m;
    while let Some((name, sub)) = cur.subcommand() {
        path.push(name.to_string());
        cur = sub;
    }
    (path, cur)
}

fn find_subcommand<'a>(cmd: &'a Command, path: &[String]) -> &'a Command {
    path.iter().fold(cmd, |c, name| c.find_subcommand(name).expect("matched subcommand exists"))
}

/// The effective configuration: every option's value and where it came from.
fn effective_config(
    path: &[String],
    m: &ArgMatches,
    cmd: &Command,
    from_file: &BTreeMap<String, String>,
    secrets: Secrets,
) -> Value {
    let mut values = Map::new();
    let mut sources = Map::new();
    for arg in cmd.get_arguments() {
        let id = arg.get_id().as_str();
        if matches!(id, "help" | "version") {
            continue;
        }
        let Some(source) = m.value_source(id) else {
            continue;
        };
        let raw: Vec<String> =
            m.get_raw(id).map(|vals| vals.map(|v| v.to_string_lossy().into_owned()).collect()).unwrap_or_default();
        let value = if secrets.contains(&id) {
            Value::String("<redacted>".into())
        } else if let Some(url) = raw.first().and_then(|v| redact_url_password(v)) {
            Value::String(url)
        } else if matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse) {
            Value::Bool(m.get_flag(id))
        } else if matches!(arg.get_action(), ArgAction::Append) || arg.is_positional() {
            Value::Array(raw.into_iter().map(Value::String).collect())
        } else {
            raw.into_iter().next().map(Value::String).unwrap_or(Value::Null)
        };
        let source = if from_file.contains_key(id) {
            "file"
        } else {
            match source {
                ValueSource::DefaultValue => "default",
                ValueSource::EnvVariable => "env",
                _ => "flag",
            }
        };
        let key = arg.get_long().unwrap_or(id).to_string();
        values.insert(key.clone(), value);
        sources.insert(key, Value::String(source.into()));
    }
    serde_json::json!({ "command": path.join(" "), "values": values, "sources": sources })
}

/// `http://user:secret@host/` → `http://user:<redacted>@host/`; `None` when there is nothing
/// to hide.
/// `text` with the password of every URL in it (`scheme://user:password@host`) replaced by
/// `***`.
pub fn redact_passwords_in(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        let end = after
            .find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace() || c == '\'' || c == '"')
            .unwrap_or(after.len());
        let authority = &after[..end];
        match authority.rsplit_once('@').and_then(|(info, host)| info.split_once(':').map(|(u, _)| (u, host))) {
            Some((user, host)) => {
                out.push_str(user);
                out.push_str(":***@");
                out.push_str(host);
            }
            None => out.push_str(authority),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

fn redact_url_password(value: &str) -> Option<String> {
    let (scheme, rest) = value.split_once("://")?;
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (userinfo, host) = rest[..authority_end].rsplit_once('@')?;
    let (user, _password) = userinfo.split_once(':')?;
    Some(format!("{scheme}://{user}:<redacted>@{host}{}", &rest[authority_end..]))
}

// === impl FileValue ===

/// One value in a config file: a scalar, or a list of scalars for repeatable options.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum FileValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<Scalar>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Scalar {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

impl std::fmt::Display for Scalar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scalar::Bool(b) => b.fmt(f),
            Scalar::Int(i) => i.fmt(f),
            Scalar::Float(x) => x.fmt(f),
            Scalar::Str(s) => s.fmt(f),
        }
    }
}

impl std::fmt::Display for FileValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FileValue::Str(s) => write!(f, "{s:?}"),
            other => write!(f, "{}", other.items().join(", ")),
        }
    }
}

impl FileValue {
    fn items(&self) -> Vec<String> {
        match self {
            FileValue::Bool(b) => vec![b.to_string()],
            FileValue::Int(i) => vec![i.to_string()],
            FileValue::Float(x) => vec![x.to_string()],
            FileValue::Str(s) => vec![s.clone()],
            FileValue::List(items) => items.iter().map(ToString::to_string).collect(),
        }
    }
}

fn read_file(path: &Path) -> Result<BTreeMap<String, FileValue>, ConfigError> {
    let err = |reason: String| ConfigError::File { path: path.to_path_buf(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read it: {e}")))?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "toml" => toml::from_str(&text).map_err(|e| err(format!("invalid TOML: {e}"))),
        "yaml" | "yml" => {
            if text.trim().is_empty() {
                return Ok(BTreeMap::new());
            }
            serde_saphyr::from_str(&text).map_err(|e| err(format!("invalid YAML: {e}")))
        }
        _ => Err(err("unknown format; expected a file name ending in .yaml, .yml or .toml".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{FromArgMatches, Parser, Subcommand};

    #[test]
    fn a_misspelt_log_level_is_refused_and_real_filters_pass() {
        assert!(parse_log_filter("debugg").unwrap_err().contains("not a level"));
        assert!(parse_log_filter("info,warnn").unwrap_err().contains("\"warnn\""));
        for ok in ["info", "DEBUG", "off", "info,podkit_run=debug", "podkit_run::reaper", "warn,hyper=off"] {
            assert!(parse_log_filter(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn listen_addresses_take_localhost_and_say_what_they_expect() {
        assert_eq!(parse_listen_addr("localhost:9190").unwrap(), SocketAddr::from(([127, 0, 0, 1], 9190)));
        assert_eq!(parse_listen_addr("0.0.0.0:0").unwrap().port(), 0);
        assert!(parse_listen_addr("example.com:80").unwrap_err().contains("expected IP:PORT"));
        assert!(parse_listen_addr("localhost:http").unwrap_err().contains("not a port number"));
    }

    #[derive(Debug, Parser)]
    #[command(name = "podkit")]
    struct Cli {
        #[command(subcommand)]
        cmd: Cmd,
    }

    #[derive(Debug, Subcommand)]
    enum Cmd {
        Demo(DemoArgs),
    }

    #[derive(Debug, Args)]
    struct DemoArgs {
        #[command(flatten)]
        common: CommonArgs,
        #[arg(long, default_value = "1s")]
        interval: Duration,
        #[arg(long)]
        verbose: bool,
        #[arg(long)]
        password: Option<String>,
        #[arg(long = "tag")]
        tags: Vec<String>,
        #[arg(last = true)]
        command: Vec<String>,
    }

    fn command() -> Command {
        use clap::CommandFactory;
        Cli::command().mut_subcommand("demo", |c| with_admin_default(c, "127.0.0.1:9999"))
    }

    fn run(args: &[&str]) -> Result<(DemoArgs, Value), ConfigError> {
        let argv = args.iter().map(OsString::from).collect();
        let parsed = parse(command(), argv, &["password"])?;
        let Cmd::Demo(demo) = Cli::from_arg_matches(&parsed.matches).unwrap().cmd;
        Ok((demo, parsed.effective))
    }

    fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_string_lossy().into_owned()
    }

    #[test]
    fn defaults_apply_without_file() {
        let (demo, eff) = run(&["podkit", "demo"]).unwrap();
        assert_eq!(demo.common.grace, Duration::from_secs(30));
        assert_eq!(demo.common.admin.to_string(), "127.0.0.1:9999");
        assert_eq!(eff["sources"]["grace"], "default");
        assert_eq!(eff["command"], "demo");
    }

    #[test]
    fn yaml_file_fills_what_flags_do_not_set() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(
            &dir,
            "c.yaml",
            "grace: 5s\ninterval: 2s\nverbose: true\ntag: [a, b]\npassword: hunter2\ncommand: [echo, hi]\n",
        );
        let (demo, eff) = run(&["podkit", "demo", "--config", &f, "--interval", "3s"]).unwrap();
        assert_eq!(demo.common.grace, Duration::from_secs(5));
        assert_eq!(demo.interval, Duration::from_secs(3), "flag beats file");
        assert!(demo.verbose);
        assert_eq!(demo.tags, ["a", "b"]);
        assert_eq!(demo.command, ["echo", "hi"]);
        assert_eq!(eff["sources"]["grace"], "file");
        assert_eq!(eff["sources"]["interval"], "flag");
        assert_eq!(eff["values"]["password"], "<redacted>");
        assert!(!eff.to_string().contains("hunter2"));
    }

    #[test]
    fn toml_file_with_snake_case_keys() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(&dir, "c.toml", "log_format = \"json\"\nlog-buffer = 50\n");
        let (demo, _) = run(&["podkit", "demo", "--config", &f]).unwrap();
        assert_eq!(demo.common.log_format, LogFormat::Json);
        assert_eq!(demo.common.log_buffer, 50);
    }

    #[test]
    fn unknown_key_is_rejected_with_the_known_ones() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(&dir, "c.yaml", "gracee: 5s\n");
        let err = run(&["podkit", "demo", "--config", &f]).unwrap_err().to_string();
        assert!(err.contains("unknown key `gracee`"), "{err}");
        assert!(err.contains("grace"), "{err}");
    }

    #[test]
    fn bad_value_in_file_names_file_key_and_expectation() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(&dir, "c.yaml", "grace: soon\n");
        let err = run(&["podkit", "demo", "--config", &f]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("soon"), "{msg}");
        assert!(msg.contains("key `grace`"), "{msg}");
        assert!(msg.contains("expected a duration"), "{msg}");
        assert_eq!(err.report(), EX_USAGE);
    }

    #[test]
    fn bad_flag_value_is_a_usage_error() {
        let err = run(&["podkit", "demo", "--grace", "forever"]).unwrap_err();
        assert!(err.to_string().contains("forever"));
        assert_eq!(err.report(), EX_USAGE);
    }

    #[test]
    fn malformed_and_unknown_format_files_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(&dir, "c.yaml", "grace: [unclosed\n");
        assert!(run(&["podkit", "demo", "--config", &f]).unwrap_err().to_string().contains("invalid YAML"));
        let f = write(&dir, "c.json", "{}");
        assert!(run(&["podkit", "demo", "--config", &f]).unwrap_err().to_string().contains("unknown format"));
        let missing = dir.path().join("nope.yaml");
        let err = run(&["podkit", "demo", "--config", missing.to_str().unwrap()]).unwrap_err();
        assert!(err.to_string().contains("cannot read it"));
    }

    #[test]
    fn passwords_in_text_are_redacted() {
        assert_eq!(
            redact_passwords_in("invalid value 'redis://:pw@h:x/0' for '--store'; also http://u:p@h/a and ftp://h"),
            "invalid value 'redis://:***@h:x/0' for '--store'; also http://u:***@h/a and ftp://h"
        );
    }

    #[test]
    fn url_passwords_are_redacted() {
        assert_eq!(redact_url_password("redis://u:pw@h:1/0").unwrap(), "redis://u:<redacted>@h:1/0");
        assert_eq!(redact_url_password("http://h/a@b"), None);
        assert_eq!(redact_url_password("http://user@h/"), None);
    }

    #[test]
    fn every_long_option_has_an_environment_variable() {
        let cmd = with_env(command());
        let demo = cmd.find_subcommand("demo").unwrap();
        let grace = demo.get_arguments().find(|a| a.get_id() == "grace").unwrap();
        assert_eq!(grace.get_env().unwrap(), "PODKIT_GRACE");
        let file = demo.get_arguments().find(|a| a.get_id() == "admin_addr_file").unwrap();
        assert_eq!(file.get_env().unwrap(), "PODKIT_ADMIN_ADDR_FILE");
        // A command's own options carry its name: no other command reads them.
        let interval = demo.get_arguments().find(|a| a.get_id() == "interval").unwrap();
        assert_eq!(interval.get_env().unwrap(), "PODKIT_DEMO_INTERVAL");
    }
}
