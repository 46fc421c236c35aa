//! Loading a vision-language checkpoint and answering chats with images:
//! [`VlmModel`].

use crate::image::{pixel_hash, ImageLimits, LoadImage};
use crate::models::qwen2_vl::rope_index;
use crate::models::{self, VisionSide};
use crate::preprocess::ImageProcessorConfig;
use crate::{be, image_err};
use engine_core::{
    ChatMessage, ChatTemplate, EngineError, FeatureFlag, GenerateParams, ImageSource, LoadProgress, ModelConfiguration,
    ModelSource, ModelType, Prompt, RenderOptions, Result, StreamEvent, TextGenerator, Tokenizer,
};
use engine_llm::generate::{image_key, MropePositions, PromptEmbeds};
use engine_llm::{ChatHistory, ChatTurn, Generator, LlmModel, LoadOptions};
use engine_mlx::{concatenate, Array, WeightMap};
use std::path::Path;
use std::sync::Mutex;

/// Images whose features a model keeps, so a chat does not re-run the
/// vision tower on its earlier images every turn.
const FEATURE_CACHE: usize = 8;

/// A loaded vision-language model: its decoder is `engine-llm`'s, so it
/// answers text-only prompts exactly as the text model would.
pub struct VlmModel {
    llm: LlmModel,
    vision: VisionSide,
    processor: ImageProcessorConfig,
    limits: ImageLimits,
    config: ModelConfiguration,
    /// Features (and patch grid) of recent images by pixel hash, most recent last.
    features: Mutex<Vec<(u64, Features)>>,
}

fn load_err(path: &Path, reason: impl Into<String>) -> EngineError {
    EngineError::ModelLoad {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// A prompt ready for the decoder: token ids (placeholders expanded) and,
/// when it holds images, the input embeddings and cache keys.
pub struct EncodedPrompt {
    /// Token ids, one per position.
    pub ids: Vec<u32>,
    /// Embeddings and keys, for prompts with images.
    pub embeds: Option<PromptEmbeds>,
}

impl VlmModel {
    /// Loads a Hugging Face vision-language folder (config.json with a
    /// `vision_config`, safetensors, tokenizer, chat template and
    /// `preprocessor_config.json`/`processor_config.json`).
    pub fn load(path: &Path, options: &LoadOptions, progress: &mut dyn FnMut(LoadProgress)) -> Result<VlmModel> {
        progress(LoadProgress {
            stage: "reading configuration".into(),
            fraction: 0.0,
        });
        if !path.is_dir() {
            let why = if path.exists() {
                "a vision-language model is a folder (config.json, safetensors, tokenizer, preprocessor_config.json), not a single file"
            } else {
                "no such folder; check the path, or pull the model first"
            };
            return Err(load_err(path, why));
        }
        let cfg_path = path.join("config.json");
        let text = std::fs::read_to_string(&cfg_path)
            .map_err(|e| load_err(path, format!("cannot read config.json ({e}); is this a model folder?")))?;
        let raw: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            load_err(
                &cfg_path,
                format!("config.json is not valid JSON ({e}); download it again"),
            )
        })?;
        let arch = raw
            .get("model_type")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string();
        if raw.get("vision_config").is_none() {
            return Err(load_err(
                path,
                format!("`{arch}` is a text-only model (its config.json has no vision_config); load it as a text model and send no images"),
            ));
        }
        let processor = ImageProcessorConfig::from_dir(path).map_err(image_err)?;
        // transformers 5 nests the decoder's settings in `text_config`; the
        // original Qwen2-VL configs keep them at the top level.
        let mut text_cfg = match raw.get("text_config") {
            Some(t) if t.is_object() => t.clone(),
            Some(_) => {
                return Err(load_err(
                    &cfg_path,
                    "config.json's text_config is not an object; download it again",
                ))
            }
            None => raw.clone(),
        };
        if text_cfg.get("model_type").is_none() {
            text_cfg["model_type"] = "llama".into();
        }
        progress(LoadProgress {
            stage: "reading weights".into(),
            fraction: 0.1,
        });
        let weights = WeightMap::load_safetensors_dir(path).map_err(|e| load_err(path, e.to_string()))?;
        let (mut vision, text_weights) = models::load_vision(&arch, &raw, weights, &text_cfg)?;
        let tokenizer = Tokenizer::from_dir(path)?;
        let template = ChatTemplate::from_dir(path)?.unwrap_or_else(ChatTemplate::fallback);
        let llm = LlmModel::from_parts(
            &text_cfg,
            text_weights,
            tokenizer,
            template,
            ModelSource::Directory(path.to_path_buf()),
            options,
            progress,
        )?;
        vision.finish_load(llm.transformer().embed_dtype()).map_err(be)?;
        let mut config = llm.configuration().clone();
        config.model_type = ModelType::Vlm;
        config.architecture = arch;
        config.capabilities.push(FeatureFlag::Vision);
        Ok(VlmModel {
            llm,
            vision,
            processor,
            limits: ImageLimits::default(),
            config,
            features: Mutex::new(Vec::new()),
        })
    }

    /// The text model underneath.
    pub fn llm(&self) -> &LlmModel {
        &self.llm
    }

    /// Forgets the cached features of earlier images.
    pub fn clear_image_cache(&self) {
        self.features.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Sets the largest image (in pixels, from its header) accepted.
    pub fn set_image_limits(&mut self, limits: ImageLimits) {
        self.limits = limits;
    }

    /// Renders, tokenizes and embeds a chat: each image's placeholder
    /// becomes the model's image tokens, whose embeddings are the image's
    /// features.
    pub fn encode(&self, messages: &[ChatMessage]) -> Result<EncodedPrompt> {
        if messages.is_empty() {
            return Err(EngineError::InvalidParameter(
                "the chat has no messages; add a user message".into(),
            ));
        }
        let tok = self.llm.tokenizer();
        let opts = RenderOptions {
            add_generation_prompt: true,
            bos_token: tok.bos_token(),
            eos_token: tok.eos_token(),
            ..Default::default()
        };
        let text = self.llm.template().render_parts(messages, &opts)?;
        let contents: Vec<&str> = messages.iter().map(|m| m.content.as_str()).collect();
        // HF processors tokenize the rendered prompt with special tokens (BOS).
        let mut ids = tok.encode_chat(&text, &contents, true)?;
        let images: Vec<&ImageSource> = messages.iter().flat_map(|m| &m.images).collect();
        let placeholder = self.vision.placeholder_id();
        let placeholders = ids.iter().filter(|&&i| i == placeholder).count();
        if placeholders != images.len() {
            return Err(EngineError::ImageCount {
                placeholders,
                images: images.len(),
            });
        }
        if images.is_empty() {
            return Ok(EncodedPrompt { ids, embeds: None });
        }
        if let Some(max) = self.vision.max_images() {
            if images.len() > max {
                return Err(EngineError::InvalidParameter(format!(
                    "{} images were given but this model takes at most {max} per prompt",
                    images.len()
                )));
            }
        }
        // Decode every image; run the tower (one batch) only on those whose
        // features are not cached.
        let mut hashes = Vec::with_capacity(images.len());
        let mut missing = Vec::new();
        let mut pixels = Vec::new();
        for src in &images {
            let img = src.load(&self.limits).map_err(image_err)?;
            let h = pixel_hash(&img);
            hashes.push(h);
            if self.cached_features(h).is_none() && !missing.contains(&h) {
                missing.push(h);
                pixels.push(self.processor.preprocess(&img).map_err(image_err)?);
            }
        }
        if !pixels.is_empty() {
            let fresh = self.vision.encode(&pixels)?;
            engine_mlx::eval(fresh.iter()).map_err(be)?;
            let mut cache = self.features.lock().unwrap_or_else(|p| p.into_inner());
            for ((h, rows), p) in missing.into_iter().zip(fresh).zip(&pixels) {
                cache.retain(|(k, _)| *k != h);
                cache.push((
                    h,
                    Features {
                        rows,
                        grid: p.image_grid_thw,
                        splits: p.splits,
                    },
                ));
                if cache.len() > FEATURE_CACHE {
                    cache.remove(0);
                }
            }
        }
        let cached: Vec<Features> = hashes
            .iter()
            .map(|&h| {
                self.cached_features(h)
                    .ok_or_else(|| EngineError::Backend("image features were evicted mid-prompt".into()))
            })
            .collect::<Result<_>>()?;
        // Processors that write more than the placeholder per image (Gemma 3's
        // "\n\n<start_of_image>…<end_of_image>\n\n", Idefics3's tiles) do it in
        // the text, so the tokenizer merges the markup with its neighbours as theirs does.
        let mut expansions = Vec::with_capacity(cached.len());
        for f in &cached {
            match self.vision.expansion(tok, f.splits)? {
                Some(e) => expansions.push(e),
                None => break,
            }
        }
        if expansions.len() == cached.len() {
            let marker = tok.id_to_token(placeholder).unwrap_or_default();
            let text = replace_outside(&text, &contents, &marker, expansions.into_iter());
            ids = tok.encode_chat(&text, &contents, true)?;
        }
        let placeholder = self.vision.image_token_id();
        // Each image's features, split evenly over its frames' placeholders.
        let mut features: Vec<(usize, Array)> = Vec::new();
        for (i, f) in cached.iter().enumerate() {
            let frames = f.splits.map_or(1, |[r, c]| r * c + 1);
            let n = f.rows.dim(0) / frames;
            for j in 0..frames {
                let rows = f.rows.slice_axis(0, (j * n) as i32, ((j + 1) * n) as i32).map_err(be)?;
                features.push((i, rows));
            }
        }
        let found = ids.iter().filter(|&&t| t == placeholder).count();
        if found != features.len() {
            return Err(EngineError::Backend(format!(
                "the prompt holds {found} image slots after expansion but the images give {} frames",
                features.len()
            )));
        }
        let per_image = features[0].1.dim(0);
        // Expand each placeholder into the image's positions.
        let mut expanded = Vec::with_capacity(ids.len() + images.len() * per_image);
        let mut keys = Vec::with_capacity(expanded.capacity());
        let mut pieces = Vec::new();
        let mut text_start = 0;
        let mut image = 0;
        for (pos, &id) in ids.iter().enumerate() {
            if id != placeholder {
                expanded.push(id);
                keys.push(id as u64);
                continue;
            }
            pieces.push(Piece::Text(text_start, pos));
            pieces.push(Piece::Image(image));
            text_start = pos + 1;
            let (owner, rows) = &features[image];
            let first = features[..image]
                .iter()
                .filter(|(o, _)| o == owner)
                .map(|(_, r)| r.dim(0))
                .sum::<usize>();
            for i in 0..rows.dim(0) {
                expanded.push(id);
                keys.push(image_key(hashes[*owner], first + i));
            }
            image += 1;
        }
        pieces.push(Piece::Text(text_start, ids.len()));
        let id_arr = Array::from_slice(&ids, &[1, ids.len()]).map_err(be)?;
        let text_emb = self.llm.transformer().embed(&id_arr).map_err(be)?;
        let mut parts = Vec::with_capacity(pieces.len());
        for p in pieces {
            match p {
                Piece::Text(a, b) if b > a => parts.push(text_emb.slice_axis(1, a as i32, b as i32).map_err(be)?),
                Piece::Text(..) => {}
                Piece::Image(i) => parts.push(
                    features[i]
                        .1
                        .astype(text_emb.dtype())
                        .and_then(|f| f.expand_dims(0))
                        .map_err(be)?,
                ),
            }
        }
        let refs: Vec<&Array> = parts.iter().collect();
        let embeds = concatenate(&refs, 1).map_err(be)?;
        let mrope = match self.vision.mrope_merge() {
            Some(merge) => {
                let grids: Vec<[usize; 3]> = cached.iter().filter_map(|f| f.grid).collect();
                let (positions, delta) = rope_index(&expanded, placeholder, &grids, merge);
                Some(MropePositions { positions, delta })
            }
            None => None,
        };
        let bidirectional = if self.vision.bidirectional() {
            image_spans(&expanded, placeholder)
        } else {
            Vec::new()
        };
        Ok(EncodedPrompt {
            ids: expanded,
            embeds: Some(PromptEmbeds {
                embeds,
                keys,
                mrope,
                bidirectional,
            }),
        })
    }

    fn cached_features(&self, hash: u64) -> Option<Features> {
        let cache = self.features.lock().unwrap_or_else(|p| p.into_inner());
        cache.iter().find(|(k, _)| *k == hash).map(|(_, f)| f.clone())
    }

    /// A multi-turn chat that keeps its KV cache (images included) between turns.
    pub fn chat(&self, system: Option<&str>) -> VlmChatSession<'_> {
        VlmChatSession {
            model: self,
            history: ChatHistory::new(system),
        }
    }

    /// Starts a generation for an encoded prompt.
    pub fn generate_encoded<'a>(
        &'a self,
        prompt: &EncodedPrompt,
        params: &GenerateParams,
        state: Option<&'a mut engine_llm::CacheState>,
    ) -> Result<Generator<'a>> {
        let ctx = self.config.context_length;
        let (t, tok) = (self.llm.transformer(), self.llm.tokenizer());
        match &prompt.embeds {
            Some(e) => Generator::with_embeds(t, tok, &prompt.ids, e, params, ctx, state),
            None => Generator::new(t, tok, &prompt.ids, params, ctx, state),
        }
    }

    /// Logits (L, vocab) of every position of a chat, in one pass (parity tests).
    pub fn logits(&self, messages: &[ChatMessage]) -> Result<(Vec<u32>, Array)> {
        let p = self.encode(messages)?;
        let t = self.llm.transformer();
        let mut cache = t.new_cache();
        let h = match &p.embeds {
            Some(e) => e.embeds.clone(),
            None => t
                .embed(&Array::from_slice(&p.ids, &[1, p.ids.len()]).map_err(be)?)
                .map_err(be)?,
        };
        let mask = engine_llm::transformer::MaskSpec {
            mrope_positions: p
                .embeds
                .as_ref()
                .and_then(|e| e.mrope.as_ref())
                .map(|m| m.positions.clone()),
            bidirectional: p.embeds.as_ref().map(|e| e.bidirectional.clone()).unwrap_or_default(),
            ..Default::default()
        };
        let l = t
            .forward_embeds(h, &mut cache, &mask, false)
            .and_then(|l| l.squeeze(0))
            .map_err(be)?;
        Ok((p.ids, l))
    }
}

/// `text` with each `from` replaced by the next of `to`, except inside
/// `contents` (the messages' own text, found in order), which stay as the
/// user wrote them.
fn replace_outside(text: &str, contents: &[&str], from: &str, mut to: impl Iterator<Item = String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut cursor = 0;
    let mut replace = |segment: &str, out: &mut String| {
        let mut rest = segment;
        while let Some(p) = rest.find(from) {
            out.push_str(&rest[..p]);
            out.push_str(&to.next().unwrap_or_else(|| from.to_string()));
            rest = &rest[p + from.len()..];
        }
        out.push_str(rest);
    };
    for c in contents.iter().filter(|c| !c.is_empty()) {
        let found = [*c, c.trim()]
            .into_iter()
            .filter(|c| !c.is_empty())
            .find_map(|c| text[cursor..].find(c).map(|p| (cursor + p, c.len())));
        if let Some((start, len)) = found {
            replace(&text[cursor..start], &mut out);
            out.push_str(&text[start..start + len]);
            cursor = start + len;
        }
    }
    replace(&text[cursor..], &mut out);
    out
}

/// Runs `[start, end)` of consecutive `token` positions (one per image).
fn image_spans(ids: &[u32], token: u32) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut start = None;
    for (i, &id) in ids.iter().chain(std::iter::once(&u32::MAX)).enumerate() {
        match (id == token, start) {
            (true, None) => start = Some(i),
            (false, Some(a)) => {
                spans.push((a, i));
                start = None;
            }
            _ => {}
        }
    }
    spans
}

/// An image's features and, for native-resolution towers, its patch grid.
#[derive(Clone)]
struct Features {
    rows: Array,
    grid: Option<[usize; 3]>,
    /// Idefics3's tile split.
    splits: Option<[usize; 2]>,
}

enum Piece {
    /// Token positions `a..b` of the unexpanded prompt.
    Text(usize, usize),
    /// The features of image `i`.
    Image(usize),
}

impl TextGenerator for VlmModel {
    fn configuration(&self) -> &ModelConfiguration {
        &self.config
    }

    fn stream<'a>(
        &'a mut self,
        prompt: &Prompt,
        params: &GenerateParams,
    ) -> Result<Box<dyn Iterator<Item = Result<StreamEvent>> + 'a>> {
        let encoded = match prompt {
            Prompt::Chat(messages) => self.encode(messages)?,
            Prompt::Text(_) => EncodedPrompt {
                ids: self.llm.encode_prompt(prompt)?,
                embeds: None,
            },
        };
        Ok(Box::new(self.generate_encoded(&encoded, params, None)?))
    }
}

/// A chat with images whose KV cache survives between turns (image spans are
/// keyed by their pixels, so a different image is never served from cache).
pub struct VlmChatSession<'m> {
    model: &'m VlmModel,
    history: ChatHistory,
}

impl VlmChatSession<'_> {
    /// Streams the reply to `message` (text and images). The session records
    /// the turn itself when the reply completes; a failed or abandoned turn
    /// leaves the conversation unchanged.
    pub fn send<'s>(&'s mut self, message: ChatMessage, params: &GenerateParams) -> Result<ChatTurn<'s>> {
        let mut messages = self.history.messages.clone();
        messages.push(message.clone());
        let prompt = self.model.encode(&messages)?;
        let ChatHistory { messages, state } = &mut self.history;
        let generator = self.model.generate_encoded(&prompt, params, Some(state))?;
        Ok(ChatTurn::new(generator, messages, message))
    }

    /// Whether the conversation with `message` added would leave no room in
    /// the context for an answer.
    pub fn overflows(&self, message: &ChatMessage) -> Result<bool> {
        let mut messages = self.history.messages.clone();
        messages.push(message.clone());
        Ok(self.model.encode(&messages)?.ids.len() >= self.model.config.context_length)
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
