#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::io::{Read as _, Write as _};
use std::os::unix::process::CommandExt as _;

use super::*;

/// Where the child client connects, and what it prints.
const SOCKET_ENV: &str = "SPIDERPOOL_SOCKET_TEST_PATH";

fn dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    // Traversable by the unprivileged child client.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

#[tokio::test]
async fn a_second_agent_for_the_socket_refuses_to_start_naming_the_first() {
    let dir = dir();
    let socket = dir.path().join("agent.sock");
    let first = lock(&socket, "n1", Duration::ZERO).await.unwrap();
    let err = lock(&socket, "n1", Duration::from_millis(300)).await.unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains(&format!("pid {} node n1", std::process::id())) && message.contains("refusing"),
        "{message}"
    );
    drop(first);
    lock(&socket, "n1", Duration::ZERO).await.unwrap();
}

#[tokio::test]
async fn only_a_previous_agents_socket_is_replaced_and_only_our_own_is_removed() {
    let dir = dir();
    let socket = dir.path().join("agent.sock");
    let held = lock(&socket, "n1", Duration::ZERO).await.unwrap();
    // Something else at the path: left alone.
    std::fs::write(&socket, "not ours").unwrap();
    assert!(matches!(
        bind(&socket, &held, Metrics::new()),
        Err(SocketError::NotASocket(_))
    ));
    assert_eq!(std::fs::read_to_string(&socket).unwrap(), "not ours");
    std::fs::remove_file(&socket).unwrap();
    // A socket a dead agent left: replaced, with mode 0600.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let (listener, file) = bind(&socket, &held, Metrics::new()).unwrap();
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, SOCKET_MODE, "{mode:o}");
    // Replaced by someone else meanwhile: not removed on exit.
    drop(listener);
    std::fs::remove_file(&socket).unwrap();
    std::fs::write(&socket, "someone else's").unwrap();
    file.remove_if_ours();
    assert!(socket.exists());
    std::fs::remove_file(&socket).unwrap();
    let (_listener, file) = bind(&socket, &held, Metrics::new()).unwrap();
    file.remove_if_ours();
    assert!(!socket.exists());
}

/// Runs [`client_as_nobody`] as uid 65534 against `socket`; returns what it printed.
fn connect_as_nobody(socket: &Path) -> String {
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "socket::tests::client_as_nobody",
            "--nocapture",
        ])
        .env(SOCKET_ENV, socket)
        .uid(65534)
        .gid(65534)
        .output()
        .expect("running the test binary as nobody (the tests run as root)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("CLIENT "))
        .unwrap_or_else(|| panic!("no answer from the client: {stdout}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_root_may_talk_to_the_socket() {
    let dir = dir();
    let socket = dir.path().join("agent.sock");
    let held = lock(&socket, "n1", Duration::ZERO).await.unwrap();
    let metrics = Metrics::new();
    let (listener, _file) = bind(&socket, &held, metrics.clone()).unwrap();
    let router = axum::Router::new().route("/", axum::routing::get(|| async { "hello" }));
    tokio::spawn(async move { axum::serve(listener, router).await });
    // Root is served.
    let root = tokio::task::spawn_blocking({
        let socket = socket.clone();
        move || request(&socket)
    })
    .await
    .unwrap();
    assert!(root.starts_with("SERVED HTTP/1.1 200"), "{root}");
    // Anyone else cannot even open it (its mode)...
    let socket_for_child = socket.clone();
    let denied = tokio::task::spawn_blocking(move || connect_as_nobody(&socket_for_child))
        .await
        .unwrap();
    assert!(denied.starts_with("DENIED"), "{denied}");
    // ...and were the mode widened, the agent would still close the connection.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let socket_for_child = socket.clone();
    let refused = tokio::task::spawn_blocking(move || connect_as_nobody(&socket_for_child))
        .await
        .unwrap();
    assert_eq!(refused, "CLOSED", "{refused}");
    assert!(
        metrics
            .encode()
            .contains("spiderpool_ipam_socket_refused_connections_total 1")
    );
}

/// One HTTP request over the socket: `SERVED <status line>`, `CLOSED` (the agent hung up), or
/// `DENIED <error>` (the socket could not be opened).
fn request(socket: &Path) -> String {
    let mut stream = match std::os::unix::net::UnixStream::connect(socket) {
        Ok(stream) => stream,
        Err(e) => return format!("DENIED {e}"),
    };
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = stream.write_all(b"GET / HTTP/1.1\r\nhost: agent\r\nconnection: close\r\n\r\n");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    match answer.lines().next() {
        Some(status) if !status.is_empty() => format!("SERVED {status}"),
        _ => "CLOSED".to_owned(),
    }
}

/// The client side of [`only_root_may_talk_to_the_socket`], run by it as another user.
#[test]
#[ignore = "run by only_root_may_talk_to_the_socket as an unprivileged user"]
fn client_as_nobody() {
    let socket = std::env::var_os(SOCKET_ENV).expect("run by only_root_may_talk_to_the_socket");
    println!("CLIENT {}", request(Path::new(&socket)));
}
