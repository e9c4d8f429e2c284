//! Where the pipeline's programs are. The suite runs the real binaries, not their
//! libraries, so a fault is a real signal to a real process, and a restart reads its
//! configuration and its disk state the way it would in the plant.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The path of `name` (a program of the pipeline, or `iotctl`: each is the only binary
/// of a package of the same name), built if it is missing. `E2E_BIN_DIR` names the directory;
/// otherwise it is the cargo profile directory of the running executable (tests run from
/// `target/<profile>/deps/`, the `faults` command from `target/<profile>/`), so the
/// suite runs binaries of the profile it was built with.
pub fn binary(name: &str) -> Result<PathBuf> {
    let dir = match std::env::var_os("E2E_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => profile_dir()?,
    };
    let path = dir.join(name);
    if !path.exists() {
        build(name, &dir)?;
    }
    if !path.exists() {
        bail!("{} does not exist after building it", path.display());
    }
    Ok(path)
}

fn profile_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the running executable")?;
    let mut dir = exe.parent().context("the executable has no directory")?;
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().context("deps/ has no parent")?;
    }
    Ok(dir.to_path_buf())
}

fn build(name: &str, dir: &Path) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut command = Command::new(cargo);
    command.args(["build", "--locked", "-p", name, "--bin", name]);
    match dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => {}
        Some("release") => {
            command.arg("--release");
        }
        _ => bail!(
            "{name} is not in {} and that is not a cargo profile directory; \
             build it and set E2E_BIN_DIR to its directory",
            dir.display()
        ),
    }
    let status = command
        .status()
        .with_context(|| format!("running cargo to build {name}"))?;
    if !status.success() {
        bail!("building {name} failed ({status})");
    }
    Ok(())
}
