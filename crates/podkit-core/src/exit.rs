//! Exit statuses: one table for every command (sysexits.h names), and the error convention
//! that carries them.
//!
//! | status | meaning |
//! |---|---|
//! | 0 | done, or stopped gracefully |
//! | 1 | the work failed (a command's own failure: items dead-lettered, a sync that failed) |
//! | 64 `EX_USAGE` | bad configuration: a flag, a file, a URL; nothing was started |
//! | 69 `EX_UNAVAILABLE` | a service podkit needs (a store, a backend) cannot be used |
//! | 70 `EX_SOFTWARE` | podkit itself failed (cannot start its runtime, its signal handlers) |
//! | 126, 127 | `podkit run`: the program cannot be executed, or does not exist |
//! | 128 + N | signal N ended the program (`podkit run`), or a forced exit on signal N |

/// Bad configuration (sysexits.h `EX_USAGE`).
pub const EX_USAGE: i32 = 64;
/// A service the command needs cannot be used (sysexits.h `EX_UNAVAILABLE`).
pub const EX_UNAVAILABLE: i32 = 69;
/// An internal failure (sysexits.h `EX_SOFTWARE`).
pub const EX_SOFTWARE: i32 = 70;

/// An error that knows the exit status it ends the process with.
pub trait ExitStatus: std::error::Error {
    /// The process exit status for this error; see the module table.
    fn exit_status(&self) -> i32 {
        1
    }
}

/// A command's start-up failure: a message and the status it exits with. Constructors return
/// it for bad configuration (64) before anything is listening.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct StartError {
    pub status: i32,
    pub message: String,
}

impl StartError {
    /// A configuration error: exits 64.
    pub fn usage(message: impl Into<String>) -> Self {
        Self { status: EX_USAGE, message: message.into() }
    }

    /// A service that cannot be used: exits 69.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self { status: EX_UNAVAILABLE, message: message.into() }
    }

    /// An internal failure: exits 70.
    pub fn software(message: impl Into<String>) -> Self {
        Self { status: EX_SOFTWARE, message: message.into() }
    }
}

impl ExitStatus for StartError {
    fn exit_status(&self) -> i32 {
        self.status
    }
}

/// `e`, then each of its sources, joined with `: ` — the whole story in one line.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        // Many errors repeat their source in their own message; say it once.
        if !s.ends_with(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot open the store")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn chains_sources_once() {
        let e = Outer(std::io::Error::other("connection refused"));
        assert_eq!(error_chain(&e), "cannot open the store: connection refused");
    }
}
