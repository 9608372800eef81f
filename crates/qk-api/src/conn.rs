//! Who gets a connection to the HTTPS listener, and for how long: at most
//! [`MAX_CONNECTIONS`] in all and [`MAX_CONNECTIONS_PER_IP`] from one
//! address, so one client (no certificate is needed to connect) cannot take
//! every slot; and a connection that has read nothing for
//! [`IDLE_TIMEOUT`] is closed. Every request ends within
//! [`crate::REQUEST_TIMEOUT`], shorter than the idle timeout, so a
//! connection idle that long has no request left to answer.
//!
//! When every slot is taken (idle connections from many addresses, each
//! within its share), a new connection is not refused: an open connection
//! with no request in progress is closed to make room for it — one from
//! the address that holds the most slots, and among those the one that has
//! gone longest without a request (bytes that are no request, such as
//! HTTP/2 pings, do not count). A client whose kept-alive connection is
//! closed that way connects again; one whose request (its answer included)
//! is in progress keeps its connection.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use qk_net::admission::{AddressSlot, AddressSlots};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
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
/// How long a new connection waits for the connection closed to make room
/// for it to give its slot back.
pub const ROOM_WAIT: Duration = Duration::from_secs(2);

/// The listener's connection slots.
#[derive(Debug)]
pub struct Admission {
    total: Arc<Semaphore>,
    addresses: Arc<AddressSlots>,
    handshakes: Arc<AddressSlots>,
    /// The connections holding a slot of `total`, by admission number:
    /// where one to close is chosen when every slot is taken.
    open: Mutex<BTreeMap<u64, (IpAddr, Arc<Activity>)>>,
    admitted: AtomicU64,
}

/// One admitted connection; its slots are freed on drop.
#[derive(Debug)]
pub struct Slot {
    _address: AddressSlot,
    /// `None` until the connection closed to make room gives its slot back.
    permit: Option<OwnedSemaphorePermit>,
    handshake: Option<AddressSlot>,
    activity: Arc<Activity>,
    admission: Arc<Admission>,
    number: u64,
    ip: IpAddr,
}

impl Slot {
    /// The TLS handshake is over (done or failed): its slot is free.
    pub fn handshake_over(&mut self) {
        self.handshake = None;
    }

    /// What the connection read and serves, and whether it must close.
    pub fn activity(&self) -> &Arc<Activity> {
        &self.activity
    }

    /// This connection was chosen to make room but began a request first:
    /// another idle connection is told to close in its place, so the new
    /// connection it was chosen for still gets a slot.
    pub fn pass_on_closing(&self) {
        self.admission.close_longest_idle();
    }

    /// `true` once the connection holds one of the listener's slots: at
    /// once, or when the connection closed to make room for it gave its
    /// slot back within `wait`.
    pub async fn room_within(&mut self, wait: Duration) -> bool {
        if self.permit.is_none() {
            let freed = self.admission.total.clone().acquire_owned();
            match tokio::time::timeout(wait, freed).await {
                Ok(Ok(permit)) => self.permit = Some(permit),
                _ => return false,
            }
            self.admission
                .register(self.number, self.ip, &self.activity);
        }
        true
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.admission.open().remove(&self.number);
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
            open: Mutex::new(BTreeMap::new()),
            admitted: AtomicU64::new(0),
        })
    }

    /// Admits a connection from `ip`. When every slot is taken, the
    /// connection idle the longest is told to close and the new one gets
    /// its slot (see [`Slot::room_within`]); refused only when every open
    /// connection is serving a request or already closing.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refused> {
        let address = self
            .addresses
            .try_take(ip)
            .ok_or(Refused::TooManyFrom(ip))?;
        let handshake = self
            .handshakes
            .try_take(ip)
            .ok_or(Refused::TooManyHandshakesFrom(ip))?;
        let permit = self.total.clone().try_acquire_owned().ok();
        if permit.is_none() && !self.close_longest_idle() {
            return Err(Refused::Full);
        }
        let number = self.admitted.fetch_add(1, Ordering::Relaxed);
        let activity = Activity::new();
        if permit.is_some() {
            self.register(number, ip, &activity);
        }
        Ok(Slot {
            _address: address,
            permit,
            handshake: Some(handshake),
            activity,
            admission: self.clone(),
            number,
            ip,
        })
    }

    /// The registry; a panic elsewhere while it was held leaves it usable
    /// (every change to it is one insert or remove).
    fn open(&self) -> MutexGuard<'_, BTreeMap<u64, (IpAddr, Arc<Activity>)>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts the connection among the open ones; its time without a
    /// request starts now (not when it began waiting for its slot).
    fn register(&self, number: u64, ip: IpAddr, activity: &Arc<Activity>) {
        activity.served();
        self.open().insert(number, (ip, activity.clone()));
    }

    /// Tells one open connection with no request in progress (and not
    /// already closing) to close: from the address holding the most slots,
    /// the one longest without a request. `false` when there is none. Only
    /// runs when every slot is taken: a scan of at most `total` connections.
    fn close_longest_idle(&self) -> bool {
        let open = self.open();
        let mut held: HashMap<IpAddr, usize> = HashMap::new();
        for (ip, _) in open.values() {
            *held.entry(*ip).or_default() += 1;
        }
        let victim = open
            .values()
            .filter(|(_, a)| a.may_close())
            .max_by_key(|(ip, a)| (held.get(ip).copied(), Reverse(a.idle_since())));
        match victim {
            Some((_, activity)) => {
                activity.close();
                true
            }
            None => false,
        }
    }

    #[cfg(test)]
    fn open_from(&self, ip: IpAddr) -> usize {
        self.addresses.held_by(&ip)
    }
}

/// When a connection last read a byte and last finished a request (in
/// milliseconds since it opened), how many requests it is serving, and
/// whether it was told to close to make room for a new connection.
#[derive(Debug)]
pub struct Activity {
    opened: Instant,
    last_read_ms: AtomicU64,
    last_served_ms: AtomicU64,
    requests_in_flight: AtomicU32,
    closing: AtomicBool,
    close_told: Notify,
}

/// A request being served on a connection; ends on drop.
pub struct InFlight(Arc<Activity>);

/// A response body that keeps its request counted as in progress until the
/// body is written out (or dropped), so a connection still sending an
/// answer is never closed to make room.
pub struct CountedBody {
    body: axum::body::Body,
    _in_flight: InFlight,
}

impl CountedBody {
    pub fn new(body: axum::body::Body, in_flight: InFlight) -> Self {
        CountedBody {
            body,
            _in_flight: in_flight,
        }
    }
}

impl axum::body::HttpBody for CountedBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.requests_in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.served();
    }
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            opened: Instant::now(),
            last_read_ms: AtomicU64::new(0),
            last_served_ms: AtomicU64::new(0),
            requests_in_flight: AtomicU32::new(0),
            closing: AtomicBool::new(false),
            close_told: Notify::new(),
        })
    }

    fn touch(&self) {
        let now = self.opened.elapsed().as_millis() as u64;
        self.last_read_ms.fetch_max(now, Ordering::Relaxed);
    }

    /// A request ended (or the connection just got its slot).
    fn served(&self) {
        let now = self.opened.elapsed().as_millis() as u64;
        self.last_served_ms.fetch_max(now, Ordering::Relaxed);
    }

    /// Counts a request as served until the guard is dropped.
    pub fn begin_request(self: &Arc<Self>) -> InFlight {
        self.requests_in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    fn idle_since(&self) -> Instant {
        self.opened + Duration::from_millis(self.last_served_ms.load(Ordering::Relaxed))
    }

    fn may_close(&self) -> bool {
        self.requests_in_flight.load(Ordering::Acquire) == 0
            && !self.closing.load(Ordering::Acquire)
    }

    fn close(&self) {
        self.closing.store(true, Ordering::Release);
        self.close_told.notify_one();
    }

    /// Resolves when the connection was told to close to make room.
    pub async fn told_to_close(&self) {
        self.close_told.notified().await;
    }

    /// Whether a connection told to close may close now: `false` (and it is
    /// a candidate again) when a request began since it was chosen, which
    /// is then served, and another connection is chosen in its place
    /// ([`Slot::pass_on_closing`]); when there is none, the new connection
    /// is closed after [`ROOM_WAIT`].
    pub fn closes_now(&self) -> bool {
        let idle = self.requests_in_flight.load(Ordering::Acquire) == 0;
        if !idle {
            self.closing.store(false, Ordering::Release);
        }
        idle
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
        let again = admission.admit(a).expect("a freed slot is reusable");
        let b2 = admission.admit(b).expect("b's second");
        let _busy: Vec<InFlight> = [&again, &_second, &_other, &b2]
            .iter()
            .map(|slot| slot.activity().begin_request())
            .collect();
        assert_eq!(
            admission.admit("10.0.0.3".parse().unwrap()).unwrap_err(),
            Refused::Full,
            "every connection is serving a request: none is closed for a new one"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn when_every_slot_is_taken_the_longest_idle_connection_makes_room() {
        let admission = Admission::with_limits(3, 3, 3);
        let ip = |n: u8| IpAddr::from([10, 0, 0, n]);
        let oldest = admission.admit(ip(1)).expect("first");
        tokio::time::advance(Duration::from_secs(1)).await;
        let busy = admission.admit(ip(2)).expect("second");
        let _request = busy.activity().begin_request();
        tokio::time::advance(Duration::from_secs(1)).await;
        let newer = admission.admit(ip(3)).expect("third");
        tokio::time::advance(Duration::from_secs(1)).await;

        let mut new = admission.admit(ip(4)).expect("room is made");
        assert!(oldest.activity().closing.load(Ordering::Acquire));
        assert!(!busy.activity().closing.load(Ordering::Acquire));
        assert!(!newer.activity().closing.load(Ordering::Acquire));
        assert!(oldest.activity().closes_now());
        let waiting = tokio::spawn(async move { new.room_within(ROOM_WAIT).await.then_some(new) });
        tokio::task::yield_now().await;
        drop(oldest);
        let new = waiting
            .await
            .unwrap()
            .expect("the closed connection's slot");

        // The next one closes `newer`: the new connection is younger, and a
        // connection with a request in progress is never chosen.
        let _next = admission.admit(ip(5)).expect("room again");
        assert!(newer.activity().closing.load(Ordering::Acquire));
        assert!(!new.activity().closing.load(Ordering::Acquire));
        assert!(!busy.activity().closing.load(Ordering::Acquire));
        let _served = new.activity().begin_request();
        assert_eq!(
            admission.admit(ip(6)).unwrap_err(),
            Refused::Full,
            "one connection is closing already, the others are serving"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn room_is_made_first_on_the_address_that_holds_the_most_slots() {
        let admission = Admission::with_limits(3, 3, 3);
        let (lone, crowd) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        let oldest = admission.admit(lone).expect("the lone address's");
        tokio::time::advance(Duration::from_secs(5)).await;
        let first = admission.admit(crowd).expect("the crowd's first");
        tokio::time::advance(Duration::from_secs(1)).await;
        let second = admission.admit(crowd).expect("the crowd's second");
        // Reading bytes that are no request (say, HTTP/2 pings) does not
        // make a connection look busy.
        first.activity().touch();

        let _new = admission.admit(IpAddr::from([10, 0, 0, 3])).expect("room");
        assert!(first.activity().closing.load(Ordering::Acquire));
        assert!(!second.activity().closing.load(Ordering::Acquire));
        assert!(!oldest.activity().closing.load(Ordering::Acquire));
    }

    #[tokio::test]
    async fn a_request_is_in_progress_until_its_answer_is_written_out() {
        use axum::body::HttpBody as _;
        let activity = Activity::new();
        let mut body = CountedBody::new(
            axum::body::Body::from("the answer"),
            activity.begin_request(),
        );
        assert!(
            !activity.may_close(),
            "the handler returned, the body is unsent"
        );
        let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        assert!(frame.is_some());
        assert!(
            !activity.may_close(),
            "the body is still held by the connection"
        );
        drop(body);
        assert!(activity.may_close(), "written out and dropped");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_began_a_request_after_it_was_chosen_stays_open() {
        let admission = Admission::with_limits(1, 1, 1);
        let chosen = admission.admit(IpAddr::from([10, 0, 0, 1])).expect("first");
        let mut new = admission
            .admit(IpAddr::from([10, 0, 0, 2]))
            .expect("room is made");
        let request = chosen.activity().begin_request();
        assert!(!chosen.activity().closes_now(), "a request is in progress");
        assert!(!new.room_within(ROOM_WAIT).await, "no slot was freed");
        drop(request);
        assert!(chosen.activity().may_close(), "a candidate again");
    }

    #[tokio::test(start_paused = true)]
    async fn another_idle_connection_gives_way_when_the_chosen_one_began_a_request() {
        let admission = Admission::with_limits(2, 2, 2);
        let chosen = admission.admit(IpAddr::from([10, 0, 0, 1])).expect("first");
        tokio::time::advance(Duration::from_secs(1)).await;
        let other = admission
            .admit(IpAddr::from([10, 0, 0, 2]))
            .expect("second");
        let mut new = admission.admit(IpAddr::from([10, 0, 0, 3])).expect("room");
        assert!(chosen.activity().closing.load(Ordering::Acquire));
        let _request = chosen.activity().begin_request();
        assert!(!chosen.activity().closes_now());
        chosen.pass_on_closing();
        assert!(other.activity().closing.load(Ordering::Acquire));
        let waiting = tokio::spawn(async move { new.room_within(ROOM_WAIT).await });
        tokio::task::yield_now().await;
        drop(other);
        assert!(waiting.await.unwrap(), "the other connection's slot");
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
