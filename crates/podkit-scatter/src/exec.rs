//! The merge container as a command: the leaf answers on its stdin, the merged answer on its
//! stdout.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::process::Stdio;
use std::time::Duration;

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
    // Whatever happens to this request (answered, timed out, or dropped because the client
    // left), the command's group does not outlive it.
    let _kill = process::KillGroupOnDrop(spawned.pid);
    let (stdin, stdout, stderr) =
        (spawned.child.stdin.take(), spawned.child.stdout.take(), spawned.child.stderr.take());
    // stdin, stdout and stderr each on their own thread: a command that writes a lot to one
    // while we wait on another cannot deadlock against us.
    let writer = tokio::task::spawn_blocking(move || {
        if let Some(mut w) = stdin {
            let _ = w.write_all(&input);
        }
    });
    let out = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        if let Some(r) = stdout {
            let _ = r.take(limit as u64 + 1).read_to_end(&mut out);
        }
        out
    });
    let err = tokio::task::spawn_blocking(move || {
        let mut err = Vec::new();
        if let Some(mut r) = stderr {
            let mut chunk = [0u8; 8192];
            // Keep only the end, but read everything so the command never blocks on stderr.
            while let Ok(n) = r.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                err.extend_from_slice(&chunk[..n]);
                if err.len() > 8192 {
                    err.drain(..err.len() - 4096);
                }
            }
        }
        err
    });
    let result = tokio::time::timeout(timeout, async {
        let exit = spawned.exit.await.map_err(|_| "lost the command's exit status".to_string())?;
        let _ = writer.await;
        let out = out.await.map_err(|e| e.to_string())?;
        let err = err.await.map_err(|e| e.to_string())?;
        Ok::<_, String>((exit, out, err))
    })
    .await;
    let (exit, out, err) = result.map_err(|_| format!("`{}` timed out", argv.program()))??;
    if !exit.success() {
        return Err(format!("`{}` failed ({exit}): {}", argv.program(), String::from_utf8_lossy(&err).trim()));
    }
    if out.len() > limit {
        return Err(format!("`{}` wrote more than {limit} bytes", argv.program()));
    }
    Ok(out)
}
