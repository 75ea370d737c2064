//! A task that runs until told to stop: what a listener and a connect are while they run.

use std::future::Future;

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A background task and the way to stop it. Dropping it also stops the task: the receiver
/// the task watches sees its sender go.
pub(crate) struct Running {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Running {
    /// Spawns `run`, which should return soon after the receiver it gets changes.
    pub(crate) fn spawn<F>(run: impl FnOnce(watch::Receiver<bool>) -> F) -> Running
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(stopped));
        Running { stop, task }
    }

    /// Tells the task to stop and waits until it has.
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}
