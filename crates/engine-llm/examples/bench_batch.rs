//! Continuous-batching throughput without HTTP: `bench_batch MODEL
//! --prompt-ids FILE [--tokens N] [--streams B]` submits B prompts (the
//! JSON file holds a list of id lists, used round-robin) at once to one
//! [`engine_llm::Scheduler`] and prints `{"tok_s","generated","seconds",
//! "step_ms"}`: aggregate generated tokens per second over the whole run,
//! prefill included, and the median decode step with all B running.
use engine_core::{GenerateParams, StreamEvent};
use engine_llm::{BatchOptions, LlmModel, LoadOptions};
use std::path::Path;
use std::time::Instant;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let model_path = Path::new(args.get(1).ok_or("usage: bench_batch MODEL --prompt-ids FILE")?);
    let model = LlmModel::load(model_path, &LoadOptions::default(), &mut |_| {})?;
    let prompts: Vec<Vec<u32>> = serde_json::from_str(&std::fs::read_to_string(
        arg(&args, "--prompt-ids").ok_or("--prompt-ids")?,
    )?)?;
    let n: usize = arg(&args, "--tokens").map(|s| s.parse()).transpose()?.unwrap_or(128);
    let b: usize = arg(&args, "--streams").map(|s| s.parse()).transpose()?.unwrap_or(8);
    let run = |b: usize, n: usize| -> Result<(usize, f64, f64), Box<dyn std::error::Error>> {
        let mut s = model.scheduler(BatchOptions {
            max_batch: b,
            ..Default::default()
        });
        for i in 0..b {
            s.submit(prompts[i % prompts.len()].clone(), &GenerateParams::greedy(n))?;
        }
        let start = Instant::now();
        let (mut generated, mut full_steps) = (0, Vec::new());
        while !s.is_idle() {
            let t = Instant::now();
            let full = s.running() == b;
            for e in s.step()? {
                if matches!(e.event, StreamEvent::Text { .. }) {
                    generated += 1;
                }
            }
            if full {
                full_steps.push(t.elapsed().as_secs_f64());
            }
        }
        full_steps.sort_by(f64::total_cmp);
        let median = full_steps.get(full_steps.len() / 2).copied().unwrap_or(f64::NAN);
        Ok((generated, start.elapsed().as_secs_f64(), median))
    };
    run(b.min(2), 8)?; // warm-up
    let (generated, secs, step) = run(b, n)?;
    println!(
        "{}",
        serde_json::json!({
            "tok_s": generated as f64 / secs,
            "generated": generated,
            "seconds": secs,
            "step_ms": step * 1e3,
        })
    );
    Ok(())
}
