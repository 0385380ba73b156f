//! `sparsec serve`: the QA pipeline behind HTTP, a second front end beside [`cli`](crate::cli).
//!
//! [`config`] holds the limits and endpoints (from flags or a DeepSparse-shaped `server.yaml`) →
//! [`run`] binds, starts one [`batcher`] inference thread per endpoint (which loads its model
//! while the server already answers `/health` with 503) → [`listen`] accepts connections under
//! a header deadline and a connection cap → [`handlers`] turn bodies (DeepSparse's shapes or the
//! Open Inference Protocol's tensors, [`v2`]) into windows, queue them for dynamic batching and
//! decode the logits → [`metrics`] renders Prometheus text. SIGINT/SIGTERM stop accepting
//! connections, let every admitted request finish, drain the queues and return.

pub mod batcher;
pub mod config;
pub mod handlers;
pub mod listen;
pub mod metrics;
pub mod v2;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, Context, Result};

pub use config::{EndpointConfig, Limits, ServeConfig};
use handlers::{App, Endpoint};
pub use metrics::Totals;

/// What the server reports while it runs, for the front end to print.
#[derive(Debug)]
pub enum Event {
    Listening(SocketAddr),
    Ready {
        endpoint: String,
        model: PathBuf,
        sparsity: Option<f64>,
    },
    /// A signal arrived; `in_flight` requests are still being answered.
    Stopping {
        in_flight: u64,
    },
    Stopped(Totals),
}

/// Runs the server until SIGINT/SIGTERM (then returns `Ok` once every admitted request is
/// answered) or until a model fails to load (then returns that error).
pub fn run(config: ServeConfig, on_event: impl Fn(Event) + Send + Sync + 'static) -> Result<()> {
    config.validate()?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the runtime")?;
    rt.block_on(serve(config, Arc::new(on_event)))
}

async fn serve(config: ServeConfig, on_event: Arc<dyn Fn(Event) + Send + Sync>) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("cannot listen on {}", config.addr))?;
    let addr = listener.local_addr()?;
    let mut endpoints = Vec::new();
    let mut threads = Vec::new();
    let mut loads = Vec::new();
    for e in &config.endpoints {
        let (batcher, thread, loaded) = batcher::Batcher::spawn(e, config.limits.max_pending, config.load_delay)?;
        endpoints.push(Endpoint::new(e.clone(), batcher, config.limits.max_pending));
        threads.push(thread);
        loads.push(loaded);
    }
    let app = Arc::new(App {
        endpoints,
        limits: config.limits.clone(),
        http: Default::default(),
        connections: Default::default(),
    });
    on_event(Event::Listening(addr));

    let failure: Arc<Mutex<Option<anyhow::Error>>> = Arc::default();
    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<()>();
    let loader = {
        let (app, on_event, failure) = (app.clone(), on_event.clone(), failure.clone());
        tokio::task::spawn_blocking(move || {
            for (e, rx) in app.endpoints.iter().zip(loads) {
                let outcome = rx.recv().unwrap_or_else(|_| Err(anyhow!("the inference thread ended")));
                match outcome {
                    Ok(l) => {
                        let sparsity = l.sparsity;
                        let _ = e.loaded.set(l);
                        on_event(Event::Ready { endpoint: e.cfg.name.clone(), model: e.cfg.model.clone(), sparsity });
                    }
                    Err(err) => {
                        *metrics::lock(&failure) = Some(err.context(format!(
                            "endpoint '{}': cannot load '{}'",
                            e.cfg.name,
                            e.cfg.model.display()
                        )));
                        let _ = failed_tx.send(());
                        return;
                    }
                }
            }
        })
    };

    let stopping = {
        let (app, on_event) = (app.clone(), on_event.clone());
        async move {
            tokio::select! {
                _ = shutdown_signal() => on_event(Event::Stopping { in_flight: handlers::in_flight(&app) }),
                Ok(()) = failed_rx => {}
            }
        }
    };
    let (full, limited) = (handlers::router(app.clone()), handlers::limited_router(app.clone()));
    listen::serve(listener, full, limited, &app.limits, app.connections.clone(), stopping).await;
    loader.await.context("the model loader panicked")?;
    let totals = app.http.totals();
    for e in &app.endpoints {
        e.batcher.close();
    }
    for t in threads {
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
    if let Some(e) = metrics::lock(&failure).take() {
        return Err(e);
    }
    on_event(Event::Stopped(totals));
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
