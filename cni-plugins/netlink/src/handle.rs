//! A connection to the kernel's routing netlink in one network namespace, and the one place
//! requests are sent and answers read (so every error keeps its errno the same way).

use futures::StreamExt;
use nix::errno::Errno;
use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
};
use rtnetlink::packet_route::RouteNetlinkMessage;

use crate::error::{NetlinkError, Result};
use crate::netns::Netns;

/// A routing-netlink connection bound to one network namespace. Its background task runs on the
/// tokio runtime it was made in; dropping every clone ends it.
#[derive(Clone, Debug)]
pub struct Handle {
    inner: rtnetlink::Handle,
}

/// How a request modifies the kernel's tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Write {
    /// Create; `EEXIST` when it is there already.
    Create,
    /// Change or delete something that exists.
    Modify,
}

impl Handle {
    /// Connects in the calling thread's network namespace. Must be called inside a tokio runtime
    /// (the connection's task is spawned on it).
    pub fn connect() -> Result<Self> {
        let (connection, inner, _) =
            rtnetlink::new_connection().map_err(|error| NetlinkError::Transport {
                op: "open a netlink socket".to_owned(),
                detail: error.to_string(),
            })?;
        tokio::spawn(connection);
        Ok(Self { inner })
    }

    /// Connects inside `netns`: the socket is opened by a thread that entered it (see
    /// [`Netns::run`]) and stays bound there. Must be called inside a tokio runtime.
    pub fn connect_in(netns: &Netns) -> Result<Self> {
        let runtime = tokio::runtime::Handle::current();
        let (connection, inner, _) = netns
            .run(|| {
                // The socket registers with the runtime's reactor when it is made.
                let _entered = runtime.enter();
                rtnetlink::new_connection()
            })?
            .map_err(|error| NetlinkError::Transport {
                op: format!("open a netlink socket in {}", netns.path().display()),
                detail: error.to_string(),
            })?;
        tokio::spawn(connection);
        Ok(Self { inner })
    }

    /// Sends a request that changes something and waits for the kernel's acknowledgement.
    pub(crate) async fn write(
        &self,
        op: impl FnOnce() -> String,
        message: RouteNetlinkMessage,
        write: Write,
    ) -> Result<()> {
        let mut flags = NLM_F_REQUEST | NLM_F_ACK;
        if write == Write::Create {
            flags |= NLM_F_CREATE | NLM_F_EXCL;
        }
        self.send(op, message, flags).await.map(|_| ())
    }

    /// Sends a get request (one answer) and returns what came back.
    pub(crate) async fn get(
        &self,
        op: impl FnOnce() -> String,
        message: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        self.send(op, message, NLM_F_REQUEST).await
    }

    /// Sends a dump request and returns every answer.
    pub(crate) async fn dump(
        &self,
        op: impl FnOnce() -> String,
        message: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        self.send(op, message, NLM_F_REQUEST | NLM_F_DUMP).await
    }

    async fn send(
        &self,
        op: impl FnOnce() -> String,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        let mut request = NetlinkMessage::from(message);
        request.header.flags = flags;
        let mut handle = self.inner.clone();
        let mut answers = match handle.request(request) {
            Ok(answers) => answers,
            Err(error) => {
                return Err(NetlinkError::Transport {
                    op: op(),
                    detail: error.to_string(),
                });
            }
        };
        let mut messages = Vec::new();
        while let Some(answer) = answers.next().await {
            match answer.payload {
                NetlinkPayload::InnerMessage(message) => messages.push(message),
                NetlinkPayload::Error(error) => {
                    if let Some(code) = error.code {
                        return Err(NetlinkError::Kernel {
                            op: op(),
                            errno: Errno::from_raw(-code.get()),
                        });
                    }
                }
                NetlinkPayload::Done(_) | NetlinkPayload::Noop | NetlinkPayload::Overrun(_) => {}
                other => {
                    return Err(NetlinkError::Unexpected {
                        op: op(),
                        detail: format!("{other:?}"),
                    });
                }
            }
        }
        Ok(messages)
    }
}
