//! Serving requests with a handler ([`ServeHandle`]): a task takes
//! requests from a [`Requests`] stream and runs the handler on each, up
//! to a concurrency limit, with an optional timeout.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use tokio::sync::Semaphore;

use super::request::IncomingRequest;
use super::shared::Shared;
use super::streams::Requests;
use super::types::Headers;

/// Options of [`Client::serve_with`](crate::Client::serve_with).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServeOptions {
    /// Most requests handled at once (default 1,024); further ones wait in
    /// the stream, then push back on the connection.
    pub concurrency: usize,
    /// Longest a handler may run (default: none). Past it the handler is
    /// dropped and the requester gets an error reply.
    pub timeout: Option<Duration>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            concurrency: 1024,
            timeout: None,
        }
    }
}

impl ServeOptions {
    /// Sets the concurrency (at least 1).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Sets the handler timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

/// A running request handler from [`Client::serve`](crate::Client::serve);
/// serving stops when it is dropped or [`stop`](ServeHandle::stop)ped.
#[must_use = "serving stops when the handle is dropped"]
#[derive(Debug)]
pub struct ServeHandle {
    task: Option<tokio::task::JoinHandle<()>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl ServeHandle {
    pub(crate) fn start<F, Fut, E>(
        shared: Arc<Shared>,
        mut requests: Requests,
        options: ServeOptions,
        handler: F,
    ) -> ServeHandle
    where
        F: Fn(IncomingRequest) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<(Bytes, Headers), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let handler = Arc::new(handler);
        let limit = Arc::new(Semaphore::new(options.concurrency.max(1)));
        let timeout = options.timeout;
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut running = tokio::task::JoinSet::new();
            loop {
                let req = tokio::select! {
                    req = requests.recv() => match req {
                        Some(req) => req,
                        None => break,
                    },
                    _ = &mut stop_rx => break,
                    Some(_) = running.join_next(), if !running.is_empty() => continue,
                };
                let permit = tokio::select! {
                    permit = limit.clone().acquire_owned() => match permit {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                    _ = &mut stop_rx => {
                        drop(req);
                        break;
                    }
                };
                let handler = handler.clone();
                running.spawn(async move {
                    let _permit = permit;
                    let mut req = req;
                    let replier = req.take_answer();
                    let run = std::panic::AssertUnwindSafe(handler(req)).catch_unwind();
                    let result = match timeout {
                        Some(t) => tokio::time::timeout(t, run).await.ok(),
                        None => Some(run.await),
                    };
                    let reply = match result {
                        Some(Ok(Ok(reply))) => Ok(reply),
                        Some(Ok(Err(e))) => Err(e.to_string()),
                        Some(Err(_)) => Err("the request handler panicked".to_string()),
                        None => Err(format!(
                            "the request handler did not finish within {} ms",
                            timeout.unwrap_or_default().as_millis()
                        )),
                    };
                    replier.reply(reply).await;
                });
            }
            // Stop taking requests and wait (boundedly) until the hub
            // knows, so requests after `stop` are refused by the hub; then
            // let the running handlers finish and reply.
            let direct = requests.is_direct();
            drop(requests);
            if direct {
                let _ = tokio::time::timeout(Duration::from_secs(5), shared.sync_listen()).await;
            }
            while running.join_next().await.is_some() {}
        });
        ServeHandle {
            task: Some(task),
            stop: Some(stop_tx),
        }
    }

    /// Stops serving: requests arriving afterwards are refused
    /// ([`ClientError::NotListening`] for their senders), requests queued
    /// but not started get an error reply, and the call returns once every
    /// running handler has finished and its reply is queued. Dropping the
    /// call part-way leaves the handlers running to completion.
    ///
    /// [`ClientError::NotListening`]: crate::ClientError::NotListening
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for ServeHandle {
    fn drop(&mut self) {
        // Stops taking requests; running handlers finish in the background.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
