//! Shared vocabulary of MLXEngine: model types, capabilities, configuration,
//! generation parameters, errors and the traits each modality implements.

pub mod chat_template;
pub mod detokenize;
pub mod error;
pub mod generation;
pub mod gguf;
pub mod gguf_quant;
pub mod image_gen;
pub mod mock;
pub mod params;
pub mod tokenizer;
pub mod types;

pub use chat_template::{ChatMessage, ChatTemplate, ChatTemplateError, ImageSource, RenderOptions};
pub use detokenize::StreamingDetokenizer;
pub use error::{EngineError, Result};
pub use generation::{FinishReason, Generation, GenerationStats, LoadProgress, Prompt, StreamEvent, TextGenerator};
pub use gguf::{GgufError, GgufMetadata, GgufValue};
pub use image_gen::{ImageF32, ImageGenerator, ImageRequest, Latents, StepProgress};
pub use mock::MockTextGenerator;
pub use params::{GenerateParams, ModelConfiguration, ModelSource, Quantization};
pub use tokenizer::{Tokenizer, TokenizerError};
pub use types::{FeatureFlag, ModelType};
