//! A TCP proxy between a component (an agent, the operator) and the API server that can turn bad on
//! demand. It forwards bytes and never looks inside them (the traffic is TLS), so its faults are the
//! network's: latency, connections reset, a partition, and responses lost after the request reached
//! the API server (and was applied there).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How the proxy treats traffic from now on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forward everything at once.
    Pass,
    /// Forward every chunk `Duration` after it arrived, in both directions.
    Delay(Duration),
    /// A partition: nothing moves in either direction (bytes wait in the kernel's buffers), new
    /// connections are accepted but not connected upstream. Traffic resumes when the mode changes,
    /// as after a real partition heals.
    Blackhole,
    /// Requests go through; the first bytes of every response are thrown away and the connection is
    /// reset. The API server has applied the request, the client never learns its outcome.
    DropResponses,
}

#[derive(Debug)]
struct Shared {
    mode: watch::Sender<ProxyMode>,
    /// Bumped to reset every open connection.
    reset: watch::Sender<u64>,
    connections: AtomicU64,
    dropped_responses: AtomicU64,
}

/// A running proxy; stops (closing every connection) when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    name: String,
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream`. Call from within a tokio runtime.
    pub async fn start(name: &str, upstream: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the fault proxy")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            mode: watch::Sender::new(ProxyMode::Pass),
            reset: watch::Sender::new(0),
            connections: AtomicU64::new(0),
            dropped_responses: AtomicU64::new(0),
        });
        let task = tokio::spawn(accept_loop(listener, upstream, shared.clone()));
        Ok(FaultProxy {
            name: name.to_owned(),
            addr,
            shared,
            task,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The name given at start (for reports).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Switches the mode for open and new connections.
    pub fn set(&self, mode: ProxyMode) {
        self.shared.mode.send_replace(mode);
    }

    /// The current mode.
    pub fn mode(&self) -> ProxyMode {
        *self.shared.mode.borrow()
    }

    /// Resets every open connection (RST to both ends); new connections are not affected.
    pub fn reset_connections(&self) {
        self.shared.reset.send_modify(|generation| *generation += 1);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Responses thrown away in [`ProxyMode::DropResponses`].
    pub fn dropped_responses(&self) -> u64 {
        self.shared.dropped_responses.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, shared: Arc<Shared>) {
    // Connection tasks live in the set, so aborting this task (dropping the set) ends them all.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    shared.connections.fetch_add(1, Ordering::Relaxed);
                    connections.spawn(serve(client, upstream, shared.clone()));
                }
                Err(err) => {
                    tracing::warn!(%err, "fault proxy: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Why a connection ended other than by a clean close.
enum Cut {
    Reset,
    Io,
}

async fn serve(mut client: TcpStream, upstream: SocketAddr, shared: Arc<Shared>) {
    let mut mode = shared.mode.subscribe();
    let mut reset = shared.reset.subscribe();
    reset.mark_unchanged();
    // A partition holds new connections before they reach the API server.
    let held = async {
        loop {
            let current = *mode.borrow_and_update();
            if current != ProxyMode::Blackhole || mode.changed().await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        () = held => {}
        _ = reset.changed() => return cut(&client, None),
    }
    let mut server = match TcpStream::connect(upstream).await {
        Ok(server) => server,
        Err(_) => return cut(&client, None),
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let outcome = {
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = server.split();
        let requests = pump(client_read, server_write, false, shared.mode.subscribe(), &shared);
        let responses = pump(server_read, client_write, true, shared.mode.subscribe(), &shared);
        tokio::select! {
            result = async { tokio::try_join!(requests, responses) } => result.map(|_| ()),
            _ = reset.changed() => Err(Cut::Reset),
        }
    };
    match outcome {
        Ok(()) => {}
        Err(Cut::Reset | Cut::Io) => cut(&client, Some(&server)),
    }
}

/// Closes with RST (SO_LINGER 0), as a connection torn by the network looks to its ends.
fn cut(client: &TcpStream, server: Option<&TcpStream>) {
    let _ = client.set_zero_linger();
    if let Some(server) = server {
        let _ = server.set_zero_linger();
    }
}

/// Copies one direction under the current mode until EOF (then half-closes the other side).
async fn pump<R, W>(
    mut from: R,
    mut to: W,
    responses: bool,
    mut mode: watch::Receiver<ProxyMode>,
    shared: &Shared,
) -> Result<(), Cut>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // A partition stops reading, so the peer's writes back up as in a real one.
        loop {
            let current = *mode.borrow_and_update();
            if current != ProxyMode::Blackhole {
                break;
            }
            mode.changed().await.map_err(|_| Cut::Io)?;
        }
        let n = from.read(&mut buf).await.map_err(|_| Cut::Io)?;
        let arrived = Instant::now();
        if n == 0 {
            let _ = to.shutdown().await;
            return Ok(());
        }
        loop {
            let current = *mode.borrow_and_update();
            match current {
                ProxyMode::Pass => break,
                ProxyMode::Delay(delay) => {
                    tokio::time::sleep_until(arrived + delay).await;
                    break;
                }
                ProxyMode::DropResponses if responses => {
                    shared.dropped_responses.fetch_add(1, Ordering::Relaxed);
                    return Err(Cut::Reset);
                }
                ProxyMode::DropResponses => break,
                // Partitioned after the chunk was read: it waits for the heal.
                ProxyMode::Blackhole => mode.changed().await.map_err(|_| Cut::Io)?,
            }
        }
        to.write_all(&buf[..n]).await.map_err(|_| Cut::Io)?;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

    use super::*;

    /// An upstream that answers every chunk with "ok:<chunk>" and counts what it received.
    async fn echo_server() -> (SocketAddr, Arc<AtomicU64>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(AtomicU64::new(0));
        let counter = received.clone();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let counter = counter.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    loop {
                        let n = match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        counter.fetch_add(1, Ordering::SeqCst);
                        let mut answer = b"ok:".to_vec();
                        answer.extend_from_slice(&buf[..n]);
                        if stream.write_all(&answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, received)
    }

    async fn ask(stream: &mut TcpStream, text: &str) -> std::io::Result<String> {
        stream.write_all(text.as_bytes()).await?;
        let mut buf = [0u8; 1024];
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    #[tokio::test]
    async fn every_mode_does_what_it_says() {
        let (upstream, received) = echo_server().await;
        let proxy = FaultProxy::start("test", upstream).await.unwrap();
        let mut conn = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(ask(&mut conn, "a").await.unwrap(), "ok:a");

        proxy.set(ProxyMode::Delay(Duration::from_millis(200)));
        let started = std::time::Instant::now();
        assert_eq!(ask(&mut conn, "b").await.unwrap(), "ok:b");
        assert!(
            started.elapsed() >= Duration::from_millis(400),
            "{:?}",
            started.elapsed()
        );

        proxy.set(ProxyMode::Blackhole);
        let stalled = tokio::time::timeout(Duration::from_millis(300), ask(&mut conn, "c")).await;
        assert!(stalled.is_err(), "a partition let an answer through");
        assert_eq!(
            received.load(Ordering::SeqCst),
            2,
            "a partition let a request through"
        );
        proxy.set(ProxyMode::Pass);
        // The request written during the partition arrives once it heals.
        let mut buf = [0u8; 16];
        let n = conn.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"ok:c");

        proxy.set(ProxyMode::DropResponses);
        let lost = ask(&mut conn, "d").await;
        assert!(lost.is_err(), "a response came through: {lost:?}");
        assert_eq!(
            received.load(Ordering::SeqCst),
            4,
            "the request did not reach upstream"
        );
        assert_eq!(proxy.dropped_responses(), 1);

        proxy.set(ProxyMode::Pass);
        let mut conn = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(ask(&mut conn, "e").await.unwrap(), "ok:e");
        proxy.reset_connections();
        let reset = ask(&mut conn, "f").await;
        assert!(reset.is_err(), "a reset connection still answered: {reset:?}");
        let mut conn = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(ask(&mut conn, "g").await.unwrap(), "ok:g");
        assert_eq!(proxy.connections(), 3);
    }
}
