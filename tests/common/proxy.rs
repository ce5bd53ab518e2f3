//! A TCP proxy between a client and a test server that can cut every open connection at once, as a
//! network that drops connections does; it records what clients sent on each connection.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A running proxy (stopped when dropped).
pub struct Proxy {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    accept: JoinHandle<()>,
}

#[derive(Default)]
struct State {
    /// The copying tasks of open connections.
    open: Vec<JoinHandle<()>>,
    /// What the clients sent, per connection, in the order they connected.
    sent: Vec<Arc<Mutex<Vec<u8>>>>,
}

impl Proxy {
    /// Listens on a free local port and forwards each connection to `target`.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                let sent = Arc::new(Mutex::new(Vec::new()));
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let record = sent.clone();
                let upstream = tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n) = client_read.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        record.lock().unwrap().extend_from_slice(&buf[..n]);
                        if server_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = server_write.shutdown().await;
                });
                let downstream = tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n) = server_read.read(&mut buf).await {
                        if n == 0 || client_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = client_write.shutdown().await;
                });
                let mut state = shared.lock().unwrap();
                state.open.extend([upstream, downstream]);
                state.sent.push(sent);
            }
        });
        Proxy {
            addr,
            state,
            accept,
        }
    }

    /// `http://<proxy address>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Closes every open connection (both sides); new connections are still forwarded.
    pub fn cut(&self) {
        for task in self.state.lock().unwrap().open.drain(..) {
            task.abort();
        }
    }

    /// Connections made so far.
    pub fn connections(&self) -> usize {
        self.state.lock().unwrap().sent.len()
    }

    /// What the clients sent on each connection, as text.
    pub fn sent(&self) -> Vec<String> {
        self.state
            .lock()
            .unwrap()
            .sent
            .iter()
            .map(|s| String::from_utf8_lossy(&s.lock().unwrap()).into_owned())
            .collect()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
