//! Who gets a connection to the HTTPS listener, and for how long: at most
//! [`MAX_CONNECTIONS`] in all and [`MAX_CONNECTIONS_PER_IP`] from one
//! address, so one client (no certificate is needed to connect) cannot take
//! every slot; and a connection that has read nothing for
//! [`IDLE_TIMEOUT`] is closed. Every request ends within
//! [`crate::REQUEST_TIMEOUT`], shorter than the idle timeout, so a
//! connection idle that long has no request left to answer.

use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use qk_net::admission::{AddressSlot, AddressSlots};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::{MAX_CONNECTIONS, REQUEST_TIMEOUT};

/// Most connections from one IP address at once.
pub const MAX_CONNECTIONS_PER_IP: usize = 256;
/// Most of those that may be in their TLS handshake at once: clients of one
/// host that stall their handshakes (each may take
/// [`crate::TLS_HANDSHAKE_TIMEOUT`]) hold this many slots, not 256.
pub const MAX_HANDSHAKES_PER_IP: usize = 16;
/// A connection that has read no byte for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(REQUEST_TIMEOUT.as_secs() + 30);

/// The listener's connection slots.
#[derive(Debug)]
pub struct Admission {
    total: Arc<Semaphore>,
    addresses: Arc<AddressSlots>,
    handshakes: Arc<AddressSlots>,
}

/// One admitted connection; its slots are freed on drop.
#[derive(Debug)]
pub struct Slot {
    _address: AddressSlot,
    _permit: OwnedSemaphorePermit,
    handshake: Option<AddressSlot>,
}

impl Slot {
    /// The TLS handshake is over (done or failed): its slot is free.
    pub fn handshake_over(&mut self) {
        self.handshake = None;
    }
}

/// Why a connection was not admitted.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    Full,
    TooManyFrom(IpAddr),
    TooManyHandshakesFrom(IpAddr),
}

impl Admission {
    pub fn new() -> Arc<Admission> {
        Admission::with_limits(
            MAX_CONNECTIONS,
            MAX_CONNECTIONS_PER_IP,
            MAX_HANDSHAKES_PER_IP,
        )
    }

    pub fn with_limits(total: usize, per_ip: usize, handshakes_per_ip: usize) -> Arc<Admission> {
        Arc::new(Admission {
            total: Arc::new(Semaphore::new(total)),
            addresses: AddressSlots::new(per_ip),
            handshakes: AddressSlots::new(handshakes_per_ip),
        })
    }

    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refused> {
        let permit = self
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refused::Full)?;
        let address = self
            .addresses
            .try_take(ip)
            .ok_or(Refused::TooManyFrom(ip))?;
        let handshake = self
            .handshakes
            .try_take(ip)
            .ok_or(Refused::TooManyHandshakesFrom(ip))?;
        Ok(Slot {
            _address: address,
            _permit: permit,
            handshake: Some(handshake),
        })
    }

    #[cfg(test)]
    fn open_from(&self, ip: IpAddr) -> usize {
        self.addresses.held_by(&ip)
    }
}

/// When a connection last read a byte, in milliseconds since it opened.
#[derive(Debug)]
pub struct Activity {
    opened: Instant,
    last_read_ms: AtomicU64,
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            opened: Instant::now(),
            last_read_ms: AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        let now = self.opened.elapsed().as_millis() as u64;
        self.last_read_ms.fetch_max(now, Ordering::Relaxed);
    }

    /// When the connection becomes idle unless it reads before then.
    pub fn idle_at(&self, idle: Duration) -> Instant {
        self.opened + Duration::from_millis(self.last_read_ms.load(Ordering::Relaxed)) + idle
    }
}

/// An I/O stream that records when it last read a byte.
pub struct Watched<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> Watched<T> {
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        Watched { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Resolves once the connection has read nothing for `idle`.
pub async fn idle(activity: &Activity, idle: Duration) {
    loop {
        let at = activity.idle_at(idle);
        if Instant::now() >= at {
            return;
        }
        tokio::time::sleep_until(at).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn one_address_cannot_take_every_slot() {
        let admission = Admission::with_limits(4, 2, 2);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = admission.admit(a).expect("first");
        let _second = admission.admit(a).expect("second");
        assert_eq!(admission.admit(a).unwrap_err(), Refused::TooManyFrom(a));
        let _other = admission.admit(b).expect("another address still gets in");
        drop(first);
        assert_eq!(admission.open_from(a), 1);
        let _again = admission.admit(a).expect("a freed slot is reusable");
        let _b2 = admission.admit(b).expect("b's second");
        assert_eq!(
            admission.admit("10.0.0.3".parse().unwrap()).unwrap_err(),
            Refused::Full
        );
    }

    #[test]
    fn a_refused_address_does_not_keep_a_global_slot() {
        let admission = Admission::with_limits(2, 1, 1);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let _first = admission.admit(a).expect("first");
        for _ in 0..10 {
            assert_eq!(admission.admit(a).unwrap_err(), Refused::TooManyFrom(a));
        }
        admission
            .admit("10.0.0.2".parse().unwrap())
            .expect("the refusals gave their global slot back");
    }

    #[test]
    fn an_address_has_only_so_many_handshakes_in_progress() {
        let admission = Admission::with_limits(8, 4, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let mut first = admission.admit(a).expect("first");
        let _second = admission.admit(a).expect("second");
        assert_eq!(
            admission.admit(a).unwrap_err(),
            Refused::TooManyHandshakesFrom(a)
        );
        first.handshake_over();
        let _third = admission
            .admit(a)
            .expect("a finished handshake frees its slot");
        assert_eq!(admission.open_from(a), 3, "the connections stay counted");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_only_after_reading_nothing_for_the_timeout() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(64);
        let activity = Activity::new();
        let mut watched = Watched::new(server, activity.clone());
        let idle_after = Duration::from_secs(120);
        tokio::time::advance(Duration::from_secs(100)).await;
        client.write_all(b"GET").await.expect("write");
        let mut buf = [0u8; 3];
        watched.read_exact(&mut buf).await.expect("read");
        let opened = Instant::now() - Duration::from_secs(100);
        assert_eq!(
            activity.idle_at(idle_after),
            opened + Duration::from_secs(220)
        );
        let waited = Instant::now();
        idle(&activity, idle_after).await;
        assert_eq!(Instant::now() - waited, Duration::from_secs(120));
    }
}
