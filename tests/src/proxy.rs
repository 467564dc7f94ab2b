//! A TCP proxy in front of a server whose replies a test can hold back: what the server sends
//! while held waits in the proxy until released, in order. It puts a client's reply "on the
//! wire" at a moment the test chooses (e.g. an entry Redis handed a blocked `XREADGROUP`,
//! delivered only once the worker is draining).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};

/// A running proxy; dropping it stops accepting and closes every connection.
#[derive(Debug)]
pub struct Proxy {
    pub addr: SocketAddr,
    held: Arc<watch::Sender<bool>>,
    _stop: DropGuard,
}

impl Proxy {
    /// Listens on a free loopback port and forwards each connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let held = Arc::new(watch::channel(false).0);
        let stop = CancellationToken::new();
        let (accepting, token) = (held.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let client = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((client, _)) => client,
                        Err(_) => return,
                    },
                    () = token.cancelled() => return,
                };
                let held = accepting.subscribe();
                let token = token.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = forward(client, upstream, held) => {}
                        () = token.cancelled() => {}
                    }
                });
            }
        });
        Ok(Self {
            addr,
            held,
            _stop: stop.drop_guard(),
        })
    }

    /// From now on, what the server sends stays in the proxy.
    pub fn hold_replies(&self) {
        self.held.send_replace(true);
    }

    /// Delivers what was held, and everything after it.
    pub fn release_replies(&self) {
        self.held.send_replace(false);
    }
}

/// Copies client → server freely and server → client whenever replies are not held.
async fn forward(
    mut client: TcpStream,
    upstream: SocketAddr,
    mut held: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut server = TcpStream::connect(upstream).await?;
    let (mut client_rx, mut client_tx) = client.split();
    let (mut server_rx, mut server_tx) = server.split();
    let requests = tokio::io::copy(&mut client_rx, &mut server_tx);
    let replies = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = server_rx.read(&mut buf).await?;
            if n == 0 {
                return anyhow::Ok(());
            }
            held.wait_for(|held| !held).await?;
            client_tx.write_all(&buf[..n]).await?;
        }
    };
    tokio::select! {
        r = requests => { r?; }
        r = replies => r?,
    }
    Ok(())
}
