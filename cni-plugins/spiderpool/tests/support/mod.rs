//! Shared by the integration tests and the benchmark: a fake node daemon on a temporary unix
//! socket (canned HTTP answers, recorded requests) and a runner for the real plugin binary.
#![allow(
    dead_code,
    reason = "shared by the tests and the benchmark, which use different parts"
)]

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// One request the fake daemon received.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// `GET`, `POST`, `DELETE`.
    pub method: String,
    /// Path and query.
    pub target: String,
    /// Header lines, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Recorded {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("request body is JSON")
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// What the fake daemon does with a request.
#[derive(Clone, Debug)]
pub enum Reply {
    /// Answer with this status and JSON body (`Content-Length` framing).
    Json(u16, serde_json::Value),
    /// Answer with this status and body using chunked framing, split into pieces of this size.
    Chunked(u16, serde_json::Value, usize),
    /// Read the request, then say nothing for this long (holding the connection open).
    Hang(Duration),
}

type Handler = dyn Fn(&Recorded) -> Reply + Send + Sync;

/// A daemon stand-in listening on a unix socket in a temporary directory.
pub struct FakeDaemon {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl FakeDaemon {
    /// Starts answering every request with `handler`'s reply (one thread per connection).
    pub fn start(handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("spiderpool.sock");
        let listener = UnixListener::bind(&socket).expect("bind the fake daemon socket");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let recorded = Arc::clone(&requests);
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let handler = Arc::clone(&handler);
                let recorded = Arc::clone(&recorded);
                thread::spawn(move || serve(stream, &*handler, &recorded));
            }
        });
        Self {
            _dir: dir,
            socket,
            requests,
        }
    }

    /// The socket path to put in `ipam_unix_socket_path`.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// Requests received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().expect("lock").clone()
    }
}

fn serve(mut stream: UnixStream, handler: &Handler, recorded: &Mutex<Vec<Recorded>>) {
    let Some(request) = read_request(&mut stream) else {
        return;
    };
    recorded.lock().expect("lock").push(request.clone());
    let (status, body, chunk) = match handler(&request) {
        Reply::Json(status, body) => (status, body, None),
        Reply::Chunked(status, body, size) => (status, body, Some(size.max(1))),
        Reply::Hang(duration) => {
            thread::sleep(duration);
            return;
        }
    };
    let body = body.to_string().into_bytes();
    let mut answer =
        format!("HTTP/1.1 {status} Whatever\r\nContent-Type: application/json\r\nConnection: close\r\n");
    match chunk {
        None => {
            answer.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
            let mut bytes = answer.into_bytes();
            bytes.extend_from_slice(&body);
            let _ = stream.write_all(&bytes);
        }
        Some(size) => {
            answer.push_str("Transfer-Encoding: chunked\r\n\r\n");
            let _ = stream.write_all(answer.as_bytes());
            for piece in body.chunks(size) {
                let _ = stream.write_all(format!("{:x}\r\n", piece.len()).as_bytes());
                let _ = stream.write_all(piece);
                let _ = stream.write_all(b"\r\n");
                let _ = stream.flush();
            }
            let _ = stream.write_all(b"0\r\n\r\n");
        }
    }
}

fn read_request(stream: &mut UnixStream) -> Option<Recorded> {
    let mut bytes = Vec::new();
    let mut buffer = [0_u8; 4096];
    let head_end = loop {
        if let Some(end) = bytes.windows(4).position(|window| window == b"\r\n\r\n") {
            break end;
        }
        let count = stream.read(&mut buffer).ok()?;
        if count == 0 {
            return None;
        }
        bytes.extend_from_slice(&buffer[..count]);
    };
    let head = String::from_utf8(bytes[..head_end].to_vec()).ok()?;
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_owned();
    let target = request_line.next()?.to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(name, _)| name == "content-length")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0);
    let mut body = bytes[head_end + 4..].to_vec();
    while body.len() < length {
        let count = stream.read(&mut buffer).ok()?;
        if count == 0 {
            break;
        }
        body.extend_from_slice(&buffer[..count]);
    }
    Some(Recorded {
        method,
        target,
        headers,
        body,
    })
}

/// What one run of the plugin binary produced.
#[derive(Debug)]
pub struct Run {
    /// Exit status.
    pub code: i32,
    /// Everything on stdout.
    pub stdout: String,
    /// Everything on stderr.
    pub stderr: String,
    /// Wall time of the run.
    pub elapsed: Duration,
}

impl Run {
    /// stdout parsed as exactly one JSON value (fails if anything else is there).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|error| panic!("stdout is not one JSON value ({error}): {:?}", self.stdout))
    }
}

/// The runtime's environment a test's netconf implies, for what `env` does not set: the directory
/// of `ipam.log_file_path` is the log directory and `ipam.ipam_unix_socket_path` is the runtime's
/// socket (the plugin refuses files and sockets outside those, see `untrusted_input.rs`).
fn runtime_env(env: &[(&str, &str)], stdin: &[u8]) -> Vec<(String, String)> {
    let Ok(conf) = serde_json::from_slice::<serde_json::Value>(stdin) else {
        return Vec::new();
    };
    let ipam = &conf["ipam"];
    let log_dir = ipam["log_file_path"]
        .as_str()
        .and_then(|path| Path::new(path).parent())
        .map(|dir| dir.display().to_string());
    let socket = ipam["ipam_unix_socket_path"].as_str().map(str::to_owned);
    [
        ("SPIDERPOOL_CNI_LOG_DIR", log_dir),
        ("SPIDERPOOL_IPAM_UNIX_SOCKET_PATH", socket),
    ]
    .into_iter()
    .filter(|(name, _)| !env.iter().any(|(given, _)| given == name))
    .filter_map(|(name, value)| Some((name.to_owned(), value?)))
    .collect()
}

/// Runs the plugin binary with exactly these environment variables (plus [`runtime_env`]) and
/// stdin; kills it and fails if it is still running after `limit`.
pub fn run_plugin(env: &[(&str, &str)], stdin: &[u8], limit: Duration) -> Run {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_spiderpool"))
        .env_clear()
        .envs(env.iter().copied())
        .envs(runtime_env(env, stdin))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the plugin binary");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin).expect("write stdin");
    drop(input);
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let stdout_reader = thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let stderr_reader = thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the plugin was still running after {limit:?}");
        }
        // Short polls: the benchmark times these runs, which take a few milliseconds.
        thread::sleep(Duration::from_micros(100));
    };
    Run {
        code: status.code().expect("exited normally"),
        stdout: stdout_reader.join().expect("stdout reader"),
        stderr: stderr_reader.join().expect("stderr reader"),
        elapsed: started.elapsed(),
    }
}
