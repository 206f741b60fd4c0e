//! The merge container as a command: the leaf answers on its stdin, the merged answer on its
//! stdout.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::Signal;
use podkit_core::Argv;
use podkit_core::process;
use podkit_core::reaper::Reaper;

/// Runs `argv` with `input` on stdin and returns its stdout, within `timeout` and `limit` bytes.
pub async fn pipe(
    reaper: &Reaper,
    argv: &Argv,
    input: Vec<u8>,
    timeout: Duration,
    limit: usize,
) -> Result<Vec<u8>, String> {
    let args: Vec<OsString> = argv.as_slice().iter().map(OsString::from).collect();
    let mut cmd = process::command(&args, false);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut spawned = reaper.spawn(&mut cmd).map_err(|e| format!("cannot run `{}`: {e}", argv.program()))?;
    let pid = spawned.pid;
    let (stdin, stdout, stderr) =
        (spawned.child.stdin.take(), spawned.child.stdout.take(), spawned.child.stderr.take());
    let io = tokio::task::spawn_blocking(move || {
        // Feed stdin from its own thread so a command that writes before it has read
        // everything cannot deadlock against us.
        let writer = std::thread::spawn(move || {
            if let Some(mut w) = stdin {
                let _ = w.write_all(&input);
            }
        });
        let mut out = Vec::new();
        if let Some(r) = stdout {
            let _ = r.take(limit as u64 + 1).read_to_end(&mut out);
        }
        let mut err = Vec::new();
        if let Some(r) = stderr {
            let _ = r.take(4096).read_to_end(&mut err);
        }
        let _ = writer.join();
        (out, err)
    });
    let result = tokio::time::timeout(timeout, async {
        let exit = spawned.exit.await.map_err(|_| "lost the command's exit status".to_string())?;
        let (out, err) = io.await.map_err(|e| e.to_string())?;
        Ok::<_, String>((exit, out, err))
    })
    .await;
    // Whatever happened, the command's group does not outlive the request.
    process::signal(pid, Signal::SIGKILL, true);
    let (exit, out, err) = result.map_err(|_| format!("`{}` timed out", argv.program()))??;
    if !exit.success() {
        return Err(format!("`{}` failed ({exit}): {}", argv.program(), String::from_utf8_lossy(&err).trim()));
    }
    if out.len() > limit {
        return Err(format!("`{}` wrote more than {limit} bytes", argv.program()));
    }
    Ok(out)
}
