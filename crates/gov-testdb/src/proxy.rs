//! A TCP proxy in front of a database server that a test can cut and restore: an outage of
//! one client's storage without stopping the server other tests share.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// Forwards connections on a local port to a target; [`Proxy::cut`] drops every connection
/// and refuses new ones (accepted, then closed at once) until [`Proxy::restore`];
/// [`Proxy::stall`] keeps every connection open but forwards nothing either way (a partition,
/// a frozen server) until [`Proxy::resume`]; [`Proxy::silence`] does that for ever to the
/// connections open now, while new ones flow (a frozen node whose clients reconnect elsewhere).
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
    trap: Arc<Trap>,
    stalled: Arc<tokio::sync::watch::Sender<bool>>,
    /// Connections numbered below this are silent for ever.
    silent_below: Arc<AtomicU64>,
    /// How many connections were accepted.
    accepted: Arc<AtomicU64>,
}

/// Waits until the proxy is not stalled.
async fn flowing(stalled: &mut tokio::sync::watch::Receiver<bool>) {
    // The sender lives as long as the proxy, which outlives its connections.
    let _ = stalled.wait_for(|s| !*s).await;
}

/// A one-shot trap on replies: the next chunk the server sends that contains `pattern` is
/// dropped, with its connection (the client sees the connection break after the server did
/// the work: a lost reply).
#[derive(Debug, Default)]
struct Trap {
    pattern: Mutex<Option<Vec<u8>>>,
    sprung: std::sync::atomic::AtomicU64,
}

impl Trap {
    /// Whether `chunk` springs the trap (disarming it).
    fn springs(&self, chunk: &[u8]) -> bool {
        let mut p = self.pattern.lock().unwrap_or_else(|p| p.into_inner());
        let hit = p
            .as_deref()
            .is_some_and(|p| !p.is_empty() && chunk.windows(p.len()).any(|w| w == p));
        if hit {
            *p = None;
            self.sprung.fetch_add(1, Ordering::AcqRel);
        }
        hit
    }
}

/// Waits for ever once connection `id` has been silenced.
async fn unless_silenced(id: u64, silent_below: &AtomicU64) {
    if id < silent_below.load(Ordering::Acquire) {
        std::future::pending::<()>().await;
    }
}

/// Forwards connection number `id` both ways until either side closes or the trap springs.
async fn forward(
    mut client: TcpStream,
    target: SocketAddr,
    trap: Arc<Trap>,
    stalled: tokio::sync::watch::Receiver<bool>,
    (id, silent_below): (u64, Arc<AtomicU64>),
) {
    flowing(&mut stalled.clone()).await;
    let Ok(mut server) = TcpStream::connect(target).await else {
        return;
    };
    // No Nagle delay: the proxy must not add latency of its own.
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut cr, mut cw) = client.split();
    let (mut sr, mut sw) = server.split();
    let up = async {
        let mut stalled = stalled.clone();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            flowing(&mut stalled).await;
            unless_silenced(id, &silent_below).await;
            if sw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let down = async {
        let mut stalled = stalled.clone();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            flowing(&mut stalled).await;
            unless_silenced(id, &silent_below).await;
            if trap.springs(&buf[..n]) || cw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        () = up => {}
        () = down => {}
    }
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
        let trap: Arc<Trap> = Arc::default();
        let stalled = Arc::new(tokio::sync::watch::Sender::new(false));
        let silent_below: Arc<AtomicU64> = Arc::default();
        let accepted: Arc<AtomicU64> = Arc::default();
        let accept = {
            let (cut, conns, trap) = (cut.clone(), conns.clone(), trap.clone());
            let (stalled, silent_below, accepted) =
                (stalled.clone(), silent_below.clone(), accepted.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    if cut.load(Ordering::Acquire) {
                        drop(client);
                        continue;
                    }
                    let id = accepted.fetch_add(1, Ordering::AcqRel);
                    let task = tokio::spawn(forward(
                        client,
                        target,
                        trap.clone(),
                        stalled.subscribe(),
                        (id, silent_below.clone()),
                    ));
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
            trap,
            stalled,
            silent_below,
            accepted,
        }
    }

    /// Makes every connection open now silent for ever: it stays open, and nothing more is
    /// forwarded on it either way (not even what a [`Self::resume`] would release). New
    /// connections are forwarded as usual.
    pub fn silence(&self) {
        self.silent_below
            .store(self.accepted.load(Ordering::Acquire), Ordering::Release);
    }

    /// Stops forwarding, both ways, on every connection, without closing any (and holds new
    /// ones the same way): the client's requests go unanswered until [`Self::resume`].
    pub fn stall(&self) {
        self.stalled.send_replace(true);
    }

    /// Forwards again what a [`Self::stall`] held, and everything after.
    pub fn resume(&self) {
        self.stalled.send_replace(false);
    }

    /// Arms a one-shot trap: the next reply chunk from the server that contains `pattern`
    /// never reaches the client, and its connection is closed. The server did the work (a
    /// statement that ran in autocommit has committed): the client sees a lost reply.
    pub fn lose_reply_containing(&self, pattern: &[u8]) {
        *self.trap.pattern.lock().unwrap_or_else(|p| p.into_inner()) = Some(pattern.to_vec());
    }

    /// How many connections it has accepted (and forwarded).
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Acquire)
    }

    /// How many replies the trap has dropped.
    pub fn replies_lost(&self) -> u64 {
        self.trap.sprung.load(Ordering::Acquire)
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
