//! Where the binaries under test are: next to the running test or bench executable (cargo puts
//! `target/<profile>/deps/<test>` one level below the binaries), or where an environment
//! variable says (A/B runs of two builds).

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};

/// `captain-bridge` or `captain-sim`; `TESTKIT_BRIDGE_BIN` / `TESTKIT_SIM_BIN` override.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let var = format!(
        "TESTKIT_{}_BIN",
        name.trim_start_matches("captain-").to_uppercase()
    );
    if let Some(path) = std::env::var_os(&var) {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().context("path of the running executable")?;
    let mut dir = exe.parent();
    // The executable's own directory (the bench), then its parent (a test in deps/).
    for _ in 0..2 {
        let Some(d) = dir else { break };
        let candidate = d.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
        dir = d.parent();
    }
    bail!(
        "{name} not built next to {}: run `cargo build --workspace --bins` (scripts/test.sh \
         does), or set {var}",
        exe.parent()
            .map_or_else(|| exe.clone(), Path::to_path_buf)
            .display()
    )
}
