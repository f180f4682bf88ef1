//! A tansu broker (a Kafka-protocol broker with an in-memory store) on a
//! free loopback port. Shared by the integration tests and the end-to-end
//! benchmark (which includes this file by path).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::run::{log_tail, signal};

/// A running broker; it forgets everything when killed, which dropping it
/// does (after resuming it, should it be stopped).
pub struct Broker {
    child: Child,
    /// `127.0.0.1:port`, the bootstrap address.
    pub addr: String,
}

/// `$TANSU`, else `~/.cargo/bin/tansu` when it exists, else `tansu` on PATH.
fn tansu_bin() -> String {
    if let Ok(p) = std::env::var("TANSU") {
        return p;
    }
    if let Ok(home) = std::env::var("HOME") {
        let p = format!("{home}/.cargo/bin/tansu");
        if Path::new(&p).exists() {
            return p;
        }
    }
    "tansu".into()
}

impl Broker {
    /// Starts a broker, its log in `log`, and waits until it listens.
    pub fn launch(log: &Path) -> Result<Broker, String> {
        let port = pgbridge::cluster::free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let file = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let child = Command::new(tansu_bin())
            .args(["broker", "--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot start tansu ({e}); install it: \
                     cargo install tansu --locked --features dynostore"
                )
            })?;
        let mut broker = Broker {
            child,
            addr: format!("127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&broker.addr).is_err() {
            if let Ok(Some(status)) = broker.child.try_wait() {
                return Err(format!(
                    "tansu exited at start ({status}): {}",
                    log_tail(log, 10)
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "tansu did not listen on {}: {}",
                    broker.addr,
                    log_tail(log, 10)
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(broker)
    }

    /// The broker's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        signal(self.child.id(), "-CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
