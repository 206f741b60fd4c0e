//! The stdout sink: one JSON object per line on podkit's standard output, for a container
//! runtime (or `kubectl logs`) to pick up.

use std::io::Write;
use std::sync::Arc;

use super::{Delivered, SendError, Sink};
use crate::record::{self, Record};

#[derive(Debug, Default)]
pub(crate) struct StdoutSink;

impl Sink for StdoutSink {
    async fn send(&mut self, records: Arc<[Record]>) -> Result<Delivered, SendError> {
        tokio::task::spawn_blocking(move || {
            let mut buf = Vec::with_capacity(records.len() * 256);
            for r in records.iter() {
                record::write_ndjson(&mut buf, r);
            }
            let mut out = std::io::stdout().lock();
            out.write_all(&buf).and_then(|()| out.flush()).map_err(|e| SendError::Retry(format!("stdout: {e}")))?;
            Ok(Delivered { records: records.len() as u64, bytes: buf.len() as u64, ..Delivered::default() })
        })
        .await
        .map_err(|e| SendError::Retry(format!("stdout: {e}")))?
    }
}
