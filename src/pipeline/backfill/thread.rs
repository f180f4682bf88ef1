//! The backfill engine's own thread (see [`Engine::spawn`]).

use super::Engine;
use crate::pipeline::ack::Tracker;

impl Engine {
    /// Runs the engine on a thread of its own (with a one-thread runtime
    /// of its own), beside the stream's: a chunk's read from the source
    /// (its COPY output taken in and split into lines) goes on while the
    /// stream's thread compares the chunk before with the target, rather
    /// than taking turns with it. They meet only once per chunk (the
    /// window, the tracker). The engine stops when the returned handle
    /// is stopped or dropped.
    pub fn spawn(self, tracker: Tracker) -> Result<EngineThread, String> {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("pgbridge-backfill".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "backfill: cannot start the runtime of its thread; backfills and tables added to the publication wait for a restart");
                        return;
                    }
                };
                rt.block_on(async move {
                    tokio::select! {
                        never = self.run(tracker) => match never {},
                        _ = stopped => {}
                    }
                });
            })
            .map_err(|e| format!("cannot start the backfill thread: {e}"))?;
        Ok(EngineThread {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

/// The engine's thread (see [`Engine::spawn`]).
pub struct EngineThread {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EngineThread {
    /// Stops the engine and waits for its thread to end (its connections
    /// closed).
    pub async fn stop(mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}
