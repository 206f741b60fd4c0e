//! The stdout sink: one JSON object per line on podkit's standard output, for a container
//! runtime (or `kubectl logs`) to pick up.

use std::io::Write;

use super::{Delivered, SendError, Sink};
use crate::record::Record;

#[derive(Debug, Default)]
pub(crate) struct StdoutSink;

impl Sink for StdoutSink {
    async fn send(&mut self, records: Vec<Record>) -> Result<Delivered, SendError> {
        tokio::task::spawn_blocking(move || {
            let mut buf = Vec::with_capacity(records.len() * 256);
            for r in &records {
                serde_json::to_writer(&mut buf, &r.to_json()).expect("a JSON value serializes");
                buf.push(b'\n');
            }
            let mut out = std::io::stdout().lock();
            out.write_all(&buf).and_then(|()| out.flush()).map_err(|e| SendError::Retry(format!("stdout: {e}")))?;
            Ok(Delivered { records: records.len() as u64, bytes: buf.len() as u64, duplicates: 0 })
        })
        .await
        .map_err(|e| SendError::Retry(format!("stdout: {e}")))?
    }
}
