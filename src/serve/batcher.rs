//! Dynamic batching for one endpoint: a bounded queue of jobs (the windows of one request) in
//! front of one inference thread that owns the endpoint's [`QaPipeline`] (its `Backend` is
//! `Send`, not `Sync`). The thread takes the first waiting job, gathers more until it holds
//! `max_batch_size` windows or `batch_timeout` has passed, runs them through
//! [`QaPipeline::run_batch`] longest first in chunks of `max_batch_size` (the order
//! [`QaPipeline::answer`] uses), and hands each job its logits back.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::sync::oneshot;

use super::config::EndpointConfig;
use super::metrics::{lock, Histogram, BATCH_BOUNDS};
use crate::qa::features::Windower;
use crate::qa::pipeline::StartEnd;
use crate::qa::{ModelFile, QaPipeline, QaTokenizer, Window};

/// A request's windows, handed back with their logits once they ran.
pub struct Ran {
    pub windows: Vec<Window>,
    pub logits: Vec<StartEnd>,
}

struct Job {
    windows: Vec<Window>,
    reply: oneshot::Sender<Result<Ran, String>>,
}

/// What the inference thread reports once its model is loaded.
pub struct Loaded {
    pub windower: Arc<Windower>,
    /// Zeros over all weights of the prunable linear layers, when the model could be read.
    pub sparsity: Option<f64>,
}

/// Why a job was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Rejected {
    /// The queue holds its capacity already.
    Full,
    /// The inference thread is gone (its model failed to load, or it panicked).
    Stopped,
}

/// The sending side of one endpoint's queue.
pub struct Batcher {
    /// `None` once [`Batcher::close`] ran.
    tx: Mutex<Option<SyncSender<Job>>>,
    depth: Arc<AtomicUsize>,
    batches: Arc<Mutex<Histogram>>,
}

/// Settings of the inference thread.
struct Worker {
    rx: Receiver<Job>,
    depth: Arc<AtomicUsize>,
    batches: Arc<Mutex<Histogram>>,
    max_batch_size: usize,
    batch_timeout: Duration,
}

impl Batcher {
    /// Starts the inference thread of `cfg` with a queue of `capacity` jobs. The thread waits
    /// `load_delay`, loads the model and sends the outcome on the returned channel; it ends when
    /// every [`Batcher`] is dropped and the queue is drained.
    pub fn spawn(
        cfg: &EndpointConfig,
        capacity: usize,
        load_delay: Duration,
    ) -> Result<(Batcher, JoinHandle<()>, mpsc::Receiver<Result<Loaded>>)> {
        let (tx, rx) = mpsc::sync_channel(capacity);
        let (loaded_tx, loaded_rx) = mpsc::channel();
        let depth = Arc::new(AtomicUsize::new(0));
        let batches = Arc::new(Mutex::new(Histogram::new(BATCH_BOUNDS)));
        let worker = Worker {
            rx,
            depth: depth.clone(),
            batches: batches.clone(),
            max_batch_size: cfg.max_batch_size,
            batch_timeout: cfg.batch_timeout,
        };
        let cfg = cfg.clone();
        let handle = std::thread::Builder::new()
            .name(format!("infer-{}", cfg.name))
            .spawn(move || {
                std::thread::sleep(load_delay);
                match load(&cfg) {
                    Ok((pipeline, loaded)) => {
                        let _ = loaded_tx.send(Ok(loaded));
                        worker.serve(pipeline);
                    }
                    Err(e) => {
                        let _ = loaded_tx.send(Err(e));
                    }
                }
            })
            .context("cannot start the inference thread")?;
        Ok((Batcher { tx: Mutex::new(Some(tx)), depth, batches }, handle, loaded_rx))
    }

    /// Queues `windows` without waiting; the receiver yields their logits or the model's error.
    pub fn submit(&self, windows: Vec<Window>) -> Result<oneshot::Receiver<Result<Ran, String>>, Rejected> {
        let (reply, rx) = oneshot::channel();
        let tx = lock(&self.tx);
        let Some(tx) = tx.as_ref() else { return Err(Rejected::Stopped) };
        self.depth.fetch_add(1, Ordering::SeqCst);
        match tx.try_send(Job { windows, reply }) {
            Ok(()) => Ok(rx),
            Err(e) => {
                self.depth.fetch_sub(1, Ordering::SeqCst);
                Err(match e {
                    TrySendError::Full(_) => Rejected::Full,
                    TrySendError::Disconnected(_) => Rejected::Stopped,
                })
            }
        }
    }

    /// Takes no more jobs; the inference thread ends once it has run the queued ones.
    pub fn close(&self) {
        lock(&self.tx).take();
    }

    /// Jobs waiting for the inference thread.
    pub fn queue_depth(&self) -> usize {
        self.depth.load(Ordering::SeqCst)
    }

    pub fn batch_sizes(&self) -> Histogram {
        lock(&self.batches).clone()
    }
}

fn load(cfg: &EndpointConfig) -> Result<(QaPipeline, Loaded)> {
    let tokenizer = QaTokenizer::for_model(&cfg.model)?;
    let mut file = ModelFile::open(&cfg.model)?;
    file.lower(cfg.engine, cfg.kernels)?;
    let pipeline = QaPipeline::from_model(&file, tokenizer, cfg.engine, &cfg.engine_options)?;
    let windower = Arc::new(pipeline.windower(cfg.window)?);
    Ok((pipeline, Loaded { windower, sparsity: file.linear_sparsity }))
}

impl Worker {
    fn serve(self, mut pipeline: QaPipeline) {
        while let Ok(first) = self.rx.recv() {
            self.depth.fetch_sub(1, Ordering::SeqCst);
            let jobs = self.gather(first);
            self.run(&mut pipeline, jobs);
        }
    }

    /// `first` and the jobs that arrive before the batch is full or its time is up.
    fn gather(&self, first: Job) -> Vec<Job> {
        let deadline = Instant::now() + self.batch_timeout;
        let mut windows = first.windows.len();
        let mut jobs = vec![first];
        while windows < self.max_batch_size {
            let job = match self.rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(j) => j,
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            };
            self.depth.fetch_sub(1, Ordering::SeqCst);
            windows += job.windows.len();
            jobs.push(job);
        }
        jobs
    }

    fn run(&self, pipeline: &mut QaPipeline, jobs: Vec<Job>) {
        let mut order: Vec<(usize, usize)> =
            jobs.iter().enumerate().flat_map(|(j, job)| (0..job.windows.len()).map(move |i| (j, i))).collect();
        order.sort_by_key(|&(j, i)| std::cmp::Reverse(jobs[j].windows[i].len()));
        let mut logits: Vec<Vec<Option<StartEnd>>> = jobs.iter().map(|j| vec![None; j.windows.len()]).collect();
        let mut failed: Vec<Option<String>> = vec![None; jobs.len()];
        for chunk in order.chunks(self.max_batch_size) {
            let batch: Vec<&Window> = chunk.iter().map(|&(j, i)| &jobs[j].windows[i]).collect();
            lock(&self.batches).observe(batch.len() as f64);
            let out = match catch_unwind(AssertUnwindSafe(|| pipeline.run_batch(&batch))) {
                Ok(Ok(out)) => Ok(out),
                Ok(Err(e)) => Err(format!("the model run failed: {e:#}")),
                Err(_) => Err("the model run panicked".to_string()),
            };
            match out {
                Ok(out) => {
                    for (&(j, i), l) in chunk.iter().zip(out) {
                        logits[j][i] = Some(l);
                    }
                }
                Err(e) => {
                    for &(j, _) in chunk {
                        failed[j] = Some(e.clone());
                    }
                }
            }
        }
        for ((job, ls), err) in jobs.into_iter().zip(logits).zip(failed) {
            let result = match err {
                Some(e) => Err(e),
                None => Ok(Ran {
                    windows: job.windows,
                    logits: ls.into_iter().map(|l| l.expect("every window of a job ran")).collect(),
                }),
            };
            let _ = job.reply.send(result);
        }
    }
}
