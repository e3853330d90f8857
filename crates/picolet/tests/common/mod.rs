//! Helpers shared by the tests that run against the real control plane.

use std::path::PathBuf;
use std::process::Command;

use testplane::{ControlPlane, Options};

/// A fresh control plane for one test (killed when dropped).
pub fn plane() -> ControlPlane {
    ControlPlane::start(Options::default()).unwrap_or_else(|e| panic!("control plane: {e}"))
}

/// Runs `picolet enrol` as the plane's admin; returns the credentials directory.
pub fn enrol(plane: &ControlPlane, node: &str) -> PathBuf {
    let dir = plane.dir().join(format!("credentials-{node}"));
    let out = Command::new(env!("CARGO_BIN_EXE_picolet"))
        .args(["enrol", "--node-name", node, "--out"])
        .arg(&dir)
        .arg("--kubeconfig")
        .arg(plane.admin_kubeconfig())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "enrol failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}
