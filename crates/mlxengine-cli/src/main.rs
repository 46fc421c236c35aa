//! The `mlxengine` command-line tool.

mod convert;
mod imagine;
mod launch;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use engine_device::{format_size, DeviceReport, MemoryBudget, Purpose, Query, RankSplit, Registry, SplitKind};
use engine_hub::{FileFilter, HubClient, RepoId};
use indicatif::{ProgressBar, ProgressStyle};
use mlxengine::{
    ChatMessage, ChatTurn, DtypePolicy, GenerateParams, GenerationStats, ImageSource, InferenceEngine, LlmModel,
    LoadOptions, ModelType, Progress, Prompt, StreamEvent, TextGenerator, VlmModel,
};
use std::io::{BufRead, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Parser)]
#[command(name = "mlxengine", version, about = "Run local AI models on MLX")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text: answer PROMPT, or chat interactively without one.
    Run(RunArgs),
    /// Print embeddings of TEXT (or of each stdin line).
    Embed {
        /// Model: folder, registry id or Hugging Face repo.
        model: String,
        /// Texts to embed; read from stdin, one per line, when absent.
        text: Vec<String>,
        /// Print JSON `{"model", "dimensions", "embeddings"}`.
        #[arg(long)]
        json: bool,
    },
    /// Split a model across N processes over MLX distributed:
    /// `launch -n 2 [--split tensor|pipeline] -- run MODEL PROMPT`, or
    /// `-- serve --model MODEL` (rank 0 serves HTTP, every rank steps the batch).
    Launch(launch::LaunchArgs),
    /// Generate images from PROMPT with a diffusion model (-o out.png).
    Imagine(imagine::ImagineArgs),
    /// Write a model (folder, GGUF or repo) as an MLX folder that mlx-lm loads.
    Convert(convert::ConvertArgs),
    /// Download a model (registry id or Hugging Face repo) into the HF cache.
    Pull {
        /// Registry id or `org/name`.
        model: String,
        /// Branch, tag or commit.
        #[arg(long, default_value = "main")]
        revision: String,
        /// Registry variant (default: the best for this device).
        #[arg(long)]
        variant: Option<String>,
    },
    /// List models in the local cache.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a model from the local cache.
    Rm {
        /// `org/name`.
        model: String,
    },
    /// Search the built-in registry (or the Hugging Face Hub with --hub).
    Search(SearchArgs),
    /// Report this machine and what is wrong with it.
    Doctor {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Serve models over an OpenAI- and Ollama-compatible HTTP API.
    Serve(ServeArgs),
    /// Recommend models that fit this machine.
    Recommend {
        /// Model type: llm, vlm, embedding, diffusion.
        #[arg(long = "type", default_value = "llm")]
        model_type: String,
        /// Memory budget, e.g. 8GB (default: 80% of what is usable).
        #[arg(long)]
        memory: Option<String>,
        /// Context length to plan the KV cache for.
        #[arg(long)]
        context: Option<u64>,
        /// Plan for a model split across this many processes (`mlxengine launch -n N`): the
        /// budget is one rank's and each estimate that rank's share.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
        ranks: u64,
        /// How a split model is divided: by heads (`tensor`) or by layers (`pipeline`).
        #[arg(long, default_value = "tensor", value_parser = ["tensor", "pipeline"])]
        split: String,
        /// Print JSON (when nothing fits: the report with its `note`, and a failing exit status).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct RunArgs {
    /// Model: path to a folder or .gguf, registry id, or Hugging Face repo.
    model: String,
    /// The question; without it, an interactive chat starts.
    prompt: Option<String>,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 512)]
    max_tokens: usize,
    /// Sampling temperature (0 = greedy).
    #[arg(long)]
    temperature: Option<f32>,
    /// Nucleus sampling mass.
    #[arg(long)]
    top_p: Option<f32>,
    /// Keep the k most likely tokens.
    #[arg(long)]
    top_k: Option<usize>,
    /// Minimum probability relative to the top token.
    #[arg(long)]
    min_p: Option<f32>,
    /// Repetition penalty (1.0 = off).
    #[arg(long)]
    repetition_penalty: Option<f32>,
    /// Random seed.
    #[arg(long)]
    seed: Option<u64>,
    /// System prompt.
    #[arg(long)]
    system: Option<String>,
    /// Stop before this string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Registry variant (e.g. 4bit, bf16).
    #[arg(long)]
    variant: Option<String>,
    /// Context length in tokens (default: the model's).
    #[arg(long)]
    context: Option<usize>,
    /// Weight precision: auto (fastest for this device), native, f32, bf16, f16, or cpu-kernels
    /// (4/5/8-bit weights kept quantized for the engine's int8 CPU kernels, the rest f32).
    #[arg(long, default_value = "auto")]
    dtype: String,
    /// Quantize the weights on load to this many bits (4 or 8; MLX affine, as `mlx_lm.convert -q`).
    #[arg(long, value_name = "BITS")]
    quantize: Option<i32>,
    /// Elements per quantization group with --quantize (32, 64 or 128).
    #[arg(long, default_value_t = 64, requires = "quantize")]
    group_size: i32,
    /// A LoRA adapter folder (mlx-lm's adapters.safetensors or PEFT's
    /// adapter_model.safetensors, with adapter_config.json); repeatable.
    #[arg(long, value_name = "DIR")]
    adapter: Vec<std::path::PathBuf>,
    /// An image for a vision-language model: a file, or a `data:` / `file://`
    /// URL (repeatable; shown before the text).
    #[arg(long)]
    image: Vec<String>,
    /// Print one JSON object when the answer is done (text, token_ids,
    /// finish_reason, prompt_tokens, completion_tokens, ttft_ms, decode_tok_s).
    #[arg(long)]
    json: bool,
    /// Print statistics to stderr.
    #[arg(long, short)]
    verbose: bool,
}

#[derive(Args)]
struct ServeArgs {
    /// Address to bind (loopback by default).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0 picks a free one; the printed URL says which).
    #[arg(long, default_value_t = 11435)]
    port: u16,
    /// A model to load at start and keep loaded: path, registry id or repo (repeatable).
    #[arg(long)]
    model: Vec<String>,
    /// Require `Authorization: Bearer KEY` (default: $MLXENGINE_API_KEY).
    #[arg(long)]
    api_key: Option<String>,
    /// Unload a model loaded on demand after this idle time (5m, 30s, 0, -1 = never).
    #[arg(long, default_value = "5m")]
    keep_alive: String,
    /// Requests each model answers at once: a text model batches them
    /// (continuous batching, one copy of the weights); an embedding model
    /// embeds queued requests together; vision and image models load this
    /// many copies.
    #[arg(long, default_value_t = 4)]
    parallel: usize,
    /// Requests that may wait per model before a 429.
    #[arg(long, default_value_t = 32)]
    max_queue: usize,
    /// Most models loaded at once: loading another unloads the least recently
    /// used idle one loaded on demand (default: no limit).
    #[arg(long)]
    max_loaded: Option<usize>,
    /// Allow CORS from this origin (`*` for any; repeatable). Off by default.
    #[arg(long)]
    cors: Vec<String>,
    /// Let requests download models from the Hugging Face Hub.
    #[arg(long)]
    allow_pull: bool,
    /// Memory the loaded models may take together: a size (16GB), a share of
    /// the memory free at start (80%), or none. Loading past it unloads idle
    /// on-demand models, least recently used first.
    #[arg(long, default_value = "80%")]
    memory_budget: String,
}

#[derive(Args)]
struct SearchArgs {
    /// Words to look for.
    query: Option<String>,
    /// Search the Hugging Face Hub instead of the registry.
    #[arg(long)]
    hub: bool,
    /// Model type: llm, vlm, embedding, diffusion.
    #[arg(long = "type")]
    model_type: Option<String>,
    /// Largest file size, e.g. 2GB.
    #[arg(long)]
    max_size: Option<String>,
    /// Most results.
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("MLXENGINE_LOG"))
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run(args) => run_text(args),
        Command::Embed { model, text, json } => embed(&model, text, json),
        Command::Imagine(args) => imagine::imagine(args),
        Command::Launch(args) => launch::launch(args),
        Command::Convert(args) => convert::convert(args),
        Command::Pull {
            model,
            revision,
            variant,
        } => pull(&model, &revision, variant),
        Command::List { json } => list(json),
        Command::Rm { model } => {
            let client = HubClient::from_env()?;
            let freed = client.remove(&RepoId::parse(&model)?)?;
            eprintln!("removed {model} ({})", format_size(freed));
            Ok(())
        }
        Command::Search(args) => search(args),
        Command::Doctor { json } => doctor(json),
        Command::Recommend {
            model_type,
            memory,
            context,
            ranks,
            split,
            json,
        } => {
            let split = (ranks > 1).then(|| RankSplit {
                ranks,
                mode: if split == "pipeline" {
                    SplitKind::Pipeline
                } else {
                    SplitKind::Tensor
                },
            });
            recommend(&model_type, memory, context, split, json)
        }
        Command::Serve(a) => mlxengine_server::run(mlxengine_server::ServerConfig {
            // Under `mlxengine launch`: rank 0 serves, the others follow it.
            split: launch::split()?,
            keep_alive: mlxengine_server::parse_keep_alive(&a.keep_alive).map_err(anyhow::Error::msg)?,
            host: a.host,
            port: a.port,
            models: a.model,
            api_key: a.api_key,
            parallel: a.parallel,
            queue_depth: a.max_queue,
            max_loaded: a.max_loaded,
            cors: a.cors,
            allow_pull: a.allow_pull,
            memory_budget: mlxengine_server::parse_memory_budget(&a.memory_budget).map_err(anyhow::Error::msg)?,
        }),
    }
}

/// Ctrl-C for commands that may download. While a download runs, Ctrl-C
/// stops it at its next read: the partial file is kept and the same command
/// resumes it. At any other time, or pressed a second time, the process ends at
/// once with 130 (128 + SIGINT), as without a handler: no exit-time teardown
/// runs under a model that is still computing.
struct Interrupt {
    downloading: Arc<AtomicBool>,
    /// Set while an interactive answer streams: Ctrl-C then stops it.
    answering: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Interrupt {
    fn install(cancel: Option<engine_hub::CancelFlag>) -> Result<Interrupt> {
        let downloading = Arc::new(AtomicBool::new(false));
        let answering = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (d, a, s) = (downloading.clone(), answering.clone(), stop.clone());
        ctrlc::set_handler(move || match &cancel {
            Some(c) if d.load(Ordering::SeqCst) && !c.is_cancelled() => c.cancel(),
            _ if a.load(Ordering::SeqCst) && !s.swap(true, Ordering::SeqCst) => {}
            // SAFETY: _exit ends the process without running anything else.
            _ => unsafe { libc::_exit(130) },
        })
        .context("installing the Ctrl-C handler")?;
        Ok(Interrupt {
            downloading,
            answering,
            stop,
        })
    }

    /// Wraps a progress callback: downloads are cancellable, loading is not.
    fn track<'a>(&self, mut report: impl FnMut(Progress) + 'a) -> impl FnMut(Progress) + 'a {
        let d = self.downloading.clone();
        move |p: Progress| {
            d.store(matches!(p, Progress::Download { .. }), Ordering::SeqCst);
            report(p)
        }
    }

    /// An answer starts streaming: the first Ctrl-C sets the returned flag
    /// (a second one exits).
    fn answering(&self) -> Arc<AtomicBool> {
        self.stop.store(false, Ordering::SeqCst);
        self.answering.store(true, Ordering::SeqCst);
        self.stop.clone()
    }

    /// Back at the prompt: Ctrl-C exits.
    fn idle(&self) {
        self.answering.store(false, Ordering::SeqCst);
    }
}

/// Ends the process after a download stopped by Ctrl-C, saying how to resume.
fn exit_interrupted(partial: Option<&std::path::Path>, again: &str) -> ! {
    let kept = partial
        .map(|p| format!("; the partial download is kept at {}", p.display()))
        .unwrap_or_default();
    eprintln!("error: interrupted{kept}; run `{again}` to resume");
    // 128 + SIGINT: what shells report for a command stopped by Ctrl-C.
    std::process::exit(130);
}

/// Progress display on stderr (hidden when stderr is not a terminal).
fn progress_reporter() -> (ProgressBar, impl FnMut(Progress)) {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{msg:24} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let b = bar.clone();
    let report = move |p: Progress| match p {
        Progress::Download { file, done, total } => {
            b.set_length(total);
            b.set_position(done);
            b.set_message(file);
        }
        Progress::Load(l) => {
            b.set_style(ProgressStyle::with_template("{msg}").expect("valid template"));
            b.set_message(format!("loading: {} ({:.0}%)", l.stage, l.fraction * 100.0));
        }
    };
    (bar, report)
}

/// `--quantize BITS [--group-size N]`, checked before anything loads.
fn parse_quantize(bits: Option<i32>, group_size: i32) -> Result<Option<engine_mlx::quant::QuantSpec>> {
    let Some(bits) = bits else { return Ok(None) };
    if ![4, 8].contains(&bits) {
        bail!("--quantize {bits} is not supported; use --quantize 4 or --quantize 8");
    }
    let spec = engine_mlx::quant::QuantSpec { group_size, bits };
    Ok(Some(spec.validate().map_err(|e| anyhow::anyhow!("--group-size: {e}"))?))
}

fn parse_dtype(s: &str) -> Result<DtypePolicy> {
    Ok(match s {
        "auto" => DtypePolicy::Auto,
        "native" => DtypePolicy::Native,
        "cpu-kernels" => DtypePolicy::CpuKernels,
        other => match engine_mlx::Dtype::from_name(other) {
            Some(d) if d.is_float() => DtypePolicy::Dense(d),
            _ => bail!("unknown --dtype `{other}`; use auto, native, cpu-kernels, f32, bf16 or f16"),
        },
    })
}

/// A loaded chat model: text-only, or vision-language (which also answers
/// text-only prompts).
enum ChatModel {
    Text(Box<LlmModel>),
    Vision(Box<VlmModel>),
}

impl ChatModel {
    fn generator(&mut self) -> &mut dyn TextGenerator {
        match self {
            ChatModel::Text(m) => m.as_mut(),
            ChatModel::Vision(m) => m.as_mut(),
        }
    }

    fn session(&self, system: Option<&str>) -> Session<'_> {
        match self {
            ChatModel::Text(m) => Session::Text(m.chat(system)),
            ChatModel::Vision(m) => Session::Vision(m.chat(system)),
        }
    }
}

enum Session<'m> {
    Text(mlxengine::ChatSession<'m>),
    Vision(mlxengine::VlmChatSession<'m>),
}

impl Session<'_> {
    fn send<'s>(&'s mut self, message: ChatMessage, params: &GenerateParams) -> Result<ChatTurn<'s>> {
        Ok(match self {
            Session::Text(_) if !message.images.is_empty() => {
                bail!("this model is text-only: it cannot take images (use a vision-language model)")
            }
            Session::Text(s) => s.send(&message.content, params)?,
            Session::Vision(s) => s.send(message, params)?,
        })
    }

    /// The conversation (clear, system prompt, dropping turns).
    fn history(&mut self) -> &mut mlxengine::ChatHistory {
        match self {
            Session::Text(s) => s.history_mut(),
            Session::Vision(s) => s.history_mut(),
        }
    }

    fn overflows(&self, message: &ChatMessage) -> Result<bool> {
        Ok(match self {
            Session::Text(s) => s.overflows(&message.content)?,
            Session::Vision(s) => s.overflows(message)?,
        })
    }
}

/// An `--image` / `/image` argument: a URL (`data:`, `file://`, or a remote
/// one, which the model refuses clearly) or a file that must exist.
fn image_arg(arg: &str) -> Result<ImageSource> {
    if ["data:", "file://", "http://", "https://"]
        .iter()
        .any(|p| arg.starts_with(p))
    {
        return Ok(ImageSource::Url(arg.to_string()));
    }
    let path = std::path::PathBuf::from(arg);
    if !path.is_file() {
        bail!("--image {arg}: no such file");
    }
    Ok(ImageSource::Path(path))
}

fn run_text(args: RunArgs) -> Result<()> {
    let mut engine = InferenceEngine::new()?;
    engine.variant = args.variant.clone();
    if args.context == Some(0) {
        bail!("--context must be at least 1 token");
    }
    let split = launch::split()?;
    engine.split = split.as_ref().map(mlxengine::rank_split);
    if split.is_some() {
        // Every rank must run exactly the same calls: no terminal input, no images.
        if args.prompt.is_none() {
            bail!("under `mlxengine launch`, give the prompt on the command line (interactive chat is not split)");
        }
        if !args.image.is_empty() {
            bail!("under `mlxengine launch`, vision models cannot be split yet: run without --image or without launch");
        }
    }
    let options = LoadOptions {
        dtype: parse_dtype(&args.dtype)?,
        context_length: args.context,
        quantize: parse_quantize(args.quantize, args.group_size)?,
        adapters: args.adapter.clone(),
        split,
    };
    // Images are checked before any download or load: a bad path fails at once.
    let images: Vec<ImageSource> = args.image.iter().map(|i| image_arg(i)).collect::<Result<_>>()?;
    let interrupt = Interrupt::install(engine.cancel_flag())?;
    let (bar, report) = progress_reporter();
    let mut report = interrupt.track(report);
    let kind = if args.image.is_empty() {
        ModelType::Llm
    } else {
        ModelType::Vlm
    };
    let loaded = engine.resolve(&args.model, kind, &mut report).and_then(|path| {
        let mut on_load = |p| report(Progress::Load(p));
        if mlxengine::runs_with_images(&path) {
            Ok(ChatModel::Vision(Box::new(VlmModel::load(
                &path,
                &options,
                &mut on_load,
            )?)))
        } else if !args.image.is_empty() {
            let why = match mlxengine::multimodal_architecture(&path) {
                Some(arch) => format!(
                    "{} is a `{arch}` vision-language model whose vision tower MLXEngine does not run yet: it runs \
                     text-only here; leave out --image",
                    args.model
                ),
                None => format!("--image needs a vision-language model, and {} is text-only", args.model),
            };
            Err(mlxengine::Error::Engine(mlxengine::EngineError::InvalidParameter(why)))
        } else {
            Ok(ChatModel::Text(Box::new(LlmModel::load(
                &path,
                &options,
                &mut on_load,
            )?)))
        }
    });
    let mut model = match loaded {
        Err(mlxengine::Error::Hub(engine_hub::HubError::Cancelled { partial })) => {
            bar.finish_and_clear();
            exit_interrupted(partial.as_deref(), "the same command again")
        }
        other => other?,
    };
    bar.finish_and_clear();
    let defaults = model.generator().configuration().default_params.clone();
    let params = GenerateParams {
        max_tokens: args.max_tokens,
        temperature: args.temperature.unwrap_or(defaults.temperature),
        top_p: args.top_p.unwrap_or(defaults.top_p),
        top_k: args.top_k.unwrap_or(defaults.top_k),
        min_p: args.min_p.unwrap_or(defaults.min_p),
        repetition_penalty: args.repetition_penalty.unwrap_or(defaults.repetition_penalty),
        // Ranks of one launch sample alike: the same seed on each.
        seed: args.seed.or_else(launch::shared_seed),
        stop: args.stop.clone(),
        ..defaults
    };
    params.validate()?;
    let mut out = std::io::stdout().lock();
    match &args.prompt {
        Some(prompt) => {
            let mut messages = Vec::new();
            if let Some(s) = &args.system {
                messages.push(ChatMessage::new("system", s));
            }
            let mut user = ChatMessage::new("user", prompt);
            user.images = images;
            messages.push(user);
            let prompt = Prompt::Chat(messages);
            if args.json {
                let g = model.generator().generate(&prompt, &params)?;
                let report = serde_json::json!({
                    "text": g.text,
                    "token_ids": g.tokens,
                    "finish_reason": g.finish_reason,
                    "prompt_tokens": g.stats.prompt_tokens,
                    "completion_tokens": g.stats.generated_tokens,
                    "ttft_ms": g.stats.ttft_ms,
                    "decode_tok_s": g.stats.decode_tok_per_s,
                });
                writeln!(out, "{report}")?;
                if args.verbose {
                    print_stats(&g.stats);
                }
                return Ok(());
            }
            let stats = print_stream(model.generator().stream(&prompt, &params)?, &mut out, None)?.1;
            if args.verbose {
                print_stats(&stats);
            }
        }
        None => {
            let mut session = model.session(args.system.as_deref());
            chat_loop(&mut session, images, &params, &interrupt, args.verbose, &mut out)?;
        }
    }
    Ok(())
}

/// The interactive chat: `/image PATH` attaches an image to the next
/// message, `/clear` forgets the conversation, `/system TEXT` replaces the
/// system prompt, `/bye` (or Ctrl-D) ends; text between `"""` lines is one
/// message. Ctrl-C stops the answer being written. When the chat outgrows the
/// context, the oldest turns are dropped (the system prompt stays).
fn chat_loop(
    session: &mut Session<'_>,
    mut images: Vec<ImageSource>,
    params: &GenerateParams,
    interrupt: &Interrupt,
    verbose: bool,
    out: &mut impl Write,
) -> Result<()> {
    let stdin = std::io::stdin();
    let interactive = stdin.is_terminal();
    let mut lines = stdin.lock().lines();
    loop {
        if interactive {
            eprint!(">>> ");
        }
        let Some(line) = lines.next().transpose()? else { break };
        let mut text = line.trim().to_string();
        if text.starts_with("\"\"\"") {
            // Multi-line: everything up to a line ending with """.
            let mut body = text.trim_start_matches("\"\"\"").to_string();
            while !body.trim_end().ends_with("\"\"\"") {
                let Some(next) = lines.next().transpose()? else { break };
                body.push('\n');
                body.push_str(&next);
            }
            text = body.trim_end().trim_end_matches("\"\"\"").trim().to_string();
        } else if text.is_empty() {
            continue;
        } else if text == "/bye" || text == "/exit" {
            break;
        } else if text == "/clear" {
            session.history().clear();
            eprintln!("(cleared the conversation)");
            continue;
        } else if let Some(s) = text.strip_prefix("/system") {
            let s = s.trim();
            session.history().set_system((!s.is_empty()).then_some(s));
            eprintln!("(system prompt {})", if s.is_empty() { "removed" } else { "set" });
            continue;
        } else if let Some(p) = text.strip_prefix("/image") {
            match image_arg(p.trim()) {
                Ok(img) => {
                    eprintln!("(attached {} to the next message)", p.trim());
                    images.push(img);
                }
                Err(e) => eprintln!("error: {e:#}"),
            }
            continue;
        } else if text.starts_with('/') {
            eprintln!("unknown command {text}; commands: /image PATH, /clear, /system TEXT, /bye");
            continue;
        }
        let mut message = ChatMessage::new("user", text);
        message.images = std::mem::take(&mut images);
        let mut dropped = false;
        while session.overflows(&message).unwrap_or(false) && session.history().drop_oldest_turn() {
            dropped = true;
        }
        if dropped {
            eprintln!("(the chat outgrew the context: dropped its oldest turns)");
        }
        let turn = session.send(message, params);
        let turn = match turn {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {e:#}");
                continue;
            }
        };
        let stop = interrupt.answering();
        match print_stream(turn, out, Some(&stop)) {
            Ok((_, stats)) if verbose => print_stats(&stats),
            Ok(_) => {}
            Err(e) if stop.load(Ordering::SeqCst) => {
                let _ = e;
                writeln!(out)?;
                eprintln!("(stopped)");
            }
            Err(e) => eprintln!("error: {e:#}"),
        }
        interrupt.idle();
    }
    Ok(())
}

fn print_stream(
    events: impl Iterator<Item = engine_core::Result<StreamEvent>>,
    out: &mut impl Write,
    stop: Option<&AtomicBool>,
) -> Result<(String, GenerationStats)> {
    let mut text = String::new();
    for ev in events {
        if stop.is_some_and(|s| s.load(Ordering::SeqCst)) {
            bail!("stopped");
        }
        match ev? {
            StreamEvent::Text { text: t, .. } => {
                out.write_all(t.as_bytes())?;
                out.flush()?;
                text.push_str(&t);
            }
            StreamEvent::Done { stats, .. } => {
                writeln!(out)?;
                out.flush()?;
                return Ok((text, stats));
            }
        }
    }
    bail!("generation ended without finishing")
}

fn print_stats(s: &GenerationStats) {
    eprintln!(
        "prompt: {} tokens ({} processed, {:.1} tok/s) | ttft {:.0} ms | generated {} tokens at {:.1} tok/s | peak memory {}",
        s.prompt_tokens,
        s.prompt_tokens_processed,
        s.prompt_tok_per_s,
        s.ttft_ms,
        s.generated_tokens,
        s.decode_tok_per_s,
        format_size(s.peak_memory_bytes as u64)
    );
}

fn embed(model: &str, mut texts: Vec<String>, json: bool) -> Result<()> {
    // Input first: a missing text fails at once, without loading the model.
    if texts.is_empty() {
        texts = std::io::stdin()
            .lock()
            .lines()
            .collect::<std::io::Result<Vec<_>>>()
            .context("reading texts from stdin")?;
        texts.retain(|t| !t.trim().is_empty());
        if texts.is_empty() {
            bail!("no input text: give TEXT arguments or pipe one text per line into stdin");
        }
    }
    let engine = InferenceEngine::new()?;
    let interrupt = Interrupt::install(engine.cancel_flag())?;
    let (bar, report) = progress_reporter();
    let mut report = interrupt.track(report);
    let embedder = match engine.load_embedder(model, &mut report) {
        Err(mlxengine::Error::Hub(engine_hub::HubError::Cancelled { partial })) => {
            bar.finish_and_clear();
            exit_interrupted(partial.as_deref(), "the same command again")
        }
        other => other.with_context(|| {
            format!("cannot load `{model}` as an embedding model (a sentence-transformers encoder)")
        })?,
    };
    bar.finish_and_clear();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let vectors = embedder.embed(&refs)?;
    let mut out = std::io::stdout().lock();
    if json {
        let v = serde_json::json!({"model": model, "dimensions": embedder.dimensions(), "embeddings": vectors});
        writeln!(out, "{v}")?;
    } else {
        for v in vectors {
            let line: Vec<String> = v.iter().map(|x| format!("{x:.6}")).collect();
            writeln!(out, "{}", line.join(" "))?;
        }
    }
    Ok(())
}

fn pull(model: &str, revision: &str, variant: Option<String>) -> Result<()> {
    // The command that picks up where this one stops, for the interrupt message.
    let mut again = format!("mlxengine pull {model}");
    if revision != "main" {
        again += &format!(" --revision {revision}");
    }
    if let Some(v) = &variant {
        again += &format!(" --variant {v}");
    }
    let client = HubClient::from_env()?;
    let interrupt = Interrupt::install(Some(client.cancel_flag()))?;
    // All of `pull` is a download (listing included).
    interrupt.downloading.store(true, Ordering::SeqCst);
    let (bar, mut report) = progress_reporter();
    let mut on_progress = |p: &engine_hub::Progress| {
        report(Progress::Download {
            file: p.file.clone(),
            done: p.total_bytes,
            total: p.total_size,
        })
    };
    let result: std::result::Result<_, engine_hub::GgufError> = match Registry::builtin().get(model) {
        Some(entry) => {
            let device = DeviceReport::detect();
            let sel = engine_device::select_variant(
                &entry.id,
                variant.as_deref(),
                &device,
                &MemoryBudget::default(),
                &Purpose::default(),
            )?;
            eprintln!("{}: variant {} — {}", sel.id, sel.variant, sel.reason);
            let repo = RepoId::parse(&sel.repo)?;
            match sel.file {
                Some(f) => client.get_file(&repo, &sel.revision, &f, &mut on_progress),
                None => client
                    .pull(
                        &repo,
                        &sel.revision,
                        &FileFilter::for_model_type(entry.model_type),
                        &mut on_progress,
                    )
                    .map(|s| s.path),
            }
            .map_err(Into::into)
        }
        // A repo, or an Ollama-style `org/repo:TAG` naming one GGUF file of it.
        None => client.pull_ref(
            &engine_hub::ModelRef::parse(model)?,
            revision,
            &FileFilter::for_model_type(ModelType::Llm),
            &mut on_progress,
        ),
    };
    // Cleared on failure too, so the error is not printed behind a stale bar.
    bar.finish_and_clear();
    match result {
        Ok(path) => {
            println!("{}", path.display());
            Ok(())
        }
        Err(engine_hub::GgufError::Hub(engine_hub::HubError::Cancelled { partial })) => {
            exit_interrupted(partial.as_deref(), &again)
        }
        Err(e) => Err(e.into()),
    }
}

fn list(json: bool) -> Result<()> {
    let models = HubClient::from_env()?.list_local()?;
    if json {
        println!("{}", serde_json::to_string(&models)?);
        return Ok(());
    }
    if models.is_empty() {
        eprintln!("no models in the cache; `mlxengine pull ID` fetches one");
    }
    for m in models {
        let partial = if m.incomplete_bytes > 0 {
            // An interrupted pull: say so, and how to finish it.
            format!(
                "  ({} partial; `mlxengine pull {}` resumes)",
                format_size(m.incomplete_bytes),
                m.repo
            )
        } else {
            String::new()
        };
        println!("{:50} {:>10}{partial}", m.repo.to_string(), format_size(m.size_bytes));
    }
    Ok(())
}

fn search(args: SearchArgs) -> Result<()> {
    let model_type = args.model_type.as_deref().map(str::parse::<ModelType>).transpose()?;
    if args.hub {
        let q = engine_hub::SearchQuery {
            text: args.query.clone(),
            pipeline_tag: model_type.map(|t| {
                match t {
                    ModelType::Llm => "text-generation",
                    ModelType::Vlm => "image-text-to-text",
                    ModelType::Embedding => "feature-extraction",
                    ModelType::Diffusion => "text-to-image",
                }
                .to_string()
            }),
            limit: Some(args.limit),
            ..Default::default()
        };
        let hits = HubClient::from_env()?.search(&q)?;
        if args.json {
            println!("{}", serde_json::to_string(&hits)?);
        } else {
            for h in hits {
                println!("{:60} {:>10} downloads {:>6} likes", h.id, h.downloads, h.likes);
            }
        }
        return Ok(());
    }
    let max_size = args.max_size.as_deref().map(engine_device::parse_size).transpose()?;
    let q = Query {
        text: args.query,
        model_type,
        max_size_bytes: max_size,
        ..Default::default()
    };
    let mut hits = Registry::builtin().search(&q);
    hits.truncate(args.limit);
    if args.json {
        println!("{}", serde_json::to_string(&hits)?);
    } else {
        if hits.is_empty() {
            eprintln!("no registry entry matches; try `--hub` to search Hugging Face");
        }
        for h in &hits {
            let v = serde_json::to_value(h)?;
            println!(
                "{:36} {:10} {}",
                v["id"].as_str().unwrap_or(""),
                v["type"].as_str().unwrap_or(""),
                v["variants"].as_array().map(|a| a.len()).unwrap_or(0).to_string() + " variants"
            );
        }
    }
    Ok(())
}

fn doctor(json: bool) -> Result<()> {
    let report = DeviceReport::detect();
    if json {
        println!("{}", report.doctor_json());
        return Ok(());
    }
    let v = report.to_json();
    for key in [
        "backend",
        "device_name",
        "memory_total_bytes",
        "memory_available_bytes",
        "blas",
        "mlx_version",
        "cpu_cores",
    ] {
        let val = &v[key];
        let shown = match (key.ends_with("_bytes"), val.as_u64()) {
            (true, Some(b)) => format_size(b),
            _ => val.to_string().trim_matches('"').to_string(),
        };
        println!("{key:24} {shown}");
    }
    let problems = report.problems();
    if problems.is_empty() {
        println!("no problems found");
    }
    for p in problems {
        println!("{:?}: {} — fix: {}", p.severity, p.message, p.fix);
    }
    Ok(())
}

fn recommend(
    model_type: &str,
    memory: Option<String>,
    context: Option<u64>,
    split: Option<RankSplit>,
    json: bool,
) -> Result<()> {
    let model_type: ModelType = model_type.parse()?;
    // Only what this build can run is recommended (cargo features gate whole modalities).
    if !mlxengine::can_load(model_type) {
        let can: Vec<&str> = mlxengine::loadable_types().into_iter().map(ModelType::as_str).collect();
        bail!(
            "this build cannot run `{model_type}` models (built without the mlxengine crate's `{}` feature), \
             so none are recommended; it runs: {}",
            mlxengine::feature_for(model_type),
            can.join(", ")
        );
    }
    let budget = match memory {
        Some(m) => MemoryBudget::parse(&m)?,
        None => MemoryBudget::default(),
    };
    let device = DeviceReport::detect();
    let report = engine_device::recommend(
        &device,
        model_type,
        &Purpose {
            context_len: context,
            required: vec![],
            split,
        },
        &budget,
    );
    if json {
        println!("{}", serde_json::to_string(&report)?);
    }
    // Nothing fitting fails in both modes (with --json after printing the report and its
    // note), so scripts notice from the exit status alone.
    if report.recommendations.is_empty() {
        bail!(
            "{}",
            report.note.clone().unwrap_or_else(|| "nothing fits this budget".into())
        );
    }
    if json {
        return Ok(());
    }
    for r in &report.recommendations {
        println!(
            "{:32} {:12} {:>10}  {}",
            r.id,
            r.variant,
            format_size(r.estimated_memory_bytes),
            r.reason
        );
    }
    Ok(())
}
