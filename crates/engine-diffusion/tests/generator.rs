//! `ImagePipeline` behind engine-core's backend-neutral `ImageGenerator` trait:
//! the same images as the inherent API, step progress, cancel and bad requests
//! as `EngineError`s (tiny SD 2.x-shaped fixture, see tests/parity.rs).

use engine_core::{EngineError, ImageGenerator, ImageRequest, StepProgress};
use engine_diffusion::ImagePipeline;
use std::path::PathBuf;

fn pipe() -> ImagePipeline {
    ImagePipeline::load(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd2")).unwrap()
}

fn small() -> ImageRequest {
    let mut r = ImageRequest::new("a cat");
    r.width = 64;
    r.height = 64;
    r.steps = 3;
    r.seed = 7;
    r
}

#[test]
fn trait_object_matches_the_pipeline_and_maps_errors() {
    let p = pipe();
    let g: &dyn ImageGenerator = &p;
    let r = small();
    let mut seen = vec![];
    let via_trait = g.generate_with(&r, &mut |s| {
        seen.push(s);
        true
    });
    let via_trait = via_trait.unwrap();
    assert_eq!(via_trait, p.generate(&r).unwrap());
    assert_eq!(
        seen,
        (1..=3).map(|step| StepProgress { step, steps: 3 }).collect::<Vec<_>>()
    );

    let stopped = g.generate_with(&r, &mut |s| s.step < 2);
    assert!(
        matches!(stopped, Err(EngineError::Cancelled { step: 2, steps: 3 })),
        "{stopped:?}"
    );

    for (steps, needle) in [(0, "steps = 0"), (1000, "use fewer steps")] {
        // 1000 `leading` steps with steps_offset 1 would reach timestep 1000 of 0..1000.
        match g.generate(&ImageRequest { steps, ..r.clone() }) {
            Err(EngineError::InvalidParameter(m)) => assert!(m.contains(needle), "{m}"),
            other => panic!("steps = {steps}: expected InvalidParameter, got {other:?}"),
        }
    }
}
