//! Model workers: each loaded model lives on its own OS thread, which owns it
//! and takes jobs from a bounded queue.
//!
//! MLX models are `Send` but not `Sync` and generate with `&mut self`, so a
//! model never leaves its thread; HTTP handlers (async) talk to it through
//! channels. A job carries its own event sender: the worker streams
//! [`StreamEvent`]s back and, when a send fails because the client went away
//! (the handler's receiver was dropped), drops the generator at once — a
//! disconnected client stops its generation within one token.
//!
//! A text model has one thread running engine-llm's continuous-batching
//! [`Scheduler`](engine_llm::Scheduler) ([`run_batched`]): queued jobs join
//! the running batch between decode steps, up to `parallel` at once, and a
//! closed event channel cancels its row. Vision and embedding models run one
//! job at a time per copy ([`run_jobs`]), `parallel` copies.

use crate::metrics::Metrics;
use crate::resolve::ModelKind;
use engine_core::{
    EngineError, GenerateParams, ImageF32, ImageGenerator, ImageRequest, Prompt, StreamEvent, TextGenerator,
};
use engine_diffusion::ImagePipeline;
use engine_embed::{EmbedOptions, EmbedOutput, Embedder};
use engine_llm::{LlmModel, LoadOptions, Split};
use engine_vlm::VlmModel;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{mpsc as tmpsc, oneshot};

/// Events of one generation, as the worker sends them.
pub type GenEvent = Result<StreamEvent, EngineError>;

/// A text generation to run.
pub struct GenerateJob {
    /// What to answer.
    pub prompt: Prompt,
    /// How.
    pub params: GenerateParams,
    /// Where the events go; when the receiver is dropped the job is cancelled.
    /// Unbounded, so a slow client never stalls the others in its batch (a
    /// generation's events are bounded by its `max_tokens`).
    pub events: tmpsc::UnboundedSender<GenEvent>,
    /// When it was queued (time to first token counts from here).
    pub queued_at: Instant,
}

/// Texts to embed.
pub struct EmbedJob {
    /// The inputs.
    pub texts: Vec<String>,
    /// Where the vectors go.
    pub reply: oneshot::Sender<Result<EmbedOutput, engine_embed::EmbedError>>,
}

/// Images to generate.
pub struct ImageJob {
    /// What to draw.
    pub request: ImageRequest,
    /// Where the images go.
    pub reply: oneshot::Sender<Result<Vec<ImageF32>, EngineError>>,
}

/// One unit of work for a model worker.
pub enum Job {
    /// Generate text (text and vision models).
    Generate(GenerateJob),
    /// Embed texts (embedding models).
    Embed(EmbedJob),
    /// Generate images (diffusion pipelines).
    Image(ImageJob),
}

/// A model as its worker thread holds it.
enum LoadedModel {
    Text(Box<LlmModel>),
    Vision(Box<VlmModel>),
    Embedding(Box<Embedder>),
    Image(Box<ImagePipeline>),
}

/// What a loaded model is, for listings (`/v1/models`, `/api/show`, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelDetails {
    /// Architecture (`llama`, `bert`, ...).
    pub architecture: String,
    /// Context (or, for an encoder, maximum input) length in tokens.
    pub context_length: usize,
    /// `Q4` style quantization label, when quantized.
    pub quantization: Option<String>,
    /// Embedding width (embedding models).
    pub dimensions: Option<usize>,
    /// The model's own sampling defaults (generation_config.json).
    pub defaults: GenerateParams,
}

impl LoadedModel {
    fn load(path: &Path, kind: ModelKind, split: Option<&Split>) -> Result<LoadedModel, String> {
        let options = LoadOptions {
            split: split.cloned(),
            ..Default::default()
        };
        if split.is_some() && kind != ModelKind::Text {
            return Err("only text models can be split across ranks".into());
        }
        Ok(match kind {
            ModelKind::Text => LoadedModel::Text(Box::new(
                LlmModel::load(path, &options, &mut |_| {}).map_err(|e| e.to_string())?,
            )),
            ModelKind::Vision => LoadedModel::Vision(Box::new(
                VlmModel::load(path, &options, &mut |_| {}).map_err(|e| e.to_string())?,
            )),
            ModelKind::Embedding => LoadedModel::Embedding(Box::new(Embedder::load(path).map_err(|e| e.to_string())?)),
            ModelKind::Image => LoadedModel::Image(Box::new(ImagePipeline::load(path).map_err(|e| e.to_string())?)),
        })
    }

    fn details(&self) -> ModelDetails {
        let of_generator = |g: &dyn TextGenerator| {
            let c = g.configuration();
            ModelDetails {
                architecture: c.architecture.clone(),
                context_length: c.context_length,
                quantization: c.quantization.map(|q| format!("Q{}", q.bits)),
                dimensions: None,
                defaults: c.default_params.clone(),
            }
        };
        match self {
            LoadedModel::Text(m) => of_generator(m.as_ref()),
            LoadedModel::Vision(m) => of_generator(m.as_ref()),
            LoadedModel::Image(_) => ModelDetails {
                architecture: "stable-diffusion".into(),
                context_length: 77,
                quantization: None,
                dimensions: None,
                defaults: GenerateParams::default(),
            },
            LoadedModel::Embedding(e) => ModelDetails {
                architecture: format!("{:?}", e.architecture()).to_lowercase(),
                context_length: e.max_length(),
                quantization: None,
                dimensions: Some(e.dimensions()),
                defaults: GenerateParams::default(),
            },
        }
    }
}

/// The handle of a loaded model: its queue and counters. Dropping the last
/// handle closes the queue; the worker threads finish the jobs already queued,
/// then drop the model and end.
pub struct ModelWorker {
    /// The id the model is served under.
    pub id: String,
    /// Text, vision or embedding.
    pub kind: ModelKind,
    /// Where it was loaded from.
    pub path: PathBuf,
    /// What was loaded.
    pub details: ModelDetails,
    /// Jobs queued or running on this model.
    active: Arc<AtomicU64>,
    /// The most jobs that may wait.
    queue_depth: usize,
    /// `None` once dropping closed it.
    jobs: Option<SyncSender<Job>>,
    /// A split model's thread, joined on drop: it tells the other ranks to
    /// stop before this process may exit.
    split_thread: Option<std::thread::JoinHandle<()>>,
    metrics: Arc<Metrics>,
    /// When the last job finished or was queued.
    last_used: Arc<Mutex<Instant>>,
    /// When the model finished loading.
    pub loaded_at: std::time::SystemTime,
    /// Bytes the load took (MLX's active memory before and after, all
    /// copies; the weight files' size when that reads nothing).
    pub memory_bytes: u64,
}

impl std::fmt::Debug for ModelWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelWorker")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .finish()
    }
}

impl ModelWorker {
    /// Copies of a model of `kind` loaded to answer `parallel` requests at
    /// once: one for text and embedding models, which batch requests, one
    /// per request for the others.
    pub fn copies(kind: ModelKind, parallel: usize) -> usize {
        match kind {
            ModelKind::Text | ModelKind::Embedding => 1,
            ModelKind::Vision | ModelKind::Image => parallel.max(1),
        }
    }

    /// Loads the model at `path` to answer `parallel` requests at once: a
    /// text model once, batching up to `parallel` generations; an embedding
    /// model once, embedding the texts of all queued requests together;
    /// other kinds as `parallel` copies, each on its own thread. The threads
    /// share one queue of `queue_depth` jobs. With `split` (rank 0 of
    /// `mlxengine launch`) a text model loads its share and every scheduler
    /// call is mirrored to the other ranks ([`crate::split`]). Blocks until
    /// all are loaded (call it from a blocking task); the first load error
    /// is returned and the threads already started end.
    pub fn start(
        id: &str,
        path: &Path,
        kind: ModelKind,
        parallel: usize,
        queue_depth: usize,
        metrics: Arc<Metrics>,
        split: Option<Split>,
    ) -> Result<ModelWorker, String> {
        let parallel = parallel.max(1);
        let replicas = Self::copies(kind, parallel);
        let before = engine_mlx::memory::active();
        let (jobs, rx) = mpsc::sync_channel::<Job>(queue_depth);
        let rx = Arc::new(Mutex::new(rx));
        let active = Arc::new(AtomicU64::new(0));
        let last_used = Arc::new(Mutex::new(Instant::now()));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<ModelDetails, String>>();
        let mut split_thread = None;
        for i in 0..replicas {
            let (rx, ready, path) = (rx.clone(), ready_tx.clone(), path.to_path_buf());
            let (metrics, active, last_used) = (metrics.clone(), active.clone(), last_used.clone());
            let split = split.clone();
            let is_split = split.is_some();
            let thread = std::thread::Builder::new()
                .name(format!("model-{id}-{i}"))
                .spawn(move || {
                    let model = match LoadedModel::load(&path, kind, split.as_ref()) {
                        Ok(m) => m,
                        Err(e) => {
                            let _ = ready.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready.send(Ok(model.details()));
                    drop(ready);
                    match model {
                        LoadedModel::Text(m) => {
                            run_batched(&m, parallel, &rx, &metrics, &active, &last_used, split.as_ref())
                        }
                        LoadedModel::Embedding(e) => run_embeds(&e, &rx, &metrics, &active, &last_used),
                        other => run_jobs(other, &rx, &metrics, &active, &last_used),
                    }
                })
                .map_err(|e| format!("cannot start a worker thread: {e}"))?;
            if is_split {
                split_thread = Some(thread);
            }
        }
        drop(ready_tx);
        let mut details = None;
        for _ in 0..replicas {
            match ready_rx.recv() {
                Ok(Ok(d)) => details = Some(d),
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err("a model worker thread ended while loading".into()),
            }
        }
        let details = details.ok_or("no worker thread loaded the model")?;
        // Loads run one at a time (the pool's lock), so the difference is this model's.
        let memory_bytes = match engine_mlx::memory::active().saturating_sub(before) as u64 {
            0 => crate::models::weights_on_disk(path) * replicas as u64,
            n => n,
        };
        Metrics::add(&metrics.resident_models, 1);
        metrics.set_model_memory(id, Some(memory_bytes));
        Ok(ModelWorker {
            id: id.to_string(),
            kind,
            path: path.to_path_buf(),
            details,
            active,
            queue_depth,
            jobs: Some(jobs),
            split_thread,
            metrics,
            last_used,
            loaded_at: std::time::SystemTime::now(),
            memory_bytes,
        })
    }

    /// Queues a job; a full queue gives the job back.
    pub fn submit(&self, job: Job) -> Result<(), SubmitError> {
        self.active.fetch_add(1, Ordering::SeqCst);
        Metrics::add(&self.metrics.waiting, 1);
        self.touch();
        let sent = match &self.jobs {
            Some(jobs) => jobs.try_send(job),
            None => Err(TrySendError::Disconnected(job)),
        };
        match sent {
            Ok(()) => Ok(()),
            Err(e) => {
                self.active.fetch_sub(1, Ordering::SeqCst);
                Metrics::dec(&self.metrics.waiting);
                Err(match e {
                    TrySendError::Full(_) => SubmitError::QueueFull(self.queue_depth),
                    TrySendError::Disconnected(_) => SubmitError::Gone,
                })
            }
        }
    }

    /// Streams a generation: the receiver yields its events; dropping it
    /// cancels the generation.
    pub fn generate(
        &self,
        prompt: Prompt,
        params: GenerateParams,
    ) -> Result<tmpsc::UnboundedReceiver<GenEvent>, SubmitError> {
        let (events, rx) = tmpsc::unbounded_channel();
        self.submit(Job::Generate(GenerateJob {
            prompt,
            params,
            events,
            queued_at: Instant::now(),
        }))?;
        Ok(rx)
    }

    /// Embeds `texts`.
    pub async fn embed(
        &self,
        texts: Vec<String>,
    ) -> Result<Result<EmbedOutput, engine_embed::EmbedError>, SubmitError> {
        let (reply, rx) = oneshot::channel();
        self.submit(Job::Embed(EmbedJob { texts, reply }))?;
        rx.await.map_err(|_| SubmitError::Gone)
    }

    /// Generates the images of `request`.
    pub async fn image(&self, request: ImageRequest) -> Result<Result<Vec<ImageF32>, EngineError>, SubmitError> {
        let (reply, rx) = oneshot::channel();
        self.submit(Job::Image(ImageJob { request, reply }))?;
        rx.await.map_err(|_| SubmitError::Gone)
    }

    /// Whether no job is queued or running.
    pub fn is_idle(&self) -> bool {
        self.active.load(Ordering::SeqCst) == 0
    }

    /// How long ago the model was last used.
    pub fn idle_for(&self) -> std::time::Duration {
        self.last_used.lock().map(|t| t.elapsed()).unwrap_or_default()
    }

    fn touch(&self) {
        if let Ok(mut t) = self.last_used.lock() {
            *t = Instant::now();
        }
    }
}

impl Drop for ModelWorker {
    fn drop(&mut self) {
        Metrics::dec(&self.metrics.resident_models);
        self.metrics.set_model_memory(&self.id, None);
        tracing::info!(model = %self.id, "unloading");
        self.jobs = None;
        if let Some(t) = self.split_thread.take() {
            // Only at shutdown (a split model is never unloaded before): its
            // queued jobs finish, then the other ranks are told to stop.
            let _ = t.join();
        }
    }
}

/// Why a job was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitError {
    /// The queue holds its limit of jobs.
    QueueFull(usize),
    /// The worker threads are gone (a crash in the backend).
    Gone,
}

/// A worker thread's loop: one job at a time until the queue closes.
fn run_jobs(
    mut model: LoadedModel,
    rx: &Mutex<Receiver<Job>>,
    metrics: &Metrics,
    active: &AtomicU64,
    last_used: &Mutex<Instant>,
) {
    loop {
        // The lock is held only while waiting; the other replicas wait behind it.
        let job = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        Metrics::dec(&metrics.waiting);
        Metrics::add(&metrics.running, 1);
        match (job, &mut model) {
            (Job::Generate(job), LoadedModel::Text(m)) => run_generate(m.as_mut(), job, metrics),
            (Job::Generate(job), LoadedModel::Vision(m)) => run_generate(m.as_mut(), job, metrics),
            (Job::Image(job), LoadedModel::Image(p)) => {
                let _ = job.reply.send(ImageGenerator::generate(p.as_ref(), &job.request));
            }
            (Job::Generate(job), LoadedModel::Embedding(_) | LoadedModel::Image(_)) => {
                let _ = job.events.send(Err(EngineError::InvalidParameter(
                    "this model cannot generate text".into(),
                )));
            }
            (Job::Embed(_) | Job::Image(_), _) => {
                // Handlers check the model kind first; the dropped reply reads as a failure.
                tracing::warn!("a job reached a model of the wrong kind");
            }
        }
        Metrics::dec(&metrics.running);
        if let Ok(mut t) = last_used.lock() {
            *t = Instant::now();
        }
        active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Most texts one embedding forward run takes from queued requests (a
/// request with more runs alone).
const EMBED_BATCH_TEXTS: usize = 256;

/// An embedding model's loop: the texts of every request queued meanwhile
/// are embedded together, up to [`EMBED_BATCH_TEXTS`] (the embedder groups
/// them by length into its own forward batches), and each request gets its
/// share of the vectors.
fn run_embeds(
    model: &Embedder,
    rx: &Mutex<Receiver<Job>>,
    metrics: &Metrics,
    active: &AtomicU64,
    last_used: &Mutex<Instant>,
) {
    // A job taken from the queue that did not fit the batch before it.
    let mut held: Option<Job> = None;
    loop {
        let mut jobs: Vec<EmbedJob> = Vec::new();
        let mut texts = 0;
        {
            let Ok(rx) = rx.lock() else { return };
            loop {
                let next = match held.take() {
                    Some(j) => Ok(j),
                    None if jobs.is_empty() => rx.recv().map_err(|_| TryRecvError::Disconnected),
                    None => rx.try_recv(),
                };
                let job = match next {
                    Ok(j) => j,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) if jobs.is_empty() => return,
                    Err(TryRecvError::Disconnected) => break,
                };
                match job {
                    Job::Embed(j) if jobs.is_empty() || texts + j.texts.len() <= EMBED_BATCH_TEXTS => {
                        Metrics::dec(&metrics.waiting);
                        Metrics::add(&metrics.running, 1);
                        texts += j.texts.len();
                        jobs.push(j);
                    }
                    Job::Embed(j) => {
                        held = Some(Job::Embed(j));
                        break;
                    }
                    Job::Generate(j) => {
                        Metrics::dec(&metrics.waiting);
                        let _ = j.events.send(Err(EngineError::InvalidParameter(
                            "this model cannot generate text".into(),
                        )));
                        active.fetch_sub(1, Ordering::SeqCst);
                    }
                    Job::Image(_) => {
                        // Handlers check the model kind first; the dropped reply reads as a failure.
                        Metrics::dec(&metrics.waiting);
                        tracing::warn!("an image job reached an embedding model");
                        active.fetch_sub(1, Ordering::SeqCst);
                    }
                }
            }
        }
        if jobs.is_empty() {
            continue;
        }
        let all: Vec<&str> = jobs.iter().flat_map(|j| j.texts.iter().map(String::as_str)).collect();
        let out = model.embed_with(&all, &EmbedOptions::default());
        Metrics::add(&metrics.embed_batches, 1);
        let n = jobs.len();
        match out {
            Ok(mut out) => {
                Metrics::add(&metrics.embedded_inputs, all.len() as u64);
                // Hand each request its slice, in order.
                for job in jobs {
                    let k = job.texts.len();
                    let part = EmbedOutput {
                        vectors: out.vectors.drain(..k).collect(),
                        truncated: out.truncated.drain(..k).collect(),
                        token_counts: out.token_counts.drain(..k).collect(),
                    };
                    let _ = job.reply.send(Ok(part));
                }
            }
            Err(_) if n > 1 => {
                // One request's texts failed the batch: run each alone, so the
                // error reaches only the request that caused it.
                for job in jobs {
                    let refs: Vec<&str> = job.texts.iter().map(String::as_str).collect();
                    let out = model.embed_with(&refs, &EmbedOptions::default());
                    Metrics::add(&metrics.embed_batches, 1);
                    if out.is_ok() {
                        Metrics::add(&metrics.embedded_inputs, refs.len() as u64);
                    }
                    let _ = job.reply.send(out);
                }
            }
            Err(e) => {
                if let Some(job) = jobs.pop() {
                    let _ = job.reply.send(Err(e));
                }
            }
        }
        for _ in 0..n {
            Metrics::dec(&metrics.running);
            active.fetch_sub(1, Ordering::SeqCst);
        }
        if let Ok(mut t) = last_used.lock() {
            *t = Instant::now();
        }
    }
}

/// A job in a text model's batch.
struct Live {
    events: tmpsc::UnboundedSender<GenEvent>,
    queued_at: Instant,
    /// When its last token went out.
    last_token: Option<Instant>,
}

/// A text model's loop: jobs join engine-llm's continuous-batching scheduler
/// between decode steps, at most `batch` at once (the rest wait in the
/// queue, where they count as waiting and the queue limit applies). A split
/// model's scheduler calls are mirrored to the other ranks.
fn run_batched(
    model: &LlmModel,
    batch: usize,
    rx: &Mutex<Receiver<Job>>,
    metrics: &Metrics,
    active: &AtomicU64,
    last_used: &Mutex<Instant>,
    split: Option<&Split>,
) {
    let options = crate::split::batch_options(batch, model, split);
    let mut sched = crate::split::Mirrored::new(model.scheduler(options), split.map(|s| &*s.group));
    let mut live: HashMap<engine_llm::SeqId, Live> = HashMap::new();
    let (mut kv_bytes, mut prefix_bytes) = (0u64, 0u64);
    let finish = |n: usize| {
        for _ in 0..n {
            Metrics::dec(&metrics.running);
            active.fetch_sub(1, Ordering::SeqCst);
        }
        if n > 0 {
            if let Ok(mut t) = last_used.lock() {
                *t = Instant::now();
            }
        }
    };
    loop {
        // Admit queued jobs while there is room; wait for one when idle.
        while live.len() < batch {
            let job = {
                let Ok(rx) = rx.lock() else { return };
                if live.is_empty() && sched.is_idle() {
                    match rx.recv() {
                        Ok(j) => j,
                        Err(_) => return,
                    }
                } else {
                    match rx.try_recv() {
                        Ok(j) => j,
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => break,
                    }
                }
            };
            Metrics::dec(&metrics.waiting);
            Metrics::add(&metrics.running, 1);
            let job = match job {
                Job::Generate(job) => job,
                Job::Embed(_) | Job::Image(_) => {
                    // Handlers check the model kind first; the dropped reply reads as a failure.
                    tracing::warn!("an embedding or image job reached a text-generation model");
                    finish(1);
                    continue;
                }
            };
            if job.events.is_closed() {
                Metrics::add(&metrics.cancelled, 1);
                finish(1);
                continue;
            }
            let submitted = model
                .encode_prompt(&job.prompt)
                .and_then(|ids| sched.submit(ids, &job.params));
            match submitted {
                Ok(id) => {
                    live.insert(
                        id,
                        Live {
                            events: job.events,
                            queued_at: job.queued_at,
                            last_token: None,
                        },
                    );
                }
                Err(e) => {
                    let _ = job.events.send(Err(e));
                    finish(1);
                }
            }
        }
        // Clients that went away leave the batch before the next step.
        let gone: Vec<_> = live
            .iter()
            .filter(|(_, l)| l.events.is_closed())
            .map(|(&id, _)| id)
            .collect();
        for id in &gone {
            sched.cancel(*id);
            live.remove(id);
            Metrics::add(&metrics.cancelled, 1);
            tracing::info!("client disconnected: generation stopped");
        }
        finish(gone.len());
        if sched.is_idle() {
            continue;
        }
        match sched.step() {
            Ok(events) => {
                let mut ended = 0;
                for e in events {
                    let Some(l) = live.get_mut(&e.id) else { continue };
                    let done = matches!(e.event, StreamEvent::Done { .. });
                    if matches!(e.event, StreamEvent::Text { .. }) {
                        let now = Instant::now();
                        match l.last_token {
                            None => metrics.observe_ttft((now - l.queued_at).as_secs_f64()),
                            Some(t) => metrics.observe_itl((now - t).as_secs_f64()),
                        }
                        l.last_token = Some(now);
                    }
                    if let StreamEvent::Done { stats, .. } = &e.event {
                        Metrics::add(&metrics.prompt_tokens, stats.prompt_tokens as u64);
                        Metrics::add(&metrics.generated_tokens, stats.generated_tokens as u64);
                        let saved = stats.prompt_tokens - stats.prompt_tokens_processed;
                        Metrics::add(&metrics.prompt_tokens_cached, saved as u64);
                    }
                    let sent = l.events.send(Ok(e.event)).is_ok();
                    if done || !sent {
                        if !done {
                            sched.cancel(e.id);
                            Metrics::add(&metrics.cancelled, 1);
                        }
                        live.remove(&e.id);
                        ended += 1;
                    }
                }
                finish(ended);
            }
            Err(e) => {
                // The backend failed: every generation in the batch ends with the error.
                tracing::error!("batch step failed: {e}");
                let n = live.len();
                for (_, l) in live.drain() {
                    let _ = l.events.send(Err(EngineError::Backend(e.to_string())));
                }
                finish(n);
            }
        }
        let (kv, prefix) = (sched.cache_bytes() as u64, sched.prefix_cache_bytes() as u64);
        Metrics::shift(&metrics.kv_cache_bytes, kv_bytes, kv);
        Metrics::shift(&metrics.prefix_cache_bytes, prefix_bytes, prefix);
        (kv_bytes, prefix_bytes) = (kv, prefix);
    }
}

/// Runs one generation, streaming its events; stops as soon as the client is gone.
fn run_generate(model: &mut dyn TextGenerator, job: GenerateJob, metrics: &Metrics) {
    if job.events.is_closed() {
        // The client left while the job waited.
        Metrics::add(&metrics.cancelled, 1);
        return;
    }
    let stream = match model.stream(&job.prompt, &job.params) {
        Ok(s) => s,
        Err(e) => {
            let _ = job.events.send(Err(e));
            return;
        }
    };
    let mut last_token: Option<Instant> = None;
    for event in stream {
        let last = !matches!(event, Ok(StreamEvent::Text { .. }));
        if matches!(event, Ok(StreamEvent::Text { .. })) {
            let now = Instant::now();
            match last_token {
                None => metrics.observe_ttft((now - job.queued_at).as_secs_f64()),
                Some(t) => metrics.observe_itl((now - t).as_secs_f64()),
            }
            last_token = Some(now);
        }
        if let Ok(StreamEvent::Done { stats, .. }) = &event {
            Metrics::add(&metrics.prompt_tokens, stats.prompt_tokens as u64);
            Metrics::add(&metrics.generated_tokens, stats.generated_tokens as u64);
        }
        if job.events.send(event).is_err() {
            // The receiver is gone: dropping the generator here stops it.
            Metrics::add(&metrics.cancelled, 1);
            tracing::info!("client disconnected: generation stopped");
            return;
        }
        if last {
            return;
        }
    }
}
