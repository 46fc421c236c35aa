//! Vision-language models on MLX: images are decoded and preprocessed as the
//! checkpoint's own processor does ([`image`], [`preprocess`]), run through a
//! vision tower and projector ([`models`]), and their features are scattered
//! into `engine-llm`'s decoder at the image-token positions ([`VlmModel`]).
//!
//! ```no_run
//! use engine_core::{ChatMessage, GenerateParams, ImageSource, Prompt, TextGenerator};
//! use engine_vlm::VlmModel;
//! let mut model = VlmModel::load("llava-1.5-7b-hf".as_ref(), &Default::default(), &mut |_| {})?;
//! let msg = ChatMessage::new("user", "What is in the image?").with_image(ImageSource::Path("cat.png".into()));
//! let answer = model.generate(&Prompt::Chat(vec![msg]), &GenerateParams::greedy(64))?;
//! println!("{}", answer.text);
//! # Ok::<(), engine_core::EngineError>(())
//! ```
#![warn(missing_docs)]

pub mod clip;
pub mod image;
mod model;
pub mod models;
pub mod preprocess;
mod resample;

pub use model::{load_image, EncodedPrompt, VlmChatSession, VlmModel};

pub(crate) fn be(e: engine_mlx::Error) -> engine_core::EngineError {
    engine_core::EngineError::Backend(e.to_string())
}

pub(crate) fn image_err(e: impl std::fmt::Display) -> engine_core::EngineError {
    engine_core::EngineError::Image(e.to_string())
}
