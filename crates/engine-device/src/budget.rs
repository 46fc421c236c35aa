//! Memory sizes and the memory budget models are chosen against.

use crate::device::DeviceReport;
use crate::error::{DeviceError, Result};
use serde::{Deserialize, Serialize};

const KIB: f64 = 1024.0;

/// Parses a human memory size: `8GB`, `8G`, `512MiB`, `1.5 GiB`, `2048mb`, `1000000` (bytes).
///
/// Decimal (`KB`, `MB`, `GB`, `TB`) and binary (`KiB`, `MiB`, `GiB`, `TiB`) units are
/// distinguished; a bare `K`/`M`/`G`/`T` is binary, as in `free -h` and most CLIs.
pub fn parse_size(input: &str) -> Result<u64> {
    let err = |why: &str| DeviceError::InvalidSize {
        input: input.to_string(),
        why: why.to_string(),
    };
    let s = input.trim();
    if s.is_empty() {
        return Err(err("it is empty"));
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num: String = num.chars().filter(|&c| c != '_').collect();
    if num.is_empty() {
        return Err(err("it does not start with a number"));
    }
    let value: f64 = num.parse().map_err(|_| err(&format!("`{num}` is not a number")))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        "k" | "kib" => KIB,
        "m" | "mib" => KIB * KIB,
        "g" | "gib" => KIB * KIB * KIB,
        "t" | "tib" => KIB * KIB * KIB * KIB,
        other => return Err(err(&format!("unknown unit `{other}`"))),
    };
    let bytes = value * mult;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(err("it is too large"));
    }
    if bytes < 1.0 {
        return Err(err("it must be at least one byte"));
    }
    Ok(bytes.round() as u64)
}

/// Formats bytes for people: `1.50 GB`, `512.0 MB` (decimal units, as file sizes on the Hub).
pub fn format_size(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e12 {
        format!("{:.2} TB", b / 1e12)
    } else if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{bytes} B")
    }
}

/// How much memory a model may use: a fraction of what the device has free, or a fixed amount.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MemoryBudget {
    /// Share of the device's usable memory (see [`DeviceReport::usable_memory_bytes`]).
    pub fraction: f64,
    /// A fixed budget in bytes that replaces the fraction (`--memory 8GB`).
    pub override_bytes: Option<u64>,
}

impl Default for MemoryBudget {
    /// 80% of what is free: leaves room for the OS, the tokenizer and MLX's buffer cache.
    fn default() -> Self {
        MemoryBudget {
            fraction: 0.8,
            override_bytes: None,
        }
    }
}

impl MemoryBudget {
    /// A budget of `fraction` of the usable memory; errors outside (0, 1].
    pub fn fraction(fraction: f64) -> Result<Self> {
        if !(fraction > 0.0 && fraction <= 1.0) {
            return Err(DeviceError::InvalidFraction(fraction));
        }
        Ok(MemoryBudget {
            fraction,
            override_bytes: None,
        })
    }

    /// A fixed budget of `bytes`.
    pub fn fixed(bytes: u64) -> Self {
        MemoryBudget {
            override_bytes: Some(bytes),
            ..Self::default()
        }
    }

    /// A fixed budget parsed from a size string such as `8GB`.
    pub fn parse(size: &str) -> Result<Self> {
        parse_size(size).map(Self::fixed)
    }

    /// The budget in bytes on `device`.
    pub fn bytes(&self, device: &DeviceReport) -> u64 {
        match self.override_bytes {
            Some(b) => b,
            None => (device.usable_memory_bytes() as f64 * self.fraction) as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_size("8GB").unwrap(), 8_000_000_000);
        assert_eq!(parse_size("8 gb").unwrap(), 8_000_000_000);
        assert_eq!(parse_size("512MiB").unwrap(), 512 * 1024 * 1024);
        assert_eq!(parse_size("1.5G").unwrap(), 1_610_612_736);
        assert_eq!(parse_size("2048").unwrap(), 2048);
        assert_eq!(parse_size("1_000kb").unwrap(), 1_000_000);
        assert_eq!(parse_size("3TiB").unwrap(), 3 * (1u64 << 40));
    }

    #[test]
    fn rejects_bad_sizes_with_the_input_in_the_message() {
        for bad in ["banana", "", "GB", "8XB", "1.2.3GB", "0", "0.1", "1e30TB"] {
            let e = parse_size(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("`{bad}`")), "{e}");
            assert!(e.contains("e.g. 8GB"), "{e}");
            assert!(!e.contains('\n'));
        }
    }

    #[test]
    fn fraction_is_checked() {
        assert!(MemoryBudget::fraction(0.5).is_ok());
        assert!(MemoryBudget::fraction(1.0).is_ok());
        for bad in [0.0, -0.1, 1.01, f64::NAN] {
            assert!(MemoryBudget::fraction(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn formats() {
        assert_eq!(format_size(2_000_000_000), "2.00 GB");
        assert_eq!(format_size(98_362_432), "98.4 MB");
        assert_eq!(format_size(12), "12 B");
    }
}
