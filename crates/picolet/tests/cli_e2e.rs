//! The CLI as a new user meets it: the admin kubeconfig found where kubectl finds it, plain
//! logs in files, and credential paths that do not depend on the current directory.
//!
//! The test that needs the control plane is `#[ignore]`d for a plain `cargo test`;
//! `scripts/test.sh` builds the control plane and runs it. The others need only the binary.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

mod common;

use common::{NODE, enrol, free_port, https_get, plane, wait_for, wait_ready};

/// `picolet` with a controlled environment: no KUBECONFIG, HOME at `home`, no XDG_CONFIG_HOME,
/// NO_COLOR or PICOLET_LOG from the caller.
fn picolet(home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_picolet"));
    c.env("HOME", home)
        .env_remove("KUBECONFIG")
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("NO_COLOR")
        .env_remove("PICOLET_LOG")
        .stdin(Stdio::null());
    c
}

/// A `picolet run` writing its log to a file, killed on drop.
struct Run {
    child: Child,
    log: PathBuf,
}

impl Run {
    fn start(mut cmd: Command, log: PathBuf) -> Run {
        let file = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        Run { child, log }
    }

    fn log(&self) -> Vec<u8> {
        std::fs::read(&self.log).unwrap_or_default()
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
#[ignore = "needs the control plane; run by scripts/test.sh"]
fn approve_finds_the_kubeconfig_through_kubeconfig_and_logs_to_a_file_are_plain() {
    let plane = plane();
    let creds = enrol(&plane, NODE);
    let home = plane.dir().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let port = free_port();
    let mut run = picolet(&home);
    run.arg("run")
        .arg("--credentials")
        .arg(&creds)
        .args(["--kubelet-port", &port.to_string()])
        .args(["--node-ip", &common::node_ip()]);
    let agent = Run::start(run, plane.dir().join("cli-agent.log"));
    wait_ready(&plane, NODE);

    // No --kubeconfig: KUBECONFIG, a list whose first file is missing (skipped, as kubectl does).
    let list = format!(
        "{}:{}",
        plane.dir().join("no-such-kubeconfig").display(),
        plane.admin_kubeconfig().display()
    );
    let out = picolet(&home)
        .env("KUBECONFIG", &list)
        .args(["approve", "--node-name", NODE, "--wait", "60"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("approved picolet-pico-node-1-serving-"),
        "{stdout}"
    );
    wait_for("serving.crt", Duration::from_secs(30), || {
        creds.join("serving.crt").exists()
    });
    // The kubelet port now serves the approved certificate.
    let ca = std::fs::read_to_string(plane.dir().join("ca.crt")).unwrap();
    let healthz = || https_get(port, &ca, NODE, None, "/healthz").is_ok();
    wait_for(
        "/healthz over the approved certificate",
        Duration::from_secs(10),
        healthz,
    );

    // The log went to a file: plain text, no ANSI escapes.
    let log = agent.log();
    let text = String::from_utf8_lossy(&log);
    assert!(text.contains("INFO"), "{text}");
    assert!(
        text.contains(&format!("credentials: {}", creds.display())),
        "{text}"
    );
    assert!(
        !log.contains(&0x1b),
        "ANSI escapes in the log file:\n{text}"
    );
}

#[test]
fn without_a_kubeconfig_the_error_says_where_it_looked() {
    let home = tempfile::tempdir().unwrap();
    for cmd in ["approve", "enrol", "token"] {
        let out = picolet(home.path()).arg(cmd).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{cmd}: {err}");
        let expect = home.path().join(".kube/config");
        assert!(
            err.contains(&format!("looked for {}", expect.display())) && err.contains("KUBECONFIG"),
            "{cmd}: {err}"
        );
    }
    let out = picolet(home.path())
        .env("KUBECONFIG", "/nonexistent/a:/nonexistent/b")
        .arg("approve")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("looked for /nonexistent/a, /nonexistent/b (none exists)"),
        "{err}"
    );
}

/// Waits for `run`'s retry message naming `missing` (an absolute path).
fn says_it_looked_in(run: &Run, missing: &Path) {
    let want = format!("cannot read {}", missing.display());
    wait_for(&want, Duration::from_secs(10), || {
        String::from_utf8_lossy(&run.log()).contains(&want)
    });
}

#[test]
fn run_says_the_absolute_path_it_looked_in() {
    let home = tempfile::tempdir().unwrap();
    let cwd = home.path().join("elsewhere");
    std::fs::create_dir(&cwd).unwrap();
    let port = free_port().to_string();

    // The default: under ~/.config, wherever `run` is started.
    let mut cmd = picolet(home.path());
    cmd.current_dir(&cwd).args(["run", "--kubelet-port", &port]);
    let run = Run::start(cmd, home.path().join("default.log"));
    let dir = home.path().join(".config/picolet/credentials/pico-node-1");
    says_it_looked_in(&run, &dir.join("node.toml"));
    drop(run);

    // XDG_CONFIG_HOME moves it.
    let xdg = home.path().join("xdg");
    let mut cmd = picolet(home.path());
    cmd.current_dir(&cwd)
        .env("XDG_CONFIG_HOME", &xdg)
        .args(["run", "--kubelet-port", &port]);
    let run = Run::start(cmd, home.path().join("xdg.log"));
    says_it_looked_in(&run, &xdg.join("picolet/credentials/pico-node-1/node.toml"));
    drop(run);

    // An explicit relative directory is used as given, and reported absolute.
    let mut cmd = picolet(home.path());
    cmd.current_dir(&cwd)
        .args(["run", "--credentials", "creds/n1", "--kubelet-port", &port]);
    let run = Run::start(cmd, home.path().join("explicit.log"));
    says_it_looked_in(&run, &cwd.join("creds/n1/node.toml"));
}
