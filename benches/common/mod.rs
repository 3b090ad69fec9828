//! What the benchmark harnesses share: the machine's description, the scale setting and
//! percentiles.
#![allow(dead_code)] // each bench uses its own part of this module

/// The CPU model, from `/proc/cpuinfo`.
pub(crate) fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string())
}

/// `OMSTREAM_BENCH_SCALE`: a positive factor on message counts and run lengths (1 when unset),
/// or the error that says what is wrong with it.
pub(crate) fn scale_from_env() -> Result<f64, String> {
    match std::env::var("OMSTREAM_BENCH_SCALE") {
        Err(_) => Ok(1.0),
        Ok(s) => match s.trim().parse::<f64>() {
            Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
            _ => Err(format!(
                "OMSTREAM_BENCH_SCALE='{s}' is not a positive number (e.g. 0.05 or 1)"
            )),
        },
    }
}

/// The value below which `q` (0..=1) of the sorted values fall.
pub(crate) fn percentile(sorted: &[u64], q: f64) -> u64 {
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}
