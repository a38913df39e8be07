//! A descriptor held in reserve for the accept loop.
//!
//! When the process runs out of file descriptors, `accept` fails with
//! `EMFILE` and the connection stays in the kernel's backlog: the client
//! hangs, and the loop would retry the same failing call. The classic
//! remedy (libuv, nginx, Netty do the same) is one spare descriptor opened
//! at start: on `EMFILE` it is closed, the waiting connection is accepted
//! and closed at once (its client sees a closed connection and retries),
//! and the spare is opened again. The listener thus always accepts; it
//! sheds load instead of hanging when ferry is out of descriptors.

use std::fs::File;
use std::net::SocketAddr;
use std::time::Duration;

use futures::FutureExt;
use tokio::net::{TcpListener, TcpStream};

/// One spare descriptor (`/dev/null`).
#[derive(Debug)]
pub struct Spare(Option<File>);

/// What [`Spare::after_accept_error`] did.
#[derive(Debug)]
pub enum Recovered {
    /// Descriptors were free again by the time the waiting connection was
    /// accepted: serve it.
    Serve(TcpStream, SocketAddr),
    /// A waiting connection was closed at once for want of descriptors
    /// (and counted in the `shed` counter first).
    Shed,
    /// Nothing was waiting, or the error was another: waited a little.
    Waited,
}

impl Spare {
    pub fn new() -> Spare {
        Spare(File::open("/dev/null").ok())
    }

    /// Called after `accept` failed with `e`. When the process is out of
    /// descriptors, the spare makes room for the waiting connection; if the
    /// spare cannot be opened again with the connection held, the
    /// connection is closed (shed), else it is served. Otherwise (or with
    /// no spare to give) waits a little, so a failing accept does not spin.
    pub async fn after_accept_error(
        &mut self,
        listener: &TcpListener,
        e: &std::io::Error,
        shed: &prometheus_client::metrics::counter::Counter,
    ) -> Recovered {
        if self.0.is_none() {
            // Lost to another task the last time round: try again.
            *self = Spare::new();
        }
        if out_of_descriptors(e) && self.0.take().is_some() {
            // Only a connection already waiting: Linux reports EMFILE even
            // with an empty backlog, and one that arrives later may find
            // descriptors again.
            let waiting = listener.accept().now_or_never();
            *self = Spare::new();
            match waiting {
                Some(Ok((stream, peer))) if self.0.is_some() => {
                    return Recovered::Serve(stream, peer)
                }
                Some(Ok((stream, _))) => {
                    // Counted before it is closed: whoever sees the close
                    // sees the count.
                    shed.inc();
                    drop(stream);
                    *self = Spare::new();
                    return Recovered::Shed;
                }
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        Recovered::Waited
    }
}

/// `EMFILE` (this process) or `ENFILE` (the whole system).
fn out_of_descriptors(e: &std::io::Error) -> bool {
    use rustix::io::Errno;
    let code = e.raw_os_error();
    code == Some(Errno::MFILE.raw_os_error()) || code == Some(Errno::NFILE.raw_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_descriptor_exhaustion_is_shed() {
        let emfile = std::io::Error::from_raw_os_error(rustix::io::Errno::MFILE.raw_os_error());
        assert!(out_of_descriptors(&emfile));
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(!out_of_descriptors(&reset));
    }

    #[tokio::test]
    async fn the_spare_is_taken_back_after_an_error_that_is_not_exhaustion() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut spare = Spare::new();
        assert!(spare.0.is_some());
        let other = std::io::Error::from(std::io::ErrorKind::ConnectionAborted);
        assert!(matches!(
            spare
                .after_accept_error(&listener, &other, &Default::default())
                .await,
            Recovered::Waited
        ));
        assert!(spare.0.is_some());
    }
}
