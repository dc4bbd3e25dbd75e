//! Helpers shared by the test modules.

use slipway_logs::{Record, Stream};

/// A stdout record of container `c` at `time_ns`.
pub fn record(time_ns: i64, c: &str, line: &str) -> Record {
    Record {
        time_ns,
        stream: Stream::Stdout,
        container: c.to_owned(),
        replica: None,
        revision: None,
        line: line.to_owned(),
        fields: None,
    }
}

/// The local engine, or `None` (with a message) when there is none.
pub async fn docker() -> Option<bollard::Docker> {
    let d = match bollard::Docker::connect_with_local_defaults() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("skipping: no docker engine ({e})");
            return None;
        }
    };
    match d.ping().await {
        Ok(_) => Some(d),
        Err(e) => {
            eprintln!("skipping: no docker engine ({e})");
            None
        }
    }
}

/// A name no other test run uses.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// The test image: `SLIPWAY_TEST_IMAGE` or `slipway-test/busybox:latest`.
pub fn image() -> String {
    std::env::var("SLIPWAY_TEST_IMAGE").unwrap_or_else(|_| "slipway-test/busybox:latest".to_owned())
}

/// Containers a test started (labelled `io.slipway.test.logs`), removed on drop.
#[derive(Debug)]
pub struct Containers {
    label: String,
}

impl Containers {
    pub fn new() -> Self {
        Containers {
            label: unique("logs-test"),
        }
    }

    /// `docker run -d` of the test image running `sh -c script`; its full id.
    pub fn run(&mut self, labels: &[(&str, &str)], env: &[&str], script: &str) -> String {
        let mut args: Vec<String> = vec![
            "run".into(),
            "-d".into(),
            "-i".into(),
            "--network".into(),
            "none".into(),
        ];
        args.push("--label".into());
        args.push(format!("io.slipway.test.logs={}", self.label));
        for (k, v) in labels {
            args.push("--label".into());
            args.push(format!("{k}={v}"));
        }
        for e in env {
            args.push("-e".into());
            args.push((*e).to_owned());
        }
        args.push(image());
        args.extend(["sh".into(), "-c".into(), script.to_owned()]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.docker(&refs).trim().to_owned()
    }

    /// Runs the docker CLI; its stdout.
    pub fn docker(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("docker")
            .args(args)
            .output()
            .expect("docker CLI");
        assert!(
            out.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes `input` to a container's stdin (`docker attach`, detached right after).
    pub fn docker_stdin(&self, args: &[&str], input: &str) {
        use std::io::Write;
        let mut child = std::process::Command::new("docker")
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("docker CLI");
        if let Some(mut i) = child.stdin.take() {
            i.write_all(input.as_bytes()).expect("write stdin");
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Containers {
    fn drop(&mut self) {
        let out = std::process::Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--filter",
                &format!("label=io.slipway.test.logs={}", self.label),
            ])
            .output();
        if let Ok(out) = out {
            let ids = String::from_utf8_lossy(&out.stdout);
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let _ = std::process::Command::new("docker")
                    .args(["rm", "-f"])
                    .args(&ids)
                    .output();
            }
        }
    }
}
