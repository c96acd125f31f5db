//! A TCP relay on loopback that can go silent, as a stateful firewall does.

/// A cable between a client and a server that a firewall can forget: every
/// connection made before [`Cable::forget`] goes silent (bytes are read from neither
/// side, both stay open), as a stateful firewall leaves a connection whose entry it
/// dropped; connections made after it pass.
pub struct Cable {
    pub addr: std::net::SocketAddr,
    generation: tokio::sync::watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Cable {
    pub async fn to(target: std::net::SocketAddr) -> Cable {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let (generation, _) = tokio::sync::watch::channel(0u64);
        let watch = generation.clone();
        let task = tokio::spawn(async move {
            let mut pipes = tokio::task::JoinSet::new();
            while let Ok((near, _)) = listener.accept().await {
                let Ok(far) = tokio::net::TcpStream::connect(target).await else {
                    continue;
                };
                let born = *watch.borrow();
                let (near_r, near_w) = near.into_split();
                let (far_r, far_w) = far.into_split();
                pipes.spawn(pipe(near_r, far_w, watch.subscribe(), born));
                pipes.spawn(pipe(far_r, near_w, watch.subscribe(), born));
            }
        });
        Cable {
            addr,
            generation,
            task,
        }
    }

    pub fn forget(&self) {
        self.generation.send_modify(|g| *g += 1);
    }
}

impl Drop for Cable {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut generation: tokio::sync::watch::Receiver<u64>,
    born: u64,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            _ = async { generation.wait_for(|g| *g != born).await.is_ok() } => {
                // Forgotten: hold both ends open and pass nothing, until aborted.
                std::future::pending::<()>().await;
            }
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if to.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            },
        }
    }
}
