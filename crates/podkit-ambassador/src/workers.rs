//! The worker threads that serve clients and talk to servers (see [`Workers`]).

thread_local! {
    /// The index of the worker thread this is (0 elsewhere).
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The index of the worker thread this is (0 elsewhere): a server connection is picked by it,
/// so a request never changes threads.
pub(crate) fn current() -> usize {
    WORKER.get()
}

/// The threads that serve clients: each runs its own single-threaded runtime, and a client
/// connection with the server connections it uses lives on one of them. Nothing on the request
/// path crosses threads (no cross-thread wake-ups), and each thread batches the requests of its
/// clients into one write per server per turn, as an event loop does.
#[derive(Debug)]
pub(crate) struct Workers {
    pub(crate) handles: Vec<tokio::runtime::Handle>,
}

impl Workers {
    /// Starts `n` worker threads. They run until the process exits.
    pub(crate) fn start(n: usize) -> std::io::Result<Workers> {
        let mut handles = Vec::with_capacity(n);
        for i in 0..n {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::Builder::new().name(format!("ambassador-{i}")).spawn(move || {
                WORKER.set(i);
                match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => {
                        let _ = tx.send(Ok(rt.handle().clone()));
                        rt.block_on(std::future::pending::<()>());
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            })?;
            handles.push(rx.recv().map_err(std::io::Error::other)??);
        }
        Ok(Workers { handles })
    }

    /// The calling runtime as the one worker, for tests: the server connection tasks then run
    /// on the test's runtime and clock (paused time included), and no thread is left behind.
    #[cfg(test)]
    pub(crate) fn on_current_runtime() -> Workers {
        Workers { handles: vec![tokio::runtime::Handle::current()] }
    }
}
