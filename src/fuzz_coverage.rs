//! SanitizerCoverage's inline 8-bit counters, read by `tests/fuzz.rs` to keep the inputs
//! that reach new code. Compiled only under `--cfg metaforge_fuzz`, which `scripts/fuzz.sh`
//! sets together with the instrumentation flags (stable rustc's `-C passes=sancov-module`).
//!
//! Why in the library and not in the fuzz test: every instrumented module calls
//! `__sanitizer_cov_8bit_counters_init` at start-up, so every binary of the package (the CLI
//! too) must link a definition. A leaf: it imports nothing of the crate.

use std::sync::Mutex;

/// (address, length) of each instrumented module's counters.
static REGIONS: Mutex<Vec<(usize, usize)>> = Mutex::new(Vec::new());

/// Called by each instrumented module's constructor with its counters.
#[no_mangle]
pub extern "C" fn __sanitizer_cov_8bit_counters_init(start: *mut u8, stop: *mut u8) {
    if let Ok(mut regions) = REGIONS.lock() {
        regions.push((start as usize, stop as usize - start as usize));
    }
}

/// Called by modules built with a PC table; the counters suffice here.
#[no_mangle]
pub extern "C" fn __sanitizer_cov_pcs_init(_start: *const usize, _stop: *const usize) {}

/// Every module's counters, as (address, length); empty in a build without instrumentation.
pub fn regions() -> Vec<(usize, usize)> {
    REGIONS.lock().map(|r| r.clone()).unwrap_or_default()
}
