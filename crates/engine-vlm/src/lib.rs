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

pub mod image;
mod model;
pub mod models;
pub mod preprocess;
mod resample;
pub mod vit;

pub use model::{EncodedPrompt, VlmChatSession, VlmModel};

/// The `model_type` of a multimodal checkpoint folder (its config.json has a
/// `vision_config`), or `None` for any other path.
pub fn multimodal_architecture(dir: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("config.json")).ok()?;
    let cfg: serde_json::Value = serde_json::from_str(&text).ok()?;
    cfg.get("vision_config")?;
    Some(cfg["model_type"].as_str().unwrap_or_default().to_string())
}

/// Whether [`VlmModel`] runs `dir` with images: a multimodal checkpoint of an
/// architecture in [`models::SUPPORTED`] (others run text-only through
/// engine-llm).
pub fn runs_with_images(dir: &std::path::Path) -> bool {
    multimodal_architecture(dir).is_some_and(|a| models::SUPPORTED.contains(&a.as_str()))
}

pub(crate) fn be(e: engine_mlx::Error) -> engine_core::EngineError {
    engine_core::EngineError::Backend(e.to_string())
}

pub(crate) fn image_err(e: impl std::fmt::Display) -> engine_core::EngineError {
    engine_core::EngineError::Image(e.to_string())
}
