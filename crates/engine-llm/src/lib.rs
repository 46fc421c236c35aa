//! Text generation on MLX. One module per architecture under [`models`]
//! (each only what is particular to it) over a shared [`transformer`].
//!
//! ```no_run
//! use engine_core::{GenerateParams, Prompt, TextGenerator, ChatMessage};
//! use engine_llm::{LlmModel, LoadOptions};
//! let mut model = LlmModel::load("SmolLM2-135M-Instruct.Q4_1.gguf".as_ref(), &LoadOptions::default(), &mut |_| {})?;
//! let answer = model.generate(&Prompt::Chat(vec![ChatMessage::new("user", "Hi!")]), &GenerateParams::greedy(32))?;
//! println!("{}", answer.text);
//! # Ok::<(), engine_core::EngineError>(())
//! ```
#![warn(missing_docs)]

pub mod adapter;
pub mod batch;
pub mod cache;
pub mod config;
pub mod export;
pub mod generate;
mod gguf;
mod model;
pub mod models;
pub mod prefix;
pub mod sample;
pub mod transformer;

pub use adapter::{Adapter, LoraLayer};
pub use batch::{BatchOptions, Scheduler, SeqEvent, SeqId};
pub use generate::{CacheState, Generator};
pub use model::{ChatHistory, ChatSession, ChatTurn, DtypePolicy, LlmModel, LoadOptions};
pub use transformer::{Split, SplitMode};
