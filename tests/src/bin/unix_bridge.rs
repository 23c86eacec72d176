//! `unix-bridge <socket>`: joins its stdin/stdout to a connection to the unix socket `<socket>`.
//!
//! The kernel-tier VM reaches the node agent on the host through it: QEMU's user-mode network runs
//! it once per guest TCP connection to the forwarded address (`guestfwd=...-cmd:unix-bridge <agent
//! socket>`), with the connection as its stdin and stdout. Test-only.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(socket) = std::env::args_os().nth(1) else {
        eprintln!("usage: unix-bridge <socket>");
        return ExitCode::from(2);
    };
    let stream = match UnixStream::connect(&socket) {
        Ok(stream) => stream,
        Err(error) => {
            eprintln!("unix-bridge: connecting to {}: {error}", socket.to_string_lossy());
            return ExitCode::FAILURE;
        }
    };
    let Ok(mut to_socket) = stream.try_clone() else {
        return ExitCode::FAILURE;
    };
    // Guest to socket: at the guest's end of sending, half-close so the server sees the request end.
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut to_socket);
        let _ = to_socket.shutdown(Shutdown::Write);
    });
    // Socket to guest: the connection ends when the server closes its side.
    let mut from_socket = stream;
    let mut stdout = std::io::stdout().lock();
    let mut buffer = [0_u8; 16 * 1024];
    loop {
        match from_socket.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if stdout
                    .write_all(&buffer[..n])
                    .and_then(|()| stdout.flush())
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    ExitCode::SUCCESS
}
