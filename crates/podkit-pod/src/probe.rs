//! Probes and lifecycle hooks, as the kubelet runs them: on the pod's localhost, with the
//! container's environment for commands, a 2xx or 3xx answer for HTTP, a connection for TCP.

use std::time::Duration;

use podkit_core::Argv;
use podkit_process::hook::{Hook, Input, Runner};

use crate::spec::{Action, Handler};

/// Runs one check of `action`; true on success.
pub(crate) async fn check(
    action: &Action,
    timeout: Duration,
    env: &[(String, String)],
    runner: &Runner,
    http: &reqwest::Client,
) -> Result<(), String> {
    match action {
        Action::Exec(argv) => {
            let argv = Argv::new(argv.clone()).map_err(|e| e.to_string())?;
            let outcome =
                runner.run_with(&Hook::Exec(argv), "probe", timeout, &Input { env: env.to_vec(), json: None }).await;
            if outcome.ok { Ok(()) } else { Err(format!("{}: {}", outcome.detail, outcome.output.trim())) }
        }
        Action::Http { port, path, scheme, headers } => {
            let url = format!("{scheme}://127.0.0.1:{port}{path}");
            let mut req = http.get(&url).timeout(timeout);
            for (k, v) in headers {
                req = req.header(k, v);
            }
            match req.send().await {
                Ok(r) if (200..400).contains(&r.status().as_u16()) => Ok(()),
                Ok(r) => Err(format!("GET {url}: HTTP {}", r.status().as_u16())),
                Err(e) => Err(format!("GET {url}: {}", podkit_core::error_chain(&e))),
            }
        }
        Action::Tcp { port } => {
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(("127.0.0.1", *port))).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("connect 127.0.0.1:{port}: {e}")),
                Err(_) => Err(format!("connect 127.0.0.1:{port}: no answer within {timeout:?}")),
            }
        }
    }
}

/// Runs a lifecycle hook (postStart, preStop) within `limit`.
pub(crate) async fn run_handler(
    h: &Handler,
    limit: Duration,
    env: &[(String, String)],
    runner: &Runner,
    http: &reqwest::Client,
) -> Result<(), String> {
    match h {
        Handler::Sleep(d) => {
            tokio::time::sleep((*d).min(limit)).await;
            Ok(())
        }
        Handler::Action(a) => check(a, limit, env, runner, http).await,
    }
}
