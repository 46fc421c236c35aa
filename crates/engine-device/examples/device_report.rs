//! Prints the doctor report and the LLM recommendations for a budget:
//! `cargo run -p engine-device --example device_report -- [TYPE] [BUDGET]`.

use engine_device::{DeviceReport, MemoryBudget, Purpose, Registry};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let model_type = args.next().unwrap_or_else(|| "llm".into()).parse()?;
    let budget = match args.next() {
        Some(s) => MemoryBudget::parse(&s)?,
        None => MemoryBudget::default(),
    };
    let device = DeviceReport::detect();
    println!("{}", serde_json::to_string_pretty(&device.doctor_json())?);
    let rep = Registry::builtin().recommend(&device, model_type, &Purpose::default(), &budget);
    println!("{}", serde_json::to_string_pretty(&rep)?);
    Ok(())
}
