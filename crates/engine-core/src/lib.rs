//! Shared vocabulary of MLXEngine: model types, capabilities, configuration,
//! generation parameters, errors and the traits each modality implements.

pub mod chat_template;
pub mod detokenize;
pub mod gguf;
pub mod tokenizer;
pub mod types;

pub use chat_template::{ChatMessage, ChatTemplate, ChatTemplateError, RenderOptions};
pub use detokenize::StreamingDetokenizer;
pub use gguf::{GgufError, GgufMetadata, GgufValue};
pub use tokenizer::{Tokenizer, TokenizerError};
pub use types::{FeatureFlag, ModelType};
