//! Test harness: start `agentrt serve` on a free port, make JSON requests, build the test-only
//! plugins once per run.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

/// The agentrt binary cargo built for this test run.
pub fn agentrt_bin() -> &'static str {
    env!("CARGO_BIN_EXE_agentrt")
}

/// This test process's folder for its files: `agentrt-e2e/PID` in the temp folder. The first
/// call removes the folders of earlier runs whose process has ended, so checkpoints, stores and
/// plugin folders (hundreds of MB a run) do not pile up on a machine that keeps its temp folder.
pub fn scratch_root() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let all = std::env::temp_dir().join("agentrt-e2e");
        // Whether a process lives is read from /proc; without it, nothing is swept.
        let entries = std::fs::read_dir(&all)
            .ok()
            .filter(|_| Path::new("/proc/self").exists());
        if let Some(entries) = entries {
            for entry in entries.flatten() {
                let ended = entry
                    .file_name()
                    .to_str()
                    .and_then(|name| name.parse::<u32>().ok())
                    .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
                if ended {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        let dir = all.join(std::process::id().to_string());
        std::fs::create_dir_all(&dir).expect("scratch folder");
        dir
    })
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("runtime/ has a parent")
        .to_path_buf()
}

/// A running server, killed on drop. It also exits when this process does (its stdin is a
/// pipe held here, see `AGENTRT_EXIT_WITH_STDIN`), because shared servers live in statics that
/// are never dropped.
pub struct Server {
    child: Child,
    _stdin: ChildStdin,
    pub base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Start `agentrt serve` with extra arguments and wait until it listens.
    pub fn start(extra: &[&str]) -> Server {
        Self::start_with_env(extra, &[])
    }

    /// Start with extra arguments and environment variables.
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Server {
        Self::start_logging(extra, env, None)
    }

    /// Start with its log (stderr) written to `log` when given.
    pub fn start_logging(extra: &[&str], env: &[(&str, &str)], log: Option<&Path>) -> Server {
        Self::start_until(extra, env, log, "agentrt listening on ")
    }

    /// Start, and return as soon as the port answers, while models and plugins still load.
    pub fn start_answering_early(extra: &[&str], env: &[(&str, &str)]) -> Server {
        Self::start_until(extra, env, None, "agentrt starting on ")
    }

    /// Start, and wait for the stdout line beginning with `said` (followed by the address).
    fn start_until(extra: &[&str], env: &[(&str, &str)], log: Option<&Path>, said: &str) -> Server {
        let stderr = match log {
            Some(path) => Stdio::from(std::fs::File::create(path).expect("log file")),
            None => Stdio::inherit(),
        };
        // Every server its own run store, unless the test names one (to restart on it).
        let store = fresh_store_path();
        let mut child = Command::new(agentrt_bin())
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(extra)
            .env("AGENTRT_STORE", &store)
            .envs(env.iter().copied())
            .env("AGENTRT_EXIT_WITH_STDIN", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn agentrt serve");
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let base = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(url) = line.strip_prefix(said) {
                        break url.trim().to_string();
                    }
                }
                _ => {
                    let status = child.wait().expect("wait");
                    panic!("agentrt serve exited before listening: {status}");
                }
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server {
            child,
            _stdin: stdin,
            base,
        }
    }

    /// The server's resident memory in bytes (Linux: `VmRSS` of /proc/PID/status).
    pub fn resident_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read the server's /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmRSS")
            * 1024
    }

    /// Ask the server to shut down (SIGTERM), as a supervisor would.
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Send SIGHUP, as an operator does to have the keys file and the config read again.
    pub fn hang_up(&self) {
        self.signal("HUP");
    }

    /// Send the signal named `name` (`kill -NAME`).
    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Wait up to `timeout` for the server to exit on its own; its exit status.
    pub fn wait_exit(mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let until = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < until {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Send raw bytes (a request cut short) and read the answer: (status, JSON body).
    pub fn raw_exchange(&self, bytes: &[u8], read_timeout: Duration) -> (u16, Value) {
        use std::io::{Read, Write};
        let host = self.base.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(host).expect("connect");
        stream
            .set_read_timeout(Some(read_timeout))
            .expect("read timeout");
        stream.write_all(bytes).expect("send");
        let mut raw = Vec::new();
        let _ = stream.read_to_end(&mut raw);
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no HTTP answer: {text:?}"));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line: {head}"));
        let value =
            serde_json::from_str(body).unwrap_or_else(|_| panic!("body is not JSON: {body}"));
        (status, value)
    }

    /// Kill the server without warning (SIGKILL), as a crash would.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A request returning (status, headers, body text).
    pub fn exchange(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> (u16, Vec<(String, String)>, String) {
        let agent = agent();
        let url = self.url(path);
        let resp = match method {
            "GET" | "DELETE" => {
                let mut req = if method == "GET" {
                    agent.get(&url)
                } else {
                    agent.delete(&url)
                };
                for (k, v) in headers {
                    req = req.header(*k, *v);
                }
                req.call()
            }
            _ => {
                let mut req = agent.post(&url).header("content-type", "application/json");
                for (k, v) in headers {
                    req = req.header(*k, *v);
                }
                req.send(body.map(Value::to_string).unwrap_or_default())
            }
        };
        let mut resp = resp.expect("HTTP request");
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
            .collect();
        let text = resp.body_mut().read_to_string().expect("read body");
        (status, headers, text)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// POST a raw body; returns (status, JSON body).
    pub fn post_raw(&self, path: &str, content_type: &str, body: &str) -> (u16, Value) {
        let agent = agent();
        let resp = agent
            .post(&self.url(path))
            .header("content-type", content_type)
            .send(body);
        read(resp)
    }

    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_raw(path, "application/json", &body.to_string())
    }

    /// A request with extra headers and an optional JSON body; (status, JSON body).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> (u16, Value) {
        let (status, _, text) = self.exchange(method, path, headers, body);
        let value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("body is not JSON: {text}"));
        (status, value)
    }

    /// POST JSON and return the body as text (event streams).
    pub fn post_text(&self, path: &str, body: &Value) -> (u16, String) {
        let mut resp = agent()
            .post(&self.url(path))
            .header("content-type", "application/json")
            .send(body.to_string())
            .expect("HTTP request");
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().expect("read body");
        (status, text)
    }

    /// POST headers declaring a `declared`-byte JSON body, send none of it, and read the
    /// answer: how a server must treat an upload it will refuse by its declared size.
    pub fn post_declaring_length(&self, path: &str, declared: usize) -> (u16, Value) {
        let host = self.base.trim_start_matches("http://");
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
             Content-Length: {declared}\r\nConnection: close\r\n\r\n"
        );
        self.raw_exchange(head.as_bytes(), Duration::from_secs(60))
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        read(agent().get(&self.url(path)).call())
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(600)))
        .build()
        .into()
}

fn read(resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> (u16, Value) {
    let mut resp = resp.expect("HTTP request");
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().expect("read body");
    let value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("body is not JSON: {text}"));
    (status, value)
}

/// A run-store path no other server uses.
pub fn fresh_store_path() -> PathBuf {
    static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = scratch_root().join(format!("agentrt-e2e-stores-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("store folder");
    dir.join(format!("store-{n}.db"))
}

/// A PostgreSQL URL scoped to a fresh schema on the test server (`AGENTRT_TEST_POSTGRES_URL`,
/// started by scripts/test.sh); `None` (the test skips) without one, unless
/// `AGENTRT_REQUIRE_POSTGRES=1`.
pub fn postgres_schema_url() -> Option<String> {
    let Ok(url) = std::env::var("AGENTRT_TEST_POSTGRES_URL") else {
        assert!(
            std::env::var("AGENTRT_REQUIRE_POSTGRES").as_deref() != Ok("1"),
            "AGENTRT_REQUIRE_POSTGRES=1 but AGENTRT_TEST_POSTGRES_URL is not set"
        );
        eprintln!(
            "skipped: AGENTRT_TEST_POSTGRES_URL is not set (scripts/test.sh starts a server)"
        );
        return None;
    };
    let schema = format!("agentrt_e2e_{}_{}", std::process::id(), rand_suffix());
    let mut admin =
        postgres::Client::connect(&url, postgres::NoTls).expect("connect to the test server");
    admin
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .expect("create a schema");
    Some(agentrt::store::postgres::with_search_path(&url, &schema))
}

fn rand_suffix() -> u64 {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Assert the error shape of DESIGN.md and return the code.
pub fn error_code(body: &Value) -> String {
    let err = &body["error"];
    assert!(
        err["code"].is_string() && err["type"].is_string() && err["message"].is_string(),
        "bad error shape: {body}"
    );
    err["code"].as_str().unwrap_or_default().to_string()
}

/// The default-configuration server, shared by the tests that only read from it.
pub fn default_server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| Server::start(&[]))
}

/// A fresh folder holding the test plugin `wasm_of` under `name`, with `manifest` beside it
/// (`None`: the plugin's own `plugin.toml`).
pub fn plugin_folder(label: &str, wasm_of: &str, name: &str, manifest: Option<&str>) -> PathBuf {
    let dir = scratch_root().join(format!("agentrt-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::copy(test_plugin_wasm(wasm_of), dir.join(format!("{name}.wasm"))).expect("copy wasm");
    let manifest = manifest.map_or_else(|| test_plugin_manifest(wasm_of), str::to_string);
    std::fs::write(dir.join(format!("{name}.toml")), manifest).expect("write manifest");
    dir
}

/// Test plugin `name`'s own manifest (`tests/plugins/NAME/plugin.toml`).
pub fn test_plugin_manifest(name: &str) -> String {
    std::fs::read_to_string(
        repo_root()
            .join("tests/plugins")
            .join(name)
            .join("plugin.toml"),
    )
    .expect("read manifest")
}

/// Test plugin `name`'s manifest with `from` (which must be in it) replaced by `to`.
pub fn test_plugin_manifest_with(name: &str, from: &str, to: &str) -> String {
    let manifest = test_plugin_manifest(name);
    assert!(
        manifest.contains(from),
        "{name}'s manifest lacks {from:?}: {manifest}"
    );
    manifest.replace(from, to)
}

/// Test plugin `name` added to the plugin folder `dir`: `NAME.wasm` beside its own manifest.
pub fn add_test_plugin(dir: &Path, name: &str) {
    let wasm = test_plugin_wasm(name);
    std::fs::copy(&wasm, dir.join(format!("{name}.wasm")))
        .unwrap_or_else(|e| panic!("copy {}: {e}", wasm.display()));
    std::fs::write(dir.join(format!("{name}.toml")), test_plugin_manifest(name))
        .expect("write manifest");
}

/// Wait (polling every 100 ms) until `done`; fail naming `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let until = std::time::Instant::now() + timeout;
    while !done() {
        assert!(
            std::time::Instant::now() < until,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Run the agentrt CLI; returns (success, stdout, stderr).
pub fn run_cli(args: &[&str]) -> (bool, String, String) {
    run_cli_env(args, &[])
}

/// `run_cli` with environment variables.
pub fn run_cli_env(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(agentrt_bin())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run agentrt");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Where the authoring and example tests' cargo builds go: one folder for the whole run, outside
/// the test's own target folder (which cargo holds locked while tests run).
pub fn authoring_target() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
        .join("wasm-authoring")
}

/// Folder of the test-only plugins' `.wasm` files, built once per run.
pub fn built_test_plugins() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = repo_root();
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"))
            .join("wasm-test-plugins");
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "build",
                "--release",
                "--target",
                "wasm32-wasip2",
                "--manifest-path",
            ])
            .arg(root.join("tests/plugins/Cargo.toml"))
            .arg("--target-dir")
            .arg(&target)
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("RUSTFLAGS")
            .status()
            .expect("run cargo for the test plugins");
        assert!(status.success(), "building tests/plugins failed");
        target.join("wasm32-wasip2/release")
    })
}

/// The built component of test plugin `name`.
pub fn test_plugin_wasm(name: &str) -> PathBuf {
    built_test_plugins().join(format!("{}.wasm", name.replace('-', "_")))
}

/// Folder holding the test-only plugins that need no grants, with their own manifests.
pub fn test_plugin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = scratch_root().join(format!("agentrt-test-plugins-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        for name in [
            "trap-reviewer",
            "spin-check",
            "hog-check",
            "echo-check",
            "snoop-check",
            "recurse-check",
            "flood-check",
            "hostcall-trap-check",
            "sleep-check",
            "body-stall-check",
        ] {
            add_test_plugin(&dir, name);
        }
        dir
    })
}
