//! The one tokio runtime the RocketMQ client runs on in this process.
//!
//! The client keeps pooled connections and background tasks (route refreshes, heartbeats,
//! pull tasks, offset persistence). Created on a caller's runtime, they would die with it (a
//! test's runtime, say) while the client still holds them. So the driver owns a runtime for
//! the life of the process and runs every client call there.

use std::future::Future;
use std::sync::{Arc, OnceLock};

use rocketmq_client_rust::{ClientRuntime, ClientRuntimeConfig, TelemetryHandle};
use rocketmq_runtime::RuntimeOwner;

use crate::oms::{OmsError, OmsErrorKind, OmsStatus, Result};

/// The driver's runtime: where client calls run, and the client's own runtime context.
pub(crate) struct DriverRuntime {
    handle: tokio::runtime::Handle,
    client: Arc<ClientRuntime>,
}

static RUNTIME: OnceLock<std::result::Result<DriverRuntime, String>> = OnceLock::new();

/// The process's driver runtime, started on first use.
pub(crate) fn driver_runtime() -> Result<&'static DriverRuntime> {
    RUNTIME.get_or_init(start).as_ref().map_err(|e| {
        OmsError::new(
            OmsErrorKind::DriverLoad,
            OmsStatus::DRIVER_CONSTRUCTION_FAILED,
            format!("cannot start the RocketMQ client runtime: {e}"),
        )
    })
}

fn start() -> std::result::Result<DriverRuntime, String> {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("rocketmq-runtime".into())
        .spawn(move || {
            let owner = match RuntimeOwner::new() {
                Ok(owner) => owner,
                Err(e) => {
                    let _ = sender.send(Err(format!("{e}")));
                    return;
                }
            };
            let handle = owner.block_on(async { tokio::runtime::Handle::current() });
            let client = ClientRuntime::try_new(
                owner.root_context().component("omstream-rocketmq"),
                ClientRuntimeConfig::default(),
                TelemetryHandle::noop(),
            );
            match client {
                Ok(client) => {
                    let _ = sender.send(Ok(DriverRuntime { handle, client }));
                }
                Err(e) => {
                    let _ = sender.send(Err(format!("{e}")));
                    return;
                }
            }
            // The owner must live as long as the process: its runtime runs the client.
            loop {
                std::thread::park();
            }
        })
        .map_err(|e| format!("cannot start its thread: {e}"))?;
    receiver
        .recv()
        .map_err(|_| "its thread ended before it started".to_string())?
}

impl DriverRuntime {
    /// The client's runtime context, for the builders.
    pub(crate) fn client(&self) -> Arc<ClientRuntime> {
        self.client.clone()
    }

    /// Runs `future` on the driver's runtime and waits for it from any runtime.
    pub(crate) async fn run<F, T>(&self, future: F) -> Result<T>
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        self.handle.spawn(future).await.map_err(|e| {
            OmsError::new(
                OmsErrorKind::Runtime,
                OmsStatus::SERVER_ERROR,
                format!("a RocketMQ client call failed inside the client: {e}"),
            )
        })
    }

    /// Like [`run`](Self::run), for client futures that are not `Send` (some admin and
    /// transaction calls hold `&dyn` values across awaits): `make` builds the future on one of
    /// the runtime's blocking threads, which drives it to the end.
    pub(crate) async fn run_local<M, F, T>(&self, make: M) -> Result<T>
    where
        M: FnOnce() -> F + Send + 'static,
        F: Future<Output = T>,
        T: Send + 'static,
    {
        let handle = self.handle.clone();
        self.handle
            .spawn_blocking(move || handle.block_on(make()))
            .await
            .map_err(|e| {
                OmsError::new(
                    OmsErrorKind::Runtime,
                    OmsStatus::SERVER_ERROR,
                    format!("a RocketMQ client call failed inside the client: {e}"),
                )
            })
    }
}
