//! A TCP proxy in front of a database server that a test can cut and restore: an outage of
//! one client's storage without stopping the server other tests share.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// Forwards connections on a local port to a target; [`Proxy::cut`] drops every connection
/// and refuses new ones (accepted, then closed at once) until [`Proxy::restore`].
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

impl Proxy {
    /// A proxy to the server of a `postgres://user@host:port/db` URL, and that URL rewritten
    /// to go through it.
    pub async fn for_url(url: &str) -> (Self, String) {
        let after_at = url.find('@').map_or(0, |i| i + 1);
        let rest = &url[after_at..];
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let hostport = &rest[..end];
        let target = tokio::net::lookup_host(hostport)
            .await
            .expect("resolve the server")
            .next()
            .expect("an address for the server");
        let proxy = Self::start(target).await;
        let through = format!("{}{}{}", &url[..after_at], proxy.addr, &rest[end..]);
        (proxy, through)
    }

    /// A proxy to `target` on a free local port.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let cut = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let accept = {
            let (cut, conns) = (cut.clone(), conns.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((mut client, _)) = listener.accept().await else {
                        continue;
                    };
                    if cut.load(Ordering::Acquire) {
                        drop(client);
                        continue;
                    }
                    let task = tokio::spawn(async move {
                        if let Ok(mut server) = TcpStream::connect(target).await {
                            // No Nagle delay: the proxy must not add latency of its own.
                            let _ = client.set_nodelay(true);
                            let _ = server.set_nodelay(true);
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                    let mut c = conns.lock().unwrap_or_else(|p| p.into_inner());
                    c.retain(|h| !h.is_finished());
                    c.push(task.abort_handle());
                }
            })
            .abort_handle()
        };
        Self {
            addr,
            cut,
            conns,
            accept,
        }
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::Release);
        for h in self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            h.abort();
        }
    }

    /// Forwards new connections again.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::Release);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
