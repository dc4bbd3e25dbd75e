//! A TCP proxy in front of the fake server that can be switched off: while it is down, it
//! closes every connection it has and refuses new ones (accepts and closes them at once),
//! as a server that restarts or a network that drops out would.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug)]
pub struct Proxy {
    pub addr: SocketAddr,
    down: Arc<AtomicBool>,
    /// Bumped to close every open connection.
    generation: watch::Sender<u64>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let down = Arc::new(AtomicBool::new(false));
        let (generation, _) = watch::channel(0u64);
        let proxy = Proxy {
            addr,
            down: down.clone(),
            generation: generation.clone(),
        };
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                if down.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let mut closed = generation.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = closed.changed() => {}
                    }
                });
            }
        });
        proxy
    }

    /// Down: existing connections are cut, new ones closed at once. Up: traffic flows again.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        if down {
            self.generation.send_modify(|g| *g += 1);
        }
    }
}
