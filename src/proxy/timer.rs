//! Coarse timers for the per-request deadlines: hyper's `header_read_timeout` (as its
//! [`hyper::rt::Timer`], [`CoarseTimer`]) and the backend `response_timeout` ([`timeout`]).
//!
//! Hand-written because tokio's timer costs two locked wheel updates and two clock reads
//! per timer: with two timers per request that was 7% of a proxied request (callgrind, see
//! bench/RESULTS.md). These deadlines are seconds long; [`TICK`] precision is plenty.
//!
//! A pending [`Sleep`] parks its waker in a slot of a sharded slab (the shard of the thread
//! that first polled it). One ticker thread advances a shared millisecond clock every tick
//! and wakes the sleeps that are due. That clock ([`coarse_ms`]) is also what deadlines are
//! measured from, so setting one reads no clock: a deadline counts from the last tick plus
//! a tick, an upper bound of the real time, so a sleep does not fire early while the
//! ticker keeps time; it fires up to about two ticks late (more if the ticker is starved).
//! The idle connection pool reads the same clock for its connections' ages.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// How often the ticker thread runs.
pub(super) const TICK: Duration = Duration::from_millis(TICK_MS);
const TICK_MS: u64 = 10;
const SHARDS: usize = 16;

struct Entry {
    deadline: u64,
    waker: Waker,
    /// Already woken for this deadline (it stays until its sleep drops or re-registers).
    woken: bool,
}

#[derive(Default)]
struct Shard {
    slab: slab::Slab<Entry>,
    /// No entry is due before this. Removals leave it early, which only costs a scan.
    next: u64,
}

struct Wheel {
    base: Instant,
    /// Milliseconds since `base`, as of the last tick, less the pauses (see [`PAUSE_MS`]).
    now: AtomicU64,
    /// The real clock (ms since `base`) at the last tick, and the pauses so far: only the
    /// ticker thread writes them.
    last_real: AtomicU64,
    paused: AtomicU64,
    shards: [Mutex<Shard>; SHARDS],
}

/// A gap this long between two ticks (10 ms apart) is a pause of the whole process (a
/// SIGSTOP, a frozen VM): the clock advances one tick across it instead of the gap. Timers
/// do not count time the node itself could not run: a request read right after the pause,
/// whose deadline was set from the clock before the tick caught up, would otherwise time
/// out at once (a spurious 504), and one in flight would be cut for the pause's sake.
const PAUSE_MS: u64 = 1000;

impl Wheel {
    fn now(&self) -> u64 {
        self.now.load(Ordering::Acquire)
    }

    fn shard(&self, i: usize) -> MutexGuard<'_, Shard> {
        // A panic while holding a shard cannot leave it inconsistent for these uses.
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    fn tick(&self) {
        let real = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        let now = self.advance(real);
        self.now.store(now, Ordering::Release);
        for i in 0..SHARDS {
            let mut s = self.shard(i);
            if s.next > now {
                continue;
            }
            let mut next = u64::MAX;
            for (_, e) in s.slab.iter_mut() {
                if e.woken {
                    continue;
                }
                if e.deadline <= now {
                    e.woken = true;
                    // Only schedules the task (tokio never polls inside wake).
                    e.waker.wake_by_ref();
                } else {
                    next = next.min(e.deadline);
                }
            }
            s.next = next;
        }
    }

    /// The clock for real time `real` (ms since `base`): the real clock less the pauses.
    fn advance(&self, real: u64) -> u64 {
        let prev = self.last_real.swap(real, Ordering::Relaxed);
        let gap = real.saturating_sub(prev);
        let mut paused = self.paused.load(Ordering::Relaxed);
        if gap > PAUSE_MS {
            paused += gap - TICK_MS;
            self.paused.store(paused, Ordering::Relaxed);
        }
        real.saturating_sub(paused)
    }
}

static WHEEL: OnceLock<Wheel> = OnceLock::new();
static TICKER: Mutex<TickerThread> = Mutex::new(TickerThread {
    users: 0,
    implicit: false,
    thread: None,
});
/// A ticker thread runs: read on a sleep's first poll (one atomic load).
static RUNNING: AtomicBool = AtomicBool::new(false);

/// The ticker thread and who needs it.
struct TickerThread {
    /// Live [`Ticker`] guards.
    users: usize,
    /// A sleep was polled with no guard alive (outside a node): keep ticking for good.
    implicit: bool,
    thread: Option<(Arc<AtomicBool>, std::thread::JoinHandle<()>)>,
}

impl TickerThread {
    fn ensure(&mut self) -> Result<(), String> {
        if self.thread.is_some() {
            return Ok(());
        }
        let w = wheel();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("caracal-timer".into())
            .spawn(move || {
                while !flag.load(Ordering::Acquire) {
                    std::thread::sleep(TICK);
                    w.tick();
                }
            })
            .map_err(|e| format!("cannot start the timer thread: {e}"))?;
        self.thread = Some((stop, handle));
        RUNNING.store(true, Ordering::Release);
        Ok(())
    }
}

fn ticker() -> MutexGuard<'static, TickerThread> {
    TICKER.lock().unwrap_or_else(|p| p.into_inner())
}

/// Keeps the ticker thread running while it lives; the thread stops when the last guard
/// is dropped (a node holds one while it runs, so a stopped node leaves no thread).
#[must_use = "the ticker stops when the guard is dropped"]
pub(crate) struct Ticker(());

impl Drop for Ticker {
    fn drop(&mut self) {
        let stopped = {
            let mut t = ticker();
            t.users = t.users.saturating_sub(1);
            if t.users == 0 && !t.implicit {
                RUNNING.store(false, Ordering::Release);
                t.thread.take()
            } else {
                None
            }
        };
        if let Some((stop, handle)) = stopped {
            stop.store(true, Ordering::Release);
            let _ = handle.join();
        }
    }
}

/// Whether the ticker thread runs.
pub fn ticking() -> bool {
    ticker().thread.is_some()
}

fn wheel() -> &'static Wheel {
    WHEEL.get_or_init(|| Wheel {
        base: Instant::now(),
        now: AtomicU64::new(0),
        last_real: AtomicU64::new(0),
        paused: AtomicU64::new(0),
        shards: std::array::from_fn(|_| Mutex::new(Shard::default())),
    })
}

/// Starts the ticker thread if it is not running, and keeps it running while the guard
/// lives. The node calls it at startup so that a failure to start a thread is an error
/// there, not a hang later.
pub(crate) fn start() -> Result<Ticker, String> {
    let mut t = ticker();
    t.ensure()?;
    t.users += 1;
    Ok(Ticker(()))
}

/// A sleep polled with no ticker: start one for good (never hang); `false` if a thread
/// cannot be started.
fn ensure_running() -> bool {
    let mut t = ticker();
    t.implicit = true;
    t.ensure().is_ok()
}

/// The shard of the calling thread.
fn my_shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
}

/// The ticker's clock in milliseconds since the wheel's base: the time of the last tick,
/// so at most about a [`TICK`] behind the real clock (more only if the ticker thread is
/// starved), and free to read. For the deadlines of the timers and the age of idle
/// connections, which are seconds long: a real clock read costs ~16 ns on this VM and was
/// 1.3% of a proxied request at ~9 reads per request (perf, bench/RESULTS.md). The node
/// starts the ticker ([`start`]); without it this clock stands still.
pub(super) fn coarse_ms() -> u64 {
    wheel().now()
}

/// [`coarse_ms`] plus a tick: an upper bound of the real time while the ticker keeps time,
/// for deadlines that must not come early.
fn coarse_upper_ms() -> u64 {
    coarse_ms().saturating_add(TICK_MS)
}

/// [`coarse_upper_ms`] as an `Instant` (hyper's timer wants one).
fn coarse_upper() -> Instant {
    wheel().base + Duration::from_millis(coarse_upper_ms())
}

/// The wheel's millisecond of `deadline`, rounded up: a sleep is never woken early (the
/// clock it is compared with is exact at each tick and only lags between ticks).
fn deadline_ms(deadline: Instant) -> u64 {
    let d = deadline.saturating_duration_since(wheel().base);
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    if d.subsec_nanos() % 1_000_000 == 0 {
        ms
    } else {
        ms.saturating_add(1)
    }
}

/// A future that completes at its deadline (see the module docs for the precision).
#[derive(Debug)]
pub(super) struct Sleep {
    deadline: u64,
    /// (shard, slab key) once registered.
    slot: Option<(usize, usize)>,
}

impl Sleep {
    /// A sleep of at least `d`, measured on the ticker's clock from its last tick plus a
    /// tick: never short while the ticker keeps time, up to two ticks long.
    pub(super) fn new(d: Duration) -> Self {
        let d_ms = u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
        Self::at(coarse_upper_ms().saturating_add(d_ms))
    }

    pub(super) fn until(deadline: Instant) -> Self {
        Self::at(deadline_ms(deadline))
    }

    fn at(deadline: u64) -> Self {
        Self {
            deadline,
            slot: None,
        }
    }

    fn set_deadline(&mut self, deadline: Instant) {
        let ms = deadline_ms(deadline);
        self.deadline = ms;
        if let Some((i, key)) = self.slot {
            let mut s = wheel().shard(i);
            if let Some(e) = s.slab.get_mut(key) {
                e.deadline = ms;
                e.woken = false;
            }
            s.next = s.next.min(ms);
        }
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let w = wheel();
        if w.now() >= this.deadline {
            return Poll::Ready(());
        }
        match this.slot {
            // No ticker (outside a node, or it failed at startup, which stops the node):
            // start one, or fire now; never hang.
            None if !RUNNING.load(Ordering::Acquire) && !ensure_running() => return Poll::Ready(()),
            None => {
                let i = my_shard();
                let mut s = w.shard(i);
                let key = s.slab.insert(Entry {
                    deadline: this.deadline,
                    waker: cx.waker().clone(),
                    woken: false,
                });
                s.next = s.next.min(this.deadline);
                this.slot = Some((i, key));
            }
            Some((i, key)) => {
                let mut s = w.shard(i);
                if let Some(e) = s.slab.get_mut(key) {
                    if !e.waker.will_wake(cx.waker()) {
                        e.waker = cx.waker().clone();
                    }
                }
            }
        }
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some((i, key)) = self.slot {
            wheel().shard(i).slab.try_remove(key);
        }
    }
}

impl hyper::rt::Sleep for Sleep {}

/// hyper's timer: its header-read deadline per request costs a slab slot, not a wheel entry.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct CoarseTimer;

impl hyper::rt::Timer for CoarseTimer {
    /// hyper reads it for deadlines (`now() + header_read_timeout`, HTTP/2 keep-alive) and
    /// for the time of the last HTTP/2 read: the upper bound keeps deadlines from coming
    /// early, without a clock read per request. (It would skew the RTT of HTTP/2's
    /// adaptive window, which the frontend does not enable.)
    fn now(&self) -> Instant {
        coarse_upper()
    }

    fn sleep(&self, d: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Sleep::new(d))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Sleep::until(deadline))
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: Instant) {
        match sleep.as_mut().downcast_mut_pin::<Sleep>() {
            Some(mut s) => s.set_deadline(new_deadline),
            None => *sleep = self.sleep_until(new_deadline),
        }
    }
}

/// `fut` bounded by `d`: `Err(Elapsed)` when the deadline passes first.
pub(super) async fn timeout<F: Future>(d: Duration, fut: F) -> Result<F::Output, Elapsed> {
    let sleep = Sleep::new(d);
    tokio::select! {
        biased;
        v = fut => Ok(v),
        () = sleep => Err(Elapsed),
    }
}

/// The deadline of [`timeout`] passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Elapsed;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fires_no_earlier_than_asked_and_soon_after() {
        let _ticker = start().unwrap();
        for ms in [0u64, 5, 30, 120] {
            let t = Instant::now();
            Sleep::new(Duration::from_millis(ms)).await;
            let took = t.elapsed();
            assert!(
                took >= Duration::from_millis(ms),
                "{ms} ms fired after {took:?}"
            );
            assert!(
                took < Duration::from_millis(ms) + Duration::from_secs(1),
                "{ms} ms took {took:?}"
            );
        }
    }

    #[test]
    fn the_coarse_clock_trails_the_real_one_by_about_a_tick() {
        let _ticker = start().unwrap();
        let w = wheel();
        // The real clock less the pauses the ticker saw (none, unless this machine froze).
        let real_ms = || {
            u64::try_from(w.base.elapsed().as_millis()).unwrap() - w.paused.load(Ordering::Relaxed)
        };
        // Wait for a tick after this point, so the bound below holds on a loaded machine.
        let t = real_ms();
        while coarse_ms() < t {
            std::thread::sleep(Duration::from_millis(1));
        }
        let c = coarse_ms();
        let real = real_ms();
        assert!(c <= real, "the coarse clock is ahead: {c} > {real} ms");
        // A tick is 10 ms; a second covers a starved ticker on a loaded CI machine.
        assert!(real - c < 1000, "trails by {} ms", real - c);
        assert_eq!(coarse_upper_ms(), c + TICK_MS);
    }

    #[test]
    fn a_pause_of_the_process_does_not_advance_the_clock() {
        let w = Wheel {
            base: Instant::now(),
            now: AtomicU64::new(0),
            last_real: AtomicU64::new(0),
            paused: AtomicU64::new(0),
            shards: std::array::from_fn(|_| Mutex::new(Shard::default())),
        };
        assert_eq!(w.advance(10), 10);
        assert_eq!(w.advance(20), 20);
        // A late tick on a loaded machine is still time.
        assert_eq!(w.advance(900), 900);
        // 6 s without a tick: a SIGSTOP. The clock moves one tick, then on as before.
        assert_eq!(w.advance(6900), 910);
        assert_eq!(w.advance(6910), 920);
        // A deadline of 1 s set just before the pause is due 1 s of running time later.
        let deadline = 900 + 1000;
        assert!(w.advance(6920) < deadline);
        assert!(w.advance(7900) >= deadline);
    }

    #[tokio::test]
    async fn timeout_passes_the_value_or_elapses() {
        let _ticker = start().unwrap();
        assert_eq!(timeout(Duration::from_secs(5), async { 7 }).await, Ok(7));
        let t = Instant::now();
        let r = timeout(Duration::from_millis(50), std::future::pending::<()>()).await;
        assert_eq!(r, Err(Elapsed));
        assert!(t.elapsed() >= Duration::from_millis(50));
    }

    #[tokio::test]
    async fn a_dropped_sleep_frees_its_slot() {
        let _ticker = start().unwrap();
        let w = wheel();
        // A deadline no parallel test uses: a reused key would carry another.
        let mut s = Box::pin(Sleep::new(Duration::from_millis(3_612_345)));
        let deadline = s.deadline;
        assert!(s
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
            .is_pending());
        let (i, key) = s.slot.unwrap();
        let held = |w: &Wheel| w.shard(i).slab.get(key).map(|e| e.deadline) == Some(deadline);
        assert!(held(w));
        drop(s);
        assert!(!held(w));
    }

    #[tokio::test]
    async fn reset_moves_a_registered_deadline() {
        let _ticker = start().unwrap();
        use hyper::rt::Timer;
        let t = Instant::now();
        let mut s = CoarseTimer.sleep_until(Instant::now() + Duration::from_secs(60));
        assert!(s
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
            .is_pending());
        CoarseTimer.reset(&mut s, Instant::now() + Duration::from_millis(40));
        s.await;
        assert!(t.elapsed() >= Duration::from_millis(40));
        assert!(t.elapsed() < Duration::from_secs(5));
    }
}
