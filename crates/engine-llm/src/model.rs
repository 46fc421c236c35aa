//! Loading a model (folder or GGUF) and running it: [`LlmModel`].

use crate::batch::{BatchOptions, Scheduler};
use crate::config::LlmConfig;
use crate::generate::{be, CacheState, Generator};
use crate::transformer::{MaskSpec, Transformer};
use crate::{gguf, models};
use engine_core::{
    ChatMessage, ChatTemplate, EngineError, FeatureFlag, GenerateParams, GgufMetadata, LoadProgress,
    ModelConfiguration, ModelSource, ModelType, Prompt, Quantization, RenderOptions, Result, StreamEvent,
    TextGenerator, Tokenizer,
};
use engine_mlx::{Array, Dtype, WeightMap};
use std::path::Path;

/// Which precision weights run in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DtypePolicy {
    /// The fastest measured path for each weight format on this device. On
    /// the CPU: 4-, 5- and 8-bit quantized weights stay as stored for
    /// engine-mlx's int8 CPU kernels (SmolLM2 Q4_1 decodes ~1.4–1.6× faster than
    /// dense f32 + OpenBLAS here), other quantized and half-precision weights
    /// become dense f32 (OpenBLAS beats MLX's CPU quantized and
    /// half-precision kernels). On a GPU, the checkpoint's own.
    #[default]
    Auto,
    /// Exactly as stored (quantized stays quantized).
    Native,
    /// Dense weights of this dtype.
    Dense(Dtype),
    /// What [`DtypePolicy::Auto`] does on the CPU, asked for by name: 4- and
    /// 8-bit quantized weights stay as stored for engine-mlx's int8 CPU
    /// kernels (activations rounded to int8 per block of 32, as llama.cpp
    /// does), everything else dense f32; on a GPU, as stored.
    CpuKernels,
}

/// Options of [`LlmModel::load`].
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Precision policy.
    pub dtype: DtypePolicy,
    /// Override of the context length (default: the model's).
    pub context_length: Option<usize>,
    /// Quantize the dense weights on load with MLX's affine settings (as
    /// `mlx_lm.convert -q`: 4 or 8 bits, group size 32, 64 or 128); weights
    /// the checkpoint already stores quantized stay as they are unless the
    /// dtype policy made them dense first.
    pub quantize: Option<engine_mlx::quant::QuantSpec>,
    /// LoRA adapter folders (mlx-lm's or PEFT's format), applied unfused in
    /// order on top of the (possibly quantized) base weights.
    pub adapters: Vec<std::path::PathBuf>,
    /// Split the model across the ranks of a distributed group, by heads
    /// (tensor parallelism) or by layers (pipeline parallelism); every rank
    /// loads with the same options and runs the same calls.
    pub split: Option<crate::Split>,
}

/// A loaded language model with its tokenizer and chat template.
pub struct LlmModel {
    transformer: Transformer,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    config: ModelConfiguration,
}

/// What the weights become under a policy on this device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WeightForm {
    /// As stored.
    AsStored,
    /// Dense weights of this dtype.
    Dense(Dtype),
    /// The CPU's fastest: 4/5/8-bit quantized weights kept for the quantized
    /// CPU kernels, the rest dense f32.
    CpuKernels,
}

fn weight_form(policy: DtypePolicy) -> WeightForm {
    match policy {
        DtypePolicy::Native => WeightForm::AsStored,
        DtypePolicy::Dense(d) => WeightForm::Dense(d),
        DtypePolicy::Auto | DtypePolicy::CpuKernels if engine_mlx::default_device() == engine_mlx::Device::Cpu => {
            WeightForm::CpuKernels
        }
        DtypePolicy::Auto | DtypePolicy::CpuKernels => WeightForm::AsStored,
    }
}

/// The dense dtype tensors are decoded to while loading, or `None` for "as stored".
fn target_dtype(policy: DtypePolicy) -> Option<Dtype> {
    match weight_form(policy) {
        WeightForm::Dense(d) => Some(d),
        WeightForm::AsStored | WeightForm::CpuKernels => None,
    }
}

fn load_err(path: &Path, reason: impl Into<String>) -> EngineError {
    EngineError::ModelLoad {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

impl LlmModel {
    /// Loads a model folder (config.json, *.safetensors, tokenizer files) or
    /// a `.gguf` file, reporting progress.
    pub fn load(path: &Path, options: &LoadOptions, progress: &mut dyn FnMut(LoadProgress)) -> Result<LlmModel> {
        let mut report = |stage: &str, fraction: f32| {
            progress(LoadProgress {
                stage: stage.into(),
                fraction,
            })
        };
        report("reading configuration", 0.0);
        let is_gguf = path.is_file() && path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
        if !path.exists() {
            return Err(load_err(
                path,
                "no such file or folder; check the path, or pull the model first",
            ));
        }
        let (cfg, weights, tokenizer, template, source) = if is_gguf {
            // Read the header in Rust first: a truncated or corrupt file gets a
            // precise message before MLX touches it.
            let meta = GgufMetadata::read(path)?;
            let raw = LlmConfig::hf_json_from_gguf(&meta)?;
            let mut cfg = supported(LlmConfig::from_hf(&raw)?)?;
            report("reading weights", 0.1);
            let w = gguf::load_weights(path, &meta, target_dtype(options.dtype), &mut |f| {
                report("reading weights", 0.1 + 0.4 * f)
            })?;
            if let Some(scaling) = gguf::longrope(&w, &meta, cfg.max_position_embeddings)? {
                cfg.rope_scaling = scaling;
            }
            let w = gguf::to_hf(w, &meta, cfg.num_heads, cfg.num_kv_heads)?;
            let tok = Tokenizer::from_gguf(&meta)?;
            let tpl = ChatTemplate::from_gguf(&meta)?.unwrap_or_else(ChatTemplate::fallback);
            (cfg, w, tok, tpl, ModelSource::GgufFile(path.to_path_buf()))
        } else if path.is_dir() {
            let cfg_path = path.join("config.json");
            let text = std::fs::read_to_string(&cfg_path)
                .map_err(|e| load_err(path, format!("cannot read config.json ({e}); is this a model folder?")))?;
            let raw: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
                load_err(
                    &cfg_path,
                    format!("config.json is not valid JSON ({e}); download it again"),
                )
            })?;
            // Multimodal wrappers keep the text model's config nested.
            let raw = match raw.get("text_config") {
                Some(t) if raw.get("hidden_size").is_none() => {
                    let mut t = t.clone();
                    if t.get("model_type").is_none() {
                        t["model_type"] = raw["model_type"].clone();
                    }
                    t
                }
                _ => raw,
            };
            let cfg = supported(LlmConfig::from_hf(&raw)?)?;
            report("reading weights", 0.1);
            let w = WeightMap::load_safetensors_dir(path).map_err(|e| load_err(path, e.to_string()))?;
            let tok = Tokenizer::from_dir(path)?;
            let tpl = ChatTemplate::from_dir(path)?.unwrap_or_else(ChatTemplate::fallback);
            (cfg, w, tok, tpl, ModelSource::Directory(path.to_path_buf()))
        } else {
            return Err(load_err(path, "expected a model folder or a .gguf file"));
        };
        Self::assemble(cfg, weights, tokenizer, template, source, options, &mut report)
    }

    /// Builds a model from its parts: the text model's `config.json` (for a
    /// multimodal checkpoint, its `text_config`), weights named as in a text
    /// checkpoint (`model.layers.*`, `lm_head.*`), the tokenizer and the
    /// template. A vision-language model loads this way after taking its
    /// vision weights out.
    pub fn from_parts(
        text_config: &serde_json::Value,
        weights: WeightMap,
        tokenizer: Tokenizer,
        template: ChatTemplate,
        source: ModelSource,
        options: &LoadOptions,
        progress: &mut dyn FnMut(LoadProgress),
    ) -> Result<LlmModel> {
        let cfg = supported(LlmConfig::from_hf(text_config)?)?;
        let mut report = |stage: &str, fraction: f32| {
            progress(LoadProgress {
                stage: stage.into(),
                fraction,
            })
        };
        Self::assemble(cfg, weights, tokenizer, template, source, options, &mut report)
    }

    fn assemble(
        mut cfg: LlmConfig,
        weights: WeightMap,
        tokenizer: Tokenizer,
        template: ChatTemplate,
        source: ModelSource,
        options: &LoadOptions,
        report: &mut dyn FnMut(&str, f32),
    ) -> Result<LlmModel> {
        let (features, weights) = models::prepare(&mut cfg, weights)?;
        report("building the model", 0.5);
        let mut transformer = Transformer::load(cfg.clone(), features, &weights).map_err(be)?;
        drop(weights);
        // A rank of a split model keeps the graph lazy until it has dropped what
        // other ranks hold: safetensors are read on evaluation, so it reads only
        // the layers it keeps (pipeline) and holds one whole weight at a time
        // while slicing its shares (tensor).
        let lazy = options.split.is_some();
        match weight_form(options.dtype) {
            WeightForm::Dense(d) => transformer.convert(d).map_err(be)?,
            WeightForm::CpuKernels => transformer.convert_for_cpu(!lazy).map_err(be)?,
            WeightForm::AsStored => {}
        }
        if !lazy {
            report("materialising weights", 0.7);
            transformer.eval_weights().map_err(be)?;
        }
        if let Some(spec) = options.quantize {
            report("quantizing", 0.85);
            transformer
                .quantize(spec)
                .map_err(|e| EngineError::InvalidParameter(e.to_string()))?;
            // The new quantized layers take the CPU kernels' form too (as quantized
            // they would run MLX's scalar CPU kernels).
            if weight_form(options.dtype) == WeightForm::CpuKernels {
                transformer.convert_for_cpu(!lazy).map_err(be)?;
            }
            if !lazy {
                transformer.eval_weights().map_err(be)?;
            }
        }
        if let Some(split) = &options.split {
            if !options.adapters.is_empty() {
                return Err(EngineError::InvalidParameter(
                    "LoRA adapters cannot be applied to a model split across ranks: fuse them first \
                     (`mlxengine convert --adapter`)"
                        .into(),
                ));
            }
            report("splitting across ranks", 0.7);
            transformer
                .split(split)
                .map_err(|e| EngineError::InvalidParameter(e.to_string()))?;
            transformer.eval_weights().map_err(be)?;
        }
        for dir in &options.adapters {
            report("applying the adapter", 0.9);
            let adapter = crate::adapter::Adapter::load(dir)?;
            transformer
                .apply_adapter(&adapter)
                .map_err(EngineError::InvalidParameter)?;
        }
        if !options.adapters.is_empty() {
            transformer.eval_weights().map_err(be)?;
        }
        // GPU decode: dense q/k/v and gate/up as one matrix each (1B bfloat16 +3–5% a step,
        // H100; `MLXENGINE_CUDA_PACK=0` turns it off).
        if engine_mlx::fast::cuda_pack_enabled()
            && engine_mlx::default_device() == engine_mlx::Device::Gpu
            && options.split.is_none()
            && options.adapters.is_empty()
        {
            transformer.pack_projections().map_err(be)?;
        }
        let quantization = transformer.quantization().map(|q| Quantization {
            bits: q.bits as u8,
            group_size: q.group_size as u32,
        });
        report("ready", 1.0);
        let context_length = options.context_length.unwrap_or(cfg.max_position_embeddings).max(1);
        let mut capabilities = vec![FeatureFlag::Streaming, FeatureFlag::Batch, FeatureFlag::PromptCache];
        if !template.is_fallback() {
            capabilities.push(FeatureFlag::Chat);
        }
        if quantization.is_some() {
            capabilities.push(FeatureFlag::Quantization);
        }
        if !options.adapters.is_empty() {
            capabilities.push(FeatureFlag::Lora);
        }
        let (id, default_params) = match &source {
            ModelSource::GgufFile(p) => (file_name(p), GenerateParams::default()),
            ModelSource::Directory(p) => (file_name(p), generation_defaults(p)),
            ModelSource::HuggingFace(id) | ModelSource::Registry(id) => (id.clone(), GenerateParams::default()),
        };
        let config = ModelConfiguration {
            id,
            source,
            revision: None,
            model_type: ModelType::Llm,
            architecture: cfg.model_type.clone(),
            quantization,
            context_length,
            default_params,
            capabilities,
        };
        Ok(LlmModel {
            transformer,
            tokenizer,
            template,
            config,
        })
    }

    /// What was loaded (mutable, for a wrapping model to adjust).
    pub fn configuration_mut(&mut self) -> &mut ModelConfiguration {
        &mut self.config
    }

    /// The chat template.
    pub fn template(&self) -> &ChatTemplate {
        &self.template
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Folds the LoRA adapters applied at load into the weights: the same
    /// outputs (for dense bases; a quantized base is re-quantized with the
    /// update), without the per-layer low-rank matmuls.
    pub fn fuse_adapters(&mut self) -> Result<()> {
        self.transformer.fuse_adapters().map_err(be)
    }

    /// The transformer (for benchmarks and parity tests).
    pub fn transformer(&self) -> &Transformer {
        &self.transformer
    }

    /// Renders and tokenizes a prompt.
    pub fn encode_prompt(&self, prompt: &Prompt) -> Result<Vec<u32>> {
        match prompt {
            Prompt::Text(t) => Ok(self.tokenizer.encode(t, true)?),
            Prompt::Chat(messages) => {
                if messages.is_empty() {
                    return Err(EngineError::InvalidParameter(
                        "the chat has no messages; add a user message".into(),
                    ));
                }
                let opts = RenderOptions {
                    add_generation_prompt: true,
                    bos_token: self.tokenizer.bos_token(),
                    eos_token: self.tokenizer.eos_token(),
                    ..Default::default()
                };
                let text = self.template.render(messages, &opts)?;
                let contents: Vec<&str> = messages.iter().map(|m| m.content.as_str()).collect();
                // transformers leaves BOS to a folder's template; llama.cpp adds
                // the BOS a GGUF asks for (once) when its template does not.
                let add_bos = matches!(self.config.source, ModelSource::GgufFile(_));
                Ok(self.tokenizer.encode_chat(&text, &contents, add_bos)?)
            }
        }
    }

    /// Starts a generation from token ids, optionally continuing a cache.
    pub fn generate_from_tokens<'a>(
        &'a self,
        prompt: &[u32],
        params: &GenerateParams,
        state: Option<&'a mut CacheState>,
    ) -> Result<Generator<'a>> {
        Generator::new(
            &self.transformer,
            &self.tokenizer,
            prompt,
            params,
            self.config.context_length,
            state,
        )
    }

    /// A continuous-batching scheduler over this model (see [`crate::batch`]).
    pub fn scheduler(&self, options: BatchOptions) -> Scheduler<'_> {
        Scheduler::new(&self.transformer, &self.tokenizer, self.config.context_length, options)
    }

    /// Logits (L, vocab) of every position of `tokens`, in one pass (parity tests).
    pub fn logits(&self, tokens: &[u32]) -> Result<Array> {
        let ids = Array::from_slice(tokens, &[1, tokens.len()]).map_err(be)?;
        let mut cache = self.transformer.new_cache();
        let l = self
            .transformer
            .forward(&ids, &mut cache, &MaskSpec::default(), false)
            .map_err(be)?;
        l.squeeze(0).map_err(be)
    }

    /// Greedy-decodes several prompts at once (one batch through the
    /// [`Scheduler`]). Returns each prompt's generated tokens, up to and
    /// including its first EOS (as [`engine_core::Generation::tokens`]).
    pub fn generate_batch(&self, prompts: &[Vec<u32>], max_tokens: usize) -> Result<Vec<Vec<u32>>> {
        let mut s = self.scheduler(BatchOptions {
            max_batch: prompts.len().max(1),
            prefix_cache_bytes: 0,
            ..Default::default()
        });
        let params = GenerateParams::greedy(max_tokens);
        let mut row = std::collections::HashMap::new();
        for (i, p) in prompts.iter().enumerate() {
            row.insert(s.submit(p.clone(), &params)?, i);
        }
        let mut out = vec![Vec::new(); prompts.len()];
        while !s.is_idle() {
            for e in s.step()? {
                if let StreamEvent::Text { token, .. } = e.event {
                    out[row[&e.id]].push(token);
                }
            }
        }
        Ok(out)
    }

    /// A multi-turn chat that keeps its KV cache between turns.
    pub fn chat(&self, system: Option<&str>) -> ChatSession<'_> {
        ChatSession {
            model: self,
            history: ChatHistory::new(system),
        }
    }
}

impl TextGenerator for LlmModel {
    fn configuration(&self) -> &ModelConfiguration {
        &self.config
    }

    fn stream<'a>(
        &'a mut self,
        prompt: &Prompt,
        params: &GenerateParams,
    ) -> Result<Box<dyn Iterator<Item = Result<StreamEvent>> + 'a>> {
        let tokens = self.encode_prompt(prompt)?;
        Ok(Box::new(self.generate_from_tokens(&tokens, params, None)?))
    }
}

/// A conversation whose KV cache survives between turns: each turn only
/// processes the tokens the cache does not already hold.
pub struct ChatSession<'m> {
    model: &'m LlmModel,
    history: ChatHistory,
}

impl<'m> ChatSession<'m> {
    /// Streams the reply to a user message. The session records the turn
    /// (message and reply) itself once the reply is complete; a turn that
    /// fails or is dropped early leaves the conversation as it was.
    pub fn send<'s>(&'s mut self, user: &str, params: &GenerateParams) -> Result<ChatTurn<'s>> {
        let message = ChatMessage::new("user", user);
        let mut messages = self.history.messages.clone();
        messages.push(message.clone());
        let tokens = self.model.encode_prompt(&Prompt::Chat(messages))?;
        let generator = self
            .model
            .generate_from_tokens(&tokens, params, Some(&mut self.history.state))?;
        Ok(ChatTurn::new(generator, &mut self.history.messages, message))
    }

    /// Whether the conversation with `user` added would leave no room in
    /// the context for an answer.
    pub fn overflows(&self, user: &str) -> Result<bool> {
        let mut messages = self.history.messages.clone();
        messages.push(ChatMessage::new("user", user));
        let n = self.model.encode_prompt(&Prompt::Chat(messages))?.len();
        Ok(n >= self.model.config.context_length)
    }

    /// The conversation and its cache.
    pub fn history(&self) -> &ChatHistory {
        &self.history
    }

    /// The conversation, to edit (clear, replace the system prompt, drop turns).
    pub fn history_mut(&mut self) -> &mut ChatHistory {
        &mut self.history
    }

    /// The conversation so far.
    pub fn messages(&self) -> &[ChatMessage] {
        &self.history.messages
    }
}

/// The messages and KV cache of a chat (shared by the text and the
/// vision-language sessions).
#[derive(Default)]
pub struct ChatHistory {
    /// Completed turns, after the optional system prompt.
    pub messages: Vec<ChatMessage>,
    /// The cache and what it holds.
    pub state: CacheState,
}

impl ChatHistory {
    /// A history starting with an optional system prompt.
    pub fn new(system: Option<&str>) -> ChatHistory {
        ChatHistory {
            messages: system.map(|s| vec![ChatMessage::new("system", s)]).unwrap_or_default(),
            state: CacheState::default(),
        }
    }

    /// Forgets every turn (the system prompt stays).
    pub fn clear(&mut self) {
        self.messages.retain(|m| m.role == "system");
    }

    /// Tokens currently held in the KV cache.
    pub fn cached_tokens(&self) -> usize {
        self.state.tokens.len()
    }

    /// Drops the oldest turn (a user message and the reply after it; the
    /// system prompt stays). False when there is none left to drop.
    pub fn drop_oldest_turn(&mut self) -> bool {
        let Some(i) = self.messages.iter().position(|m| m.role != "system") else {
            return false;
        };
        self.messages.remove(i);
        while self
            .messages
            .get(i)
            .is_some_and(|m| m.role != "user" && m.role != "system")
        {
            self.messages.remove(i);
        }
        true
    }

    /// Replaces the system prompt (`None` removes it).
    pub fn set_system(&mut self, system: Option<&str>) {
        self.messages.retain(|m| m.role != "system");
        if let Some(s) = system {
            self.messages.insert(0, ChatMessage::new("system", s));
        }
    }
}

/// One streamed reply of a chat; when it completes, the user message and the
/// reply join the conversation.
pub struct ChatTurn<'s> {
    generator: Generator<'s>,
    messages: &'s mut Vec<ChatMessage>,
    user: Option<ChatMessage>,
    reply: String,
}

impl<'s> ChatTurn<'s> {
    /// Wraps a running generation for `user`'s message.
    pub fn new(generator: Generator<'s>, messages: &'s mut Vec<ChatMessage>, user: ChatMessage) -> ChatTurn<'s> {
        ChatTurn {
            generator,
            messages,
            user: Some(user),
            reply: String::new(),
        }
    }
}

impl Iterator for ChatTurn<'_> {
    type Item = Result<StreamEvent>;

    fn next(&mut self) -> Option<Self::Item> {
        let event = self.generator.next()?;
        match &event {
            Ok(StreamEvent::Text { text, .. }) => self.reply.push_str(text),
            Ok(StreamEvent::Done { .. }) => {
                if let Some(user) = self.user.take() {
                    self.messages.push(user);
                    self.messages
                        .push(ChatMessage::new("assistant", std::mem::take(&mut self.reply)));
                }
            }
            Err(_) => self.user = None,
        }
        Some(event)
    }
}

/// Refuses an unknown architecture before any weight is read.
fn supported(cfg: LlmConfig) -> Result<LlmConfig> {
    if models::SUPPORTED.contains(&cfg.model_type.as_str()) {
        Ok(cfg)
    } else {
        Err(EngineError::UnsupportedArchitecture(cfg.model_type))
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn generation_defaults(dir: &Path) -> GenerateParams {
    let mut p = GenerateParams::default();
    let Ok(text) = std::fs::read_to_string(dir.join("generation_config.json")) else {
        return p;
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return p;
    };
    if let Some(t) = v.get("temperature").and_then(|x| x.as_f64()) {
        p.temperature = t as f32;
    }
    if let Some(t) = v.get("top_p").and_then(|x| x.as_f64()) {
        p.top_p = t as f32;
    }
    if let Some(k) = v.get("top_k").and_then(|x| x.as_u64()) {
        p.top_k = k as usize;
    }
    if let Some(r) = v.get("repetition_penalty").and_then(|x| x.as_f64()) {
        p.repetition_penalty = r as f32;
    }
    if v.get("do_sample").and_then(|x| x.as_bool()) == Some(false) {
        p.temperature = 0.0;
    }
    p
}
