//! Sockets in a named network namespace (`ip netns add NAME`), without running anything there: a
//! short-lived thread joins the namespace, opens the socket and ends; the socket stays in that
//! namespace and can be used from any thread or runtime.
//!
//! [`forward`] joins two namespaces with a TCP relay: the image kubelet gives each simulated node
//! a loopback address for the API server that way ([`crate::kubelet`]).

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow};
use nix::sched::{CloneFlags, setns};

/// Runs `f` on a thread that joined network namespace `netns`.
pub fn within<T, F>(netns: &str, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> std::io::Result<T> + Send + 'static,
{
    let path = Path::new("/var/run/netns").join(netns);
    let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    std::thread::spawn(move || -> Result<T> {
        setns(&file, CloneFlags::CLONE_NEWNET).context("setns")?;
        Ok(f()?)
    })
    .join()
    .map_err(|_| anyhow!("the thread in netns {netns} panicked"))?
    .with_context(|| format!("in netns {netns}"))
}

/// A TCP listener on `address` in `netns`.
pub fn listen(netns: &str, address: SocketAddr) -> Result<TcpListener> {
    within(netns, move || TcpListener::bind(address))
}

/// A TCP connection to `address` from `netns`.
pub fn connect(netns: &str, address: SocketAddr, timeout: Duration) -> Result<TcpStream> {
    within(netns, move || TcpStream::connect_timeout(&address, timeout))
}

/// One plain HTTP/1.1 GET from `netns`: the status code and body.
pub fn http_get(netns: &str, address: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, String)> {
    let mut stream = connect(netns, address, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| anyhow!("no HTTP status line from {address}{path}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    // Chunked bodies (axum's default for streams) are good enough unparsed for the tests' `contains`.
    Ok((status, body))
}

/// Relays every connection accepted on `listener` (in whatever namespace it was opened) to
/// `target`, dialled from this process's own namespace, until the returned task is aborted.
pub fn forward(listener: TcpListener, target: SocketAddr) -> Result<tokio::task::JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    }))
}
