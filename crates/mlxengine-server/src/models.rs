//! The served models: preloaded ones, those loaded on demand, and unloading
//! after the keep-alive.

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::resolve::{kind_of, served_id, ModelKind, Resolver};
use crate::worker::ModelWorker;
use engine_core::ModelType;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a request needs of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// Chats and completions.
    Generate,
    /// Embeddings.
    Embed,
    /// Images.
    Draw,
}

/// How long loading a model waits for a busy one to become idle so it can
/// be unloaded (`--max-loaded`, `--memory-budget`) before answering 503.
const ROOM_WAIT: Duration = Duration::from_secs(10);

/// Why `make_room` could not make room.
enum Room {
    /// Only busy on-demand models could go: worth waiting for.
    Busy(ApiError),
    /// Waiting would not help (preloaded models, too large, an internal error).
    Never(ApiError),
}

/// One served model: loaded or not.
pub struct Slot {
    /// The id it is served under.
    pub id: String,
    /// The name it was asked for by (command line or request).
    pub name: String,
    /// Its files.
    pub path: PathBuf,
    /// What it serves.
    pub kind: ModelKind,
    /// Given with `--model`: loaded at start and never unloaded.
    pub preloaded: bool,
    /// The keep-alive the last request asked for (Ollama's `keep_alive`):
    /// `None` until one does, then `Some(None)` for "never unload".
    keep_alive: Mutex<Option<Option<Duration>>>,
    worker: Mutex<Option<Arc<ModelWorker>>>,
    /// Held while loading, so concurrent requests wait for one load.
    load: tokio::sync::Mutex<()>,
}

impl Slot {
    /// The loaded worker, if any.
    pub fn loaded(&self) -> Option<Arc<ModelWorker>> {
        self.worker.lock().ok().and_then(|w| w.clone())
    }

    /// How long it stays loaded after its last request (`None`: forever):
    /// what the last request asked for, else `default`; preloaded models
    /// stay.
    pub fn keep_alive(&self, default: Option<Duration>) -> Option<Duration> {
        if self.preloaded {
            return None;
        }
        self.keep_alive.lock().ok().and_then(|k| *k).unwrap_or(default)
    }

    /// Sets the keep-alive a request asked for (`None`: never unload).
    pub fn set_keep_alive(&self, keep_alive: Option<Duration>) {
        if let Ok(mut k) = self.keep_alive.lock() {
            *k = Some(keep_alive);
        }
    }

    /// When it will be unloaded if no request comes (`None`: never).
    pub fn expires_at(&self, default: Option<Duration>) -> Option<std::time::SystemTime> {
        let keep = self.keep_alive(default)?;
        let worker = self.loaded()?;
        // A busy model's clock starts when its last job ends.
        let idle = if worker.is_idle() {
            worker.idle_for()
        } else {
            Duration::ZERO
        };
        Some(std::time::SystemTime::now() + keep.saturating_sub(idle))
    }

    /// Whether `name` addresses this model (`:latest`, as Ollama clients add it, is ignored).
    fn answers_to(&self, name: &str) -> bool {
        let name = name.strip_suffix(":latest").unwrap_or(name);
        name == self.id || name == self.name
    }
}

/// How models are loaded and kept.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// Requests each model answers at once (see [`crate::ServerConfig::parallel`]).
    pub parallel: usize,
    /// Jobs that may wait per model.
    pub queue_depth: usize,
    /// Idle time after which an on-demand model is unloaded (`None`: never).
    pub keep_alive: Option<Duration>,
    /// Most models loaded at once (`None`: no limit): loading another first
    /// unloads the least recently used idle on-demand model.
    pub max_loaded: Option<usize>,
    /// Bytes the loaded models may take together (`None`: no limit); loading
    /// one that would not fit first unloads idle on-demand models, least
    /// recently used first.
    pub memory_budget: Option<u64>,
    /// The `--model` is split across the ranks of `mlxengine launch`.
    pub split: Option<engine_llm::Split>,
}

/// All served models.
pub struct ModelPool {
    slots: Mutex<Vec<Arc<Slot>>>,
    resolver: Arc<Resolver>,
    options: PoolOptions,
    metrics: Arc<Metrics>,
    /// Preloaded models still loading (for `/health`).
    loading: Mutex<Vec<String>>,
    /// One load at a time: room is made and memory measured for one model.
    load: tokio::sync::Mutex<()>,
}

impl ModelPool {
    /// An empty pool.
    pub fn new(resolver: Resolver, options: PoolOptions, metrics: Arc<Metrics>) -> ModelPool {
        ModelPool {
            slots: Mutex::new(Vec::new()),
            resolver: Arc::new(resolver),
            options,
            metrics,
            loading: Mutex::new(Vec::new()),
            load: tokio::sync::Mutex::new(()),
        }
    }

    /// The idle time after which an on-demand model is unloaded, unless a
    /// request asked for another.
    pub fn default_keep_alive(&self) -> Option<Duration> {
        self.options.keep_alive
    }

    /// The slots, in the order they were added.
    pub fn slots(&self) -> Vec<Arc<Slot>> {
        self.slots.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Preloaded models not loaded yet.
    pub fn still_loading(&self) -> Vec<String> {
        self.loading.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Resolves and registers the `--model` names (before the server accepts
    /// requests, so `/v1/models` lists them at once); loading follows in
    /// [`ModelPool::load_preloaded`].
    pub fn register_preloaded(&self, names: &[String]) -> Result<(), String> {
        for name in names {
            let path = self
                .resolver
                .resolve_preload(name)
                .map_err(|e| format!("--model {name}: {e}"))?;
            let id = served_id(name);
            if self.slots().iter().any(|s| s.id == id) {
                return Err(format!("--model {name}: another model is already served as `{id}`"));
            }
            let slot = new_slot(id.clone(), name.clone(), path, true);
            if let Ok(mut l) = self.loading.lock() {
                l.push(id);
            }
            if let Ok(mut s) = self.slots.lock() {
                s.push(slot);
            }
        }
        Ok(())
    }

    /// Loads every preloaded model, one after another.
    pub async fn load_preloaded(&self) -> Result<(), String> {
        for slot in self.slots().into_iter().filter(|s| s.preloaded) {
            self.ensure_loaded(&slot).await.map_err(|e| e.message)?;
            if let Ok(mut l) = self.loading.lock() {
                l.retain(|id| id != &slot.id);
            }
        }
        Ok(())
    }

    /// The loaded model named `name` for `purpose`, loading it first when it
    /// is served but not loaded, or when it is a local path / cached model.
    pub async fn get(&self, name: &str, purpose: Use) -> Result<Arc<ModelWorker>, ApiError> {
        let slot = match self.find(name) {
            Some(s) => s,
            None => self.add_on_demand(name, purpose).await?,
        };
        check_use(&slot, purpose)?;
        self.ensure_loaded(&slot).await
    }

    /// The served model named `name`, if any (not loading it).
    pub fn find(&self, name: &str) -> Option<Arc<Slot>> {
        self.slots().into_iter().find(|s| s.answers_to(name))
    }

    fn served_list(&self) -> String {
        let ids: Vec<String> = self.slots().iter().map(|s| s.id.clone()).collect();
        if ids.is_empty() {
            "none".into()
        } else {
            ids.join(", ")
        }
    }

    async fn add_on_demand(&self, name: &str, purpose: Use) -> Result<Arc<Slot>, ApiError> {
        if name.trim().is_empty() {
            return Err(ApiError::bad_param(
                "model",
                format!("`model` is required; served models: {}", self.served_list()),
            ));
        }
        if self.options.split.is_some() {
            // Every rank would have to load it together, and the followers
            // only mirror the one split model's scheduler: refused, rather
            // than served unsplit on rank 0 beside a split model whose share
            // of memory was planned for it alone.
            return Err(ApiError::model_not_found(format!(
                "model `{name}` is not served: under `mlxengine launch` only the split model is served ({}); \
                 models are not loaded on demand across ranks",
                self.served_list()
            )));
        }
        let wanted = match purpose {
            Use::Generate => ModelType::Llm,
            Use::Embed => ModelType::Embedding,
            Use::Draw => ModelType::Diffusion,
        };
        // The resolver reads the disk (and, with --allow-pull, the network).
        let (resolver, owned) = (self.resolver.clone(), name.to_string());
        let path = tokio::task::spawn_blocking(move || resolver.resolve_request(&owned, wanted))
            .await
            .map_err(|e| ApiError::internal(format!("looking up `{name}` crashed: {e}")))?;
        let path = path.map_err(|reason| {
            ApiError::model_not_found(format!(
                "model `{name}` is not served ({reason}); served models: {}",
                self.served_list()
            ))
        })?;
        let mut slots = self
            .slots
            .lock()
            .map_err(|_| ApiError::internal("model table poisoned"))?;
        if let Some(s) = slots.iter().find(|s| s.answers_to(name)) {
            return Ok(s.clone());
        }
        let slot = new_slot(served_id(name), name.to_string(), path, false);
        slots.push(slot.clone());
        Ok(slot)
    }

    async fn ensure_loaded(&self, slot: &Arc<Slot>) -> Result<Arc<ModelWorker>, ApiError> {
        if let Some(w) = slot.loaded() {
            return Ok(w);
        }
        let _loading = slot.load.lock().await;
        if let Some(w) = slot.loaded() {
            return Ok(w);
        }
        let _one_at_a_time = self.load.lock().await;
        let copies = ModelWorker::copies(slot.kind, self.options.parallel) as u64;
        let (weights, path) = (slot.path.clone(), slot.path.clone());
        let estimate = tokio::task::spawn_blocking(move || weights_on_disk(&weights))
            .await
            .unwrap_or(0)
            * copies
            / self.options.split.as_ref().map_or(1, |s| s.group.size() as u64);
        // A model that is busy now (a request in flight, or one whose reply
        // has just gone out) is waited for a while rather than refused.
        let deadline = std::time::Instant::now() + ROOM_WAIT;
        loop {
            match self.make_room(&slot.id, estimate) {
                Ok(()) => break,
                Err(Room::Busy(e)) if std::time::Instant::now() >= deadline => return Err(e),
                Err(Room::Busy(_)) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(Room::Never(e)) => return Err(e),
            }
        }
        tracing::info!(model = %slot.id, path = %path.display(), "loading");
        let (id, path, kind) = (slot.id.clone(), slot.path.clone(), slot.kind);
        let (parallel, depth, metrics) = (self.options.parallel, self.options.queue_depth, self.metrics.clone());
        let split = self.options.split.clone();
        let worker =
            tokio::task::spawn_blocking(move || ModelWorker::start(&id, &path, kind, parallel, depth, metrics, split))
                .await
                .map_err(|e| ApiError::internal(format!("loading `{}` crashed: {e}", slot.id)))?
                .map_err(|e| ApiError::internal(format!("cannot load model `{}`: {e}", slot.id)))?;
        let worker = Arc::new(worker);
        tracing::info!(model = %slot.id, memory = %engine_device::format_size(worker.memory_bytes), "loaded");
        if let Ok(mut w) = slot.worker.lock() {
            *w = Some(worker.clone());
        }
        Ok(worker)
    }

    /// Unloads least recently used idle on-demand models until one more,
    /// of about `needs` bytes, stays within `--max-loaded` and the memory
    /// budget. A 503 when the rest are preloaded or busy (`Room::Busy` where
    /// a busy on-demand model could make room once idle), or when the model
    /// would not fit even alone.
    fn make_room(&self, loading: &str, needs: u64) -> Result<(), Room> {
        let budget = self.options.memory_budget;
        if let Some(b) = budget.filter(|&b| needs > b) {
            return Err(Room::Never(ApiError::insufficient_memory(format!(
                "model `{loading}` needs about {} (its weights) and the server's memory budget is {}; \
                 start the server with a larger --memory-budget, or use a smaller or quantized model",
                engine_device::format_size(needs),
                engine_device::format_size(b)
            ))));
        }
        let mut slots = self
            .slots
            .lock()
            .map_err(|_| Room::Never(ApiError::internal("model table poisoned")))?;
        loop {
            let loaded: Vec<Arc<ModelWorker>> = slots.iter().filter_map(|s| s.loaded()).collect();
            let used: u64 = loaded.iter().map(|w| w.memory_bytes).sum();
            let too_many = self.options.max_loaded.filter(|&m| loaded.len() >= m);
            let too_big = budget.filter(|&b| used + needs > b);
            drop(loaded);
            if too_many.is_none() && too_big.is_none() {
                return Ok(());
            }
            // Idle and held by no request (strong count 2: its slot and this look).
            let candidates: Vec<(usize, Arc<ModelWorker>)> = slots
                .iter()
                .enumerate()
                .filter(|(_, s)| !s.preloaded && s.id != loading)
                .filter_map(|(i, s)| Some((i, s.loaded()?)))
                .collect();
            let victim = candidates
                .iter()
                .filter(|(_, w)| Arc::strong_count(w) == 2 && w.is_idle())
                .map(|(i, w)| (*i, w.idle_for()))
                .max_by_key(|&(_, idle)| idle);
            let busy = !candidates.is_empty();
            drop(candidates);
            let Some((i, _)) = victim else {
                let why = match (too_many, too_big) {
                    (Some(max), _) => format!("{max} models are loaded (--max-loaded {max})"),
                    (None, Some(b)) => format!(
                        "model `{loading}` needs about {} and the loaded models take {} of the {} memory budget \
                         (--memory-budget)",
                        engine_device::format_size(needs),
                        engine_device::format_size(used),
                        engine_device::format_size(b)
                    ),
                    (None, None) => unreachable!("room is made only when a limit is reached"),
                };
                let e = ApiError::unavailable(format!(
                    "{why} and none can be unloaded now (preloaded or busy); retry later or raise the limit"
                ));
                return Err(if busy { Room::Busy(e) } else { Room::Never(e) });
            };
            let slot = slots.remove(i);
            tracing::info!(model = %slot.id, "unloading the least recently used model to make room");
            let worker = slot.worker.lock().ok().and_then(|mut w| w.take());
            drop(worker);
        }
    }

    /// Unloads on-demand models idle for longer than the keep-alive (their
    /// slots go too: a later request loads them again).
    pub fn unload_idle(&self) {
        let Ok(mut slots) = self.slots.lock() else { return };
        slots.retain(|slot| {
            let Some(keep_alive) = slot.keep_alive(self.options.keep_alive) else {
                return true;
            };
            let Ok(mut w) = slot.worker.lock() else { return true };
            match w.as_ref() {
                // Held by a request (strong count > 1) or busy: keep.
                Some(worker)
                    if Arc::strong_count(worker) == 1 && worker.is_idle() && worker.idle_for() >= keep_alive =>
                {
                    *w = None;
                    false
                }
                Some(_) => true,
                None => slot.load.try_lock().is_err(),
            }
        });
    }

    /// Sets the keep-alive a request to model `id` asked for.
    pub fn keep(&self, id: &str, keep_alive: Option<Duration>) {
        if let Some(slot) = self.slots().into_iter().find(|s| s.id == id) {
            slot.set_keep_alive(keep_alive);
        }
    }

    /// Unloads model `name` now (Ollama's `keep_alive: 0` with no prompt),
    /// or as soon as its running requests end; its served id, or `None`
    /// when it is not loaded. A preloaded model is refused: it stays.
    pub fn unload_now(&self, name: &str) -> Result<Option<String>, ApiError> {
        let Some(slot) = self.find(name).filter(|s| s.loaded().is_some()) else {
            return Ok(None);
        };
        if slot.preloaded {
            return Err(ApiError::bad_param(
                "keep_alive",
                format!("`{}` was given with --model and stays loaded", slot.id),
            ));
        }
        slot.set_keep_alive(Some(Duration::ZERO));
        self.unload_idle();
        Ok(Some(slot.id.clone()))
    }

    /// Drops every model (at shutdown).
    pub fn clear(&self) {
        if let Ok(mut s) = self.slots.lock() {
            s.clear();
        }
    }
}

fn new_slot(id: String, name: String, path: PathBuf, preloaded: bool) -> Arc<Slot> {
    Arc::new(Slot {
        kind: kind_of(&path),
        id,
        name,
        path,
        preloaded,
        keep_alive: Mutex::new(None),
        worker: Mutex::new(None),
        load: tokio::sync::Mutex::new(()),
    })
}

fn check_use(slot: &Slot, purpose: Use) -> Result<(), ApiError> {
    let what = match slot.kind {
        ModelKind::Text | ModelKind::Vision => "generates text: use /v1/chat/completions or /api/chat",
        ModelKind::Embedding => "is an embedding model: use /v1/embeddings or /api/embed",
        ModelKind::Image => "generates images: use /v1/images/generations",
    };
    let fits = match purpose {
        Use::Generate => slot.kind.generates(),
        Use::Embed => slot.kind == ModelKind::Embedding,
        Use::Draw => slot.kind == ModelKind::Image,
    };
    if fits {
        Ok(())
    } else {
        Err(ApiError::bad_param("model", format!("`{}` {what}", slot.id)))
    }
}

/// Bytes of the weight files a model loads (a file, or the weights in a
/// folder and its component subfolders): about what loading it takes.
pub(crate) fn weights_on_disk(path: &std::path::Path) -> u64 {
    if path.is_file() {
        return std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    }
    let Ok(entries) = std::fs::read_dir(path) else { return 0 };
    // One set of weights per folder: plain safetensors, else a variant
    // (`*.fp16.safetensors`), else GGUF, else PyTorch `.bin`.
    let (mut plain, mut variant, mut gguf, mut bin, mut parts) = (0, 0, 0, 0, 0);
    for e in entries.filter_map(Result::ok) {
        let p = e.path();
        let Ok(meta) = std::fs::metadata(&p) else { continue };
        let name = e.file_name().to_string_lossy().into_owned();
        if meta.is_dir() {
            // diffusers components (unet/, vae/, ...) hold their own weights.
            if p.join("config.json").is_file() {
                parts += weights_on_disk(&p);
            }
        } else if let Some(stem) = name.strip_suffix(".safetensors") {
            if stem.contains('.') {
                variant += meta.len();
            } else {
                plain += meta.len();
            }
        } else if name.ends_with(".gguf") {
            gguf += meta.len();
        } else if name.ends_with(".bin") {
            bin += meta.len();
        }
    }
    let own = [plain, variant, gguf, bin].into_iter().find(|&b| b > 0).unwrap_or(0);
    own + parts
}
