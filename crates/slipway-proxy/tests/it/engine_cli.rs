//! The Docker CLI for tests, and the engine's swarm mode held for one test. Shared by
//! the proxy's tests and the deployer's (`#[path]`), so every crate's swarm tests take the
//! same lock and none leaves swarm mode under another.

use std::process::Command;

pub fn docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .map_err(|e| format!("docker {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!(
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The one lock every test that uses swarm mode holds meanwhile, in every crate (the
/// proxy's swarm test takes it too): swarm mode is the engine's, one at a time.
pub const SWARM_LOCK: &str = "/tmp/slipway-test-swarm.lock";

/// The engine in swarm mode for one test, under [`SWARM_LOCK`]: `docker swarm init` on
/// loopback with the address pool `pool` (each crate its own, so no other test's network
/// is taken) when it was in none, and left again (with the `docker_gwbridge` it
/// made) when the guard drops, failing or not. Ingress ports need IPVS, which this
/// kernel may lack: the swarm target publishes in `host` mode.
pub struct SwarmMode {
    joined: bool,
    gwbridge_existed: bool,
    _lock: std::fs::File,
}

impl SwarmMode {
    pub fn enter(pool: &str) -> Option<SwarmMode> {
        let lock = match std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(SWARM_LOCK)
        {
            Ok(f) => f,
            Err(e) => {
                eprintln!("skipped: opening {SWARM_LOCK}: {e}");
                return None;
            }
        };
        if let Err(e) = rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive) {
            eprintln!("skipped: locking {SWARM_LOCK}: {e}");
            return None;
        }
        let state = docker(&[
            "info",
            "-f",
            "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}",
        ]);
        match state.as_deref() {
            Ok("active true") => {
                return Some(SwarmMode {
                    joined: false,
                    gwbridge_existed: true,
                    _lock: lock,
                });
            }
            Ok("inactive false") => {}
            Ok(other) => {
                eprintln!("skipped: the engine's swarm is `{other}`, not a manager's");
                return None;
            }
            Err(e) => {
                eprintln!("skipped: {e}");
                return None;
            }
        }
        let gwbridge_existed = docker(&["network", "inspect", "docker_gwbridge"]).is_ok();
        match docker(&[
            "swarm",
            "init",
            "--advertise-addr",
            "127.0.0.1",
            "--listen-addr",
            "127.0.0.1:2377",
            "--default-addr-pool",
            pool,
        ]) {
            Ok(_) => Some(SwarmMode {
                joined: true,
                gwbridge_existed,
                _lock: lock,
            }),
            Err(e) => {
                eprintln!("skipped: swarm mode is not possible here: {e}");
                None
            }
        }
    }
}

impl Drop for SwarmMode {
    fn drop(&mut self) {
        if !self.joined {
            return;
        }
        if let Err(e) = docker(&["swarm", "leave", "--force"]) {
            eprintln!("leaving the test's swarm: {e}");
        }
        if !self.gwbridge_existed {
            let _ = docker(&["network", "rm", "docker_gwbridge"]);
        }
    }
}
