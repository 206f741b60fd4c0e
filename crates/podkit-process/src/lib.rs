//! Processes podkit starts: the reaper that collects every exit, the command builder, process
//! trees that can be signalled and killed one at a time, one way to run a command to its end
//! ([`exec`]), hooks and probes into the app, and [`Supervised`] programs, any
//! number of them side by side.
//!
//! Every process a podkit command starts goes through [`Reaper::spawn`]; nothing else may
//! start one (`clippy.toml` forbids `tokio::process` and `Command::spawn` elsewhere), because a
//! blanket `waitpid(-1)` would otherwise steal exit statuses.
//!
//! [`Supervised`]: supervised
//! [`Reaper::spawn`]: reaper::Reaper::spawn

pub mod command;
pub mod contain;
pub mod exec;
pub mod hook;
pub mod output;
pub mod reaper;
pub mod supervised;
pub mod tree;

pub use command::{parse_signal, signal};
pub use exec::{Exec, ExecError, Finished, Keep, exec};
pub use hook::{Hook, Outcome, Runner};
pub use reaper::{Exit, Reaper};
pub use supervised::{Controller, Handle, Host, Program, Restart, RestartPolicy, StopPolicy, StopRequest};
pub use tree::Tree;
