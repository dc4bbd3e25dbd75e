//! Test helpers: an in-process registry on 127.0.0.1:0 with its own runtime thread, an
//! HTTP client, and the Docker/skopeo CLIs with a private `DOCKER_CONFIG` and cleanup.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use slipway_registry::auth::BoxFuture;
use slipway_registry::{
    Authenticator, Digest, Principal, Registry, RegistryConfig, RepoPattern, StaticAuthenticator,
};

pub const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";
pub const ROBOT_TOKEN: &str = "robot-token-0123456789abcdef";
pub const READER_TOKEN: &str = "reader-token-0123456789abcdef";

/// A registry served on its own thread; stopped when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    pub registry: Registry,
    pub dir: tempfile::TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Accounts every test server knows: `admin` (everything), `robot` (pull+push below `ci/`),
/// `reader` (pull everything).
pub fn authenticator() -> StaticAuthenticator {
    StaticAuthenticator::new()
        .with_admin(ADMIN_TOKEN)
        .with_robot("robot", ROBOT_TOKEN, "ci")
        .with_user(
            "reader",
            READER_TOKEN,
            vec![slipway_registry::Grant::new(
                RepoPattern::All,
                &[slipway_registry::Action::Pull],
            )],
        )
}

/// Accounts whose credentials can be revoked while the registry runs, as the server's
/// tokens can: each password is its own credential (`cred:<password>`), live until
/// [`Revocable::revoke`].
#[derive(Debug, Default)]
pub struct Revocable {
    accounts: std::sync::Mutex<Vec<(String, String, Principal)>>,
}

impl Revocable {
    /// An account `user` with `password`, allowed what `principal` is.
    pub fn add(&self, user: &str, password: &str, principal: Principal) {
        let principal = principal.with_credential(format!("cred:{password}"));
        self.lock()
            .push((user.to_string(), password.to_string(), principal));
    }

    /// Removes the account of `password`: its Basic credentials and its bearer tokens fail.
    pub fn revoke(&self, password: &str) {
        self.lock().retain(|(_, p, _)| p != password);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(String, String, Principal)>> {
        self.accounts.lock().expect("accounts")
    }
}

impl Authenticator for Revocable {
    fn authenticate<'a>(
        &'a self,
        username: &'a str,
        password: &'a str,
    ) -> BoxFuture<'a, Option<Principal>> {
        let found = self
            .lock()
            .iter()
            .find(|(u, p, _)| u == username && p == password)
            .map(|(_, _, principal)| principal.clone());
        Box::pin(std::future::ready(found))
    }

    fn credential_live<'a>(&'a self, credential: &'a str) -> BoxFuture<'a, bool> {
        let live = self
            .lock()
            .iter()
            .any(|(_, _, p)| p.credential.as_deref() == Some(credential));
        Box::pin(std::future::ready(live))
    }
}

impl TestServer {
    pub fn start() -> TestServer {
        Self::start_with(|_| {})
    }

    pub fn start_with(configure: impl FnOnce(&mut RegistryConfig)) -> TestServer {
        Self::start_with_auth(configure, Arc::new(authenticator()))
    }

    pub fn start_with_auth(
        configure: impl FnOnce(&mut RegistryConfig),
        auth: Arc<dyn Authenticator>,
    ) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = RegistryConfig::new(dir.path().join("registry"));
        configure(&mut config);
        let registry = Registry::open(config, auth).expect("open registry");
        let router = registry.router();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                addr_tx
                    .send(listener.local_addr().expect("addr"))
                    .expect("send addr");
                axum::serve(listener, router)
                    .with_graceful_shutdown(async {
                        let _ = shutdown_rx.await;
                    })
                    .await
                    .expect("serve");
            });
        });
        let addr = addr_rx.recv().expect("server address");
        TestServer {
            addr,
            registry,
            dir,
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `127.0.0.1:PORT`, the registry part of image references.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("registry")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        // Docker may keep connections open; don't wait for them forever.
        if let Some(thread) = self.thread.take() {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while !thread.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
    }
}

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(120))
        .build()
        .expect("client")
}

/// A unique lowercase suffix for repository and image names.
pub fn unique() -> String {
    let n: u64 = rand::random();
    format!("{n:016x}")
}

pub fn sha256(data: &[u8]) -> Digest {
    Digest::sha256_of(data)
}

/// Runs a command, returning its output (never panics on a non-zero exit).
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

pub fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The Docker CLI with a private config directory (so logins of parallel tests don't mix)
/// and the images it tags, removed when dropped.
pub struct Docker {
    config: tempfile::TempDir,
    images: std::cell::RefCell<Vec<String>>,
}

impl Docker {
    pub fn new() -> Docker {
        Docker {
            config: tempfile::tempdir().expect("temp dir"),
            images: Default::default(),
        }
    }

    pub fn cmd(&self) -> Command {
        let mut cmd = Command::new("docker");
        cmd.env("DOCKER_CONFIG", self.config.path());
        cmd
    }

    /// Runs `docker ARGS`.
    pub fn run(&self, args: &[&str]) -> Output {
        run(self.cmd().args(args))
    }

    /// Runs `docker ARGS` and panics with its output if it fails.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "docker {args:?} failed: {}",
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Remembers an image reference to remove at the end.
    pub fn owns(&self, image: &str) {
        self.images.borrow_mut().push(image.to_string());
    }

    /// `docker login HOST -u USER --password-stdin`.
    pub fn login(&self, host: &str, user: &str, password: &str) -> Output {
        use std::io::Write;
        let mut child = self
            .cmd()
            .args(["login", host, "-u", user, "--password-stdin"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn docker login");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(password.as_bytes())
            .expect("write password");
        child.wait_with_output().expect("docker login")
    }

    /// Makes the CLI send `token` as `Authorization: Bearer` to `host` as it is, without
    /// asking the token endpoint (the config file's `registrytoken`): what a holder of a
    /// stolen or leftover bearer token can do.
    pub fn use_bearer_token(&self, host: &str, token: &str) {
        let config = serde_json::json!({"auths": {host: {"registrytoken": token}}});
        std::fs::write(self.config.path().join("config.json"), config.to_string())
            .expect("write docker config");
    }

    /// Builds an image `tag` FROM the busybox test image with `layers` extra layers, each
    /// holding `bytes_per_layer` random bytes (a file `/layerN`). Returns the sha256sum
    /// lines of those files, to compare after a pull.
    pub fn build_image(&self, tag: &str, layers: usize, bytes_per_layer: usize) -> String {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut dockerfile = String::from("FROM slipway-test/busybox:latest\n");
        for i in 0..layers {
            dockerfile.push_str(&format!(
                "RUN head -c {bytes_per_layer} /dev/urandom > /layer{i}\n"
            ));
        }
        dockerfile.push_str("CMD [\"sh\", \"-c\", \"sha256sum /layer*\"]\n");
        std::fs::write(dir.path().join("Dockerfile"), dockerfile).expect("write Dockerfile");
        self.owns(tag);
        let out = run(self
            .cmd()
            .env("DOCKER_BUILDKIT", "0")
            .args(["build", "-q", "-t", tag])
            .arg(dir.path()));
        assert!(out.status.success(), "docker build failed: {}", text(&out));
        self.ok(&["run", "--rm", tag])
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        let images = self.images.borrow().clone();
        if !images.is_empty() {
            let _ = self.cmd().arg("rmi").arg("-f").args(&images).output();
        }
    }
}

/// Every file under `blobs/` hashes to its name (no partial or corrupt blob is visible).
pub fn assert_blobs_verified(root: &Path) {
    for alg in ["sha256", "sha512"] {
        let dir = root.join("blobs").join(alg);
        let Ok(prefixes) = std::fs::read_dir(&dir) else {
            continue;
        };
        for prefix in prefixes {
            assert_files_named_by_digest(&prefix.expect("entry").path(), alg);
        }
    }
}

/// Every file directly in `dir` hashes (with `alg`) to its own name, as content-addressed
/// stores (ours, an OCI layout's `blobs/sha256`) promise.
pub fn assert_files_named_by_digest(dir: &Path, alg: &str) {
    for entry in std::fs::read_dir(dir).expect("read blob dir") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("name")
            .to_string();
        let data = std::fs::read(&path).expect("read blob");
        let expected: Digest = format!("{alg}:{name}")
            .parse()
            .unwrap_or_else(|e| panic!("stray file {} in the blob store: {e}", path.display()));
        let actual = Digest::of(expected.algorithm(), &data);
        assert_eq!(
            actual,
            expected,
            "blob {} does not match its name",
            path.display()
        );
    }
}
