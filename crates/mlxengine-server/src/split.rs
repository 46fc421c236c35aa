//! Serving one text model split across the ranks of `mlxengine launch`.
//!
//! Rank 0 serves HTTP and drives engine-llm's continuous-batching
//! [`Scheduler`] as an unsplit server does ([`crate::worker`]); every other
//! rank ([`follow`]) has no HTTP at all and runs the same scheduler calls in
//! the same order. Before each call rank 0 broadcasts it over the model's
//! own MLX group: a fixed frame (what, a sequence id, a payload length) and,
//! for a submit, the prompt ids and parameters as JSON, each as an int32
//! array summed with zeros from the other ranks. Rank 0 fixes the seed of a
//! request that has none, so every rank samples alike.
//!
//! Why the copies stay in step: with the same calls the scheduler is
//! deterministic (ids count submits; admission, padding and the prefix
//! cache's hits and evictions depend only on token ids, parameters and
//! array sizes), and under both splits every rank ends a step with the same
//! logits (all_sum / all_gather), so the same tokens. The one size that can
//! differ is a prefix-cache entry's bytes under a pipeline split whose ranks
//! hold different numbers of layers; there the prefix cache is off
//! ([`batch_options`]).
//!
//! A shutdown frame, sent when rank 0's scheduler goes away, ends the
//! followers; if rank 0 dies instead, the launcher stops them.

use engine_core::{EngineError, GenerateParams, Result};
use engine_llm::{BatchOptions, LlmModel, Scheduler, SeqEvent, SeqId, Split, SplitMode};
use engine_mlx::distributed::Group;
use engine_mlx::Array;

/// One scheduler call, as rank 0 broadcasts it.
#[derive(Debug, Clone, PartialEq)]
enum Call {
    Submit { prompt: Vec<u32>, params: GenerateParams },
    Cancel(SeqId),
    Step,
    Shutdown,
}

/// Ints in a frame: what, the id's low and high halves, payload bytes.
const FRAME: usize = 4;

fn backend(e: engine_mlx::Error) -> EngineError {
    EngineError::Backend(format!("broadcasting a scheduler call across ranks: {e}"))
}

/// The element-wise sum of `data` over the group (followers give zeros).
fn sum_over(group: &Group, data: &[i32]) -> Result<Vec<i32>> {
    let a = Array::from_slice(data, &[data.len()]).map_err(backend)?;
    group.all_sum(&a).and_then(|s| s.to_vec::<i32>()).map_err(backend)
}

/// Sends `call` from rank 0 to every other rank.
fn broadcast(group: &Group, call: &Call) -> Result<()> {
    let (tag, id, payload) = match call {
        Call::Submit { prompt, params } => {
            let json = serde_json::json!({ "prompt": prompt, "params": params });
            (1, 0, json.to_string().into_bytes())
        }
        Call::Cancel(id) => (2, *id, Vec::new()),
        Call::Step => (3, 0, Vec::new()),
        Call::Shutdown => (4, 0, Vec::new()),
    };
    let frame = [tag, id as u32 as i32, (id >> 32) as u32 as i32, payload.len() as i32];
    sum_over(group, &frame)?;
    if !payload.is_empty() {
        sum_over(group, &pack(&payload))?;
    }
    Ok(())
}

/// Takes the next call rank 0 broadcasts.
fn receive(group: &Group) -> Result<Call> {
    let frame = sum_over(group, &[0; FRAME])?;
    let id = frame[1] as u32 as u64 | (frame[2] as u32 as u64) << 32;
    let bad = |what: &str| EngineError::Backend(format!("rank 0 sent a malformed scheduler call: {what}"));
    Ok(match frame[0] {
        1 => {
            let len = usize::try_from(frame[3]).map_err(|_| bad("negative payload length"))?;
            let bytes = unpack(&sum_over(group, &vec![0; len.div_ceil(4)])?, len);
            let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| bad(&e.to_string()))?;
            Call::Submit {
                prompt: serde_json::from_value(v["prompt"].clone()).map_err(|e| bad(&e.to_string()))?,
                params: serde_json::from_value(v["params"].clone()).map_err(|e| bad(&e.to_string()))?,
            }
        }
        2 => Call::Cancel(id),
        3 => Call::Step,
        4 => Call::Shutdown,
        t => return Err(bad(&format!("unknown call {t}"))),
    })
}

/// Bytes as little-endian int32s (the last one zero-padded).
fn pack(bytes: &[u8]) -> Vec<i32> {
    bytes
        .chunks(4)
        .map(|c| {
            let mut w = [0u8; 4];
            w[..c.len()].copy_from_slice(c);
            i32::from_le_bytes(w)
        })
        .collect()
}

fn unpack(words: &[i32], len: usize) -> Vec<u8> {
    let mut bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    bytes.truncate(len);
    bytes
}

/// The batching options every rank of a split model uses: the server's, with
/// the prefix cache off when a pipeline split gives the ranks different
/// numbers of layers (its entries' sizes, and so its evictions, would differ).
pub(crate) fn batch_options(max_batch: usize, model: &LlmModel, split: Option<&Split>) -> BatchOptions {
    let mut options = BatchOptions {
        max_batch,
        ..Default::default()
    };
    if let Some(s) = split {
        let layers = model.transformer().config().num_layers;
        if s.mode == SplitMode::Pipeline && !layers.is_multiple_of(s.group.size()) {
            tracing::info!(
                layers,
                ranks = s.group.size(),
                "prefix cache off: the ranks hold different numbers of layers"
            );
            options.prefix_cache_bytes = 0;
        }
    }
    options
}

/// Rank 0's scheduler: each call is broadcast to the other ranks before it
/// runs here. Without a group it is the plain scheduler. Reads (`is_idle`,
/// `cache_bytes`, ...) go to the scheduler through `Deref`.
pub(crate) struct Mirrored<'m> {
    sched: Scheduler<'m>,
    group: Option<&'m Group>,
}

impl<'m> Mirrored<'m> {
    /// `sched`, mirrored to the other ranks of `group` when there is one.
    pub(crate) fn new(sched: Scheduler<'m>, group: Option<&'m Group>) -> Self {
        Mirrored { sched, group }
    }

    /// [`Scheduler::submit`] on every rank; a request without a seed gets
    /// one here, so all ranks sample alike.
    pub(crate) fn submit(&mut self, prompt: Vec<u32>, params: &GenerateParams) -> Result<SeqId> {
        let Some(group) = self.group else {
            return self.sched.submit(prompt, params);
        };
        let mut params = params.clone();
        params.seed.get_or_insert_with(fresh_seed);
        let call = Call::Submit { prompt, params };
        broadcast(group, &call)?;
        let Call::Submit { prompt, params } = call else {
            unreachable!()
        };
        self.sched.submit(prompt, &params)
    }

    /// [`Scheduler::cancel`] on every rank.
    pub(crate) fn cancel(&mut self, id: SeqId) {
        if let Some(group) = self.group {
            if let Err(e) = broadcast(group, &Call::Cancel(id)) {
                tracing::error!("{e}");
            }
        }
        self.sched.cancel(id);
    }

    /// [`Scheduler::step`] on every rank.
    pub(crate) fn step(&mut self) -> Result<Vec<SeqEvent>> {
        if let Some(group) = self.group {
            broadcast(group, &Call::Step)?;
        }
        self.sched.step()
    }
}

impl<'m> std::ops::Deref for Mirrored<'m> {
    type Target = Scheduler<'m>;
    fn deref(&self) -> &Scheduler<'m> {
        &self.sched
    }
}

impl Drop for Mirrored<'_> {
    /// The model is going away: the followers stop.
    fn drop(&mut self) {
        if let Some(group) = self.group {
            let _ = broadcast(group, &Call::Shutdown);
        }
    }
}

fn fresh_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// A follower rank (not rank 0) of a split `serve`: loads its share of the
/// one `--model` and runs the scheduler calls rank 0 broadcasts until it
/// sends shutdown. No HTTP. Refuses what rank 0 refuses, with the same
/// message, so the launcher reports one clear error.
pub fn follow(config: &crate::ServerConfig) -> anyhow::Result<()> {
    let split = config
        .split
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("follow needs a split (run under `mlxengine launch`)"))?;
    let name = only_model(&config.models)?;
    let path = crate::resolve::Resolver::from_env(config.allow_pull)
        .for_split(Some(split))
        .resolve_preload(name)
        .map_err(|e| anyhow::anyhow!("--model {name}: {e}"))?;
    check_kind(name, crate::resolve::kind_of(&path))?;
    let options = engine_llm::LoadOptions {
        split: Some(split.clone()),
        ..Default::default()
    };
    let model =
        LlmModel::load(&path, &options, &mut |_| {}).map_err(|e| anyhow::anyhow!("cannot load model `{name}`: {e}"))?;
    let mut sched = model.scheduler(batch_options(config.parallel.max(1), &model, Some(split)));
    tracing::info!(rank = split.group.rank(), model = %name, "following rank 0");
    loop {
        match receive(&split.group)? {
            Call::Submit { prompt, params } => {
                // Refused alike on rank 0, which answers the client.
                let _ = sched.submit(prompt, &params);
            }
            Call::Cancel(id) => sched.cancel(id),
            Call::Step => {
                if let Err(e) = sched.step() {
                    // Rank 0's step failed alike and its clients got the error.
                    tracing::error!("batch step failed: {e}");
                }
            }
            Call::Shutdown => return Ok(()),
        }
    }
}

/// The one `--model` a split server serves.
pub(crate) fn only_model(models: &[String]) -> anyhow::Result<&str> {
    match models {
        [one] => Ok(one),
        _ => anyhow::bail!(
            "under `mlxengine launch`, `serve` serves exactly one model split across the ranks: give one --model (got {})",
            models.len()
        ),
    }
}

/// Only text models are split.
pub(crate) fn check_kind(name: &str, kind: crate::resolve::ModelKind) -> anyhow::Result<()> {
    use crate::resolve::ModelKind;
    let what = match kind {
        ModelKind::Text => return Ok(()),
        ModelKind::Vision => "a vision-language model",
        ModelKind::Embedding => "an embedding model",
        ModelKind::Image => "an image (diffusion) model",
    };
    anyhow::bail!(
        "--model {name} is {what}; only text models can be served split across ranks: serve it without `mlxengine launch`"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_pack_into_ints_and_back() {
        for n in 0..9 {
            let bytes: Vec<u8> = (0..n).map(|i| 250u8.wrapping_add(i)).collect();
            assert_eq!(unpack(&pack(&bytes), bytes.len()), bytes);
        }
    }
}
