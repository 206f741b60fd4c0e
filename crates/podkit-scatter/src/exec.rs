//! The merge container as a command: the leaf answers on its stdin, the merged answer on its
//! stdout.

use std::time::Duration;

use podkit_core::Argv;
use podkit_process::exec::{self, Exec, ExecError, Keep};
use podkit_process::reaper::Reaper;

/// Runs `argv` with `input` on stdin and returns its stdout, within `timeout` and `limit` bytes.
pub(crate) async fn pipe(
    reaper: &Reaper,
    argv: &Argv,
    input: Vec<u8>,
    timeout: Duration,
    limit: usize,
) -> Result<Vec<u8>, String> {
    let spec = Exec::new(argv.as_slice(), timeout).stdin(input).stdout(Keep::Head(limit));
    let done = exec::exec(reaper, &spec).await.map_err(|e| match e {
        ExecError::TimedOut { .. } => format!("`{}` timed out", argv.program()),
        other => other.to_string(),
    })?;
    if !done.exit.success() {
        return Err(format!(
            "`{}` failed ({}): {}",
            argv.program(),
            done.exit,
            String::from_utf8_lossy(&done.stderr).trim()
        ));
    }
    if done.stdout_overflowed {
        return Err(format!("`{}` wrote more than {limit} bytes", argv.program()));
    }
    Ok(done.stdout)
}
