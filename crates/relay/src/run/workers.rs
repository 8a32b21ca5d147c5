//! A relay on every core: several copies of a role's event loop, each with its own socket
//! on the shared port (`SO_REUSEPORT`) and its own sessions.
//!
//! The kernel sends every datagram of one peer address and port to the same socket, so a
//! session lives on one worker from its handshake on and the per-packet path takes no lock.
//! What workers share is per session, not per packet: the token spent set (one lock per
//! redemption) and the evidence source. Each worker hands out its own share of tunnel
//! addresses. A client whose address or port changes reaches another worker, which does
//! not know its session: the client's next handshake starts a new one there.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::counters::Counters;

/// The least time between two publications of the summed counters; what changes in
/// between is published together at the end of it.
const PUBLISH_GAP: Duration = Duration::from_millis(10);

/// How many workers a relay runs: `configured`, or one per core when it is 0.
pub(crate) fn count(configured: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// Runs a worker on a new thread, in a single-threaded runtime of its own, and returns a
/// task of the calling runtime that ends when the worker has ended and its runtime has
/// dropped the tasks it spawned. `make` builds the worker's future inside that runtime, so
/// that what it registers (its socket) belongs to it. A worker that cannot get a runtime,
/// its socket or a thread logs why and ends at once (the relay then stops, as when any
/// worker stops).
pub(crate) fn spawn_thread<Fut>(
    name: String,
    make: impl FnOnce() -> io::Result<Fut>,
) -> JoinHandle<()>
where
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (done_tx, done_rx) = oneshot::channel::<()>();
    let started = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .and_then(|rt| {
            let run = {
                let _in = rt.enter();
                make()?
            };
            std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || {
                    rt.block_on(run);
                    drop(rt);
                    let _ = done_tx.send(());
                })
        });
    if let Err(e) = started {
        tracing::error!("worker {name} cannot start: {e}");
    }
    tokio::spawn(async move {
        let _ = done_rx.await;
    })
}

/// One running copy of the event loop.
pub(crate) struct Worker {
    pub(crate) counters: watch::Receiver<Counters>,
    pub(crate) shutdown: oneshot::Sender<()>,
    pub(crate) task: JoinHandle<()>,
}

/// What the relay's handle gets: summed counters, one stop for all, one task to await.
pub(crate) struct Supervised {
    pub(crate) counters: watch::Receiver<Counters>,
    pub(crate) per_worker: Vec<watch::Receiver<Counters>>,
    pub(crate) shutdown: oneshot::Sender<()>,
    pub(crate) task: JoinHandle<()>,
}

/// Publishes the workers' summed counters as they change, logs them every
/// `report_interval`, and stops every worker when the returned sender fires or is dropped.
pub(crate) fn supervise(
    role: &'static str,
    workers: Vec<Worker>,
    report_interval: Duration,
) -> Supervised {
    let per_worker: Vec<_> = workers.iter().map(|w| w.counters.clone()).collect();
    let (counters_tx, counters) = watch::channel(sum(&per_worker));
    let (shutdown, mut shutdown_rx) = oneshot::channel::<()>();
    let watched = per_worker.clone();
    let task = tokio::spawn(async move {
        // One wait per worker, made once and then re-armed in place: publishing allocates
        // nothing (a `select_all` over new boxed waits made about 220 allocations a second
        // on a busy relay).
        let mut waits: Vec<_> = watched
            .iter()
            .map(|w| Box::pin(next_change(w.clone())))
            .collect();
        let mut stops = Vec::new();
        let mut tasks = Vec::new();
        for w in workers {
            stops.push(w.shutdown);
            tasks.push(w.task);
        }
        let mut report_tick = tokio::time::interval(report_interval);
        report_tick.tick().await;
        loop {
            let changed = any_changed(&mut waits, next_change);
            tokio::select! {
                alive = changed => {
                    counters_tx.send_replace(sum(&watched));
                    if !alive {
                        break;
                    }
                    // A busy worker changes its counters every batch: waking this task on
                    // each (another thread) cost a context switch per batch on both sides.
                    tokio::select! {
                        _ = tokio::time::sleep(PUBLISH_GAP) => {}
                        _ = &mut shutdown_rx => break,
                    }
                }
                _ = report_tick.tick() => super::report(role, &sum(&watched)),
                _ = &mut shutdown_rx => break,
            }
        }
        for s in stops {
            let _ = s.send(());
        }
        for t in tasks {
            let _ = t.await;
        }
        let total = sum(&watched);
        counters_tx.send_replace(total);
        super::report(role, &total);
    });
    Supervised {
        counters,
        per_worker,
        shutdown,
        task,
    }
}

/// Waits until one worker's counters change, and hands its receiver back for the next wait;
/// `false` once that worker has stopped.
async fn next_change(mut counters: watch::Receiver<Counters>) -> (bool, watch::Receiver<Counters>) {
    let alive = counters.changed().await.is_ok();
    (alive, counters)
}

/// Waits until any worker's counters change; `false` once a worker has stopped. The wait
/// that ended is replaced by `rearm`'s, in its own allocation.
async fn any_changed<F>(
    waits: &mut [Pin<Box<F>>],
    rearm: impl Fn(watch::Receiver<Counters>) -> F,
) -> bool
where
    F: Future<Output = (bool, watch::Receiver<Counters>)>,
{
    poll_fn(|cx| {
        for wait in waits.iter_mut() {
            if let Poll::Ready((alive, counters)) = wait.as_mut().poll(cx) {
                wait.set(rearm(counters));
                return Poll::Ready(alive);
            }
        }
        Poll::Pending
    })
    .await
}

pub(crate) fn sum(workers: &[watch::Receiver<Counters>]) -> Counters {
    let mut total = Counters::default();
    for w in workers {
        total += *w.borrow();
    }
    total
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counters_are_summed_and_shutdown_reaches_every_worker() {
        let mut senders = Vec::new();
        let mut workers = Vec::new();
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..3u64 {
            let (tx, rx) = watch::channel(Counters::default());
            let (stop, stop_rx) = oneshot::channel::<()>();
            let done = done_tx.clone();
            let task = tokio::spawn(async move {
                let _ = stop_rx.await;
                let _ = done.send(i);
            });
            senders.push(tx);
            workers.push(Worker {
                counters: rx,
                shutdown: stop,
                task,
            });
        }
        let s = supervise("test", workers, Duration::from_secs(3600));
        let mut total = s.counters.clone();
        for (i, tx) in senders.iter().enumerate() {
            tx.send_modify(|c| c.forwarded = 10 * (i as u64 + 1));
        }
        let c = tokio::time::timeout(
            Duration::from_secs(5),
            total.wait_for(|c| c.forwarded == 60),
        )
        .await
        .unwrap()
        .unwrap()
        .to_owned();
        assert_eq!(c.forwarded, 60);
        assert_eq!(s.per_worker.len(), 3);
        s.shutdown.send(()).unwrap();
        s.task.await.unwrap();
        let mut stopped = Vec::new();
        while let Ok(i) = done_rx.try_recv() {
            stopped.push(i);
        }
        stopped.sort();
        assert_eq!(stopped, [0, 1, 2]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_changes_is_published_once_after_the_gap() {
        let (tx, rx) = watch::channel(Counters::default());
        let (stop, _stop_rx) = oneshot::channel::<()>();
        let worker = Worker {
            counters: rx,
            shutdown: stop,
            task: tokio::spawn(std::future::pending()),
        };
        let s = supervise("test", vec![worker], Duration::from_secs(3600));
        let mut total = s.counters.clone();
        tx.send_modify(|c| c.forwarded = 1);
        let wait = Duration::from_secs(5);
        tokio::time::timeout(wait, total.wait_for(|c| c.forwarded == 1))
            .await
            .unwrap()
            .unwrap();
        let changed_at = tokio::time::Instant::now();
        for k in 2..=50 {
            tx.send_modify(|c| c.forwarded = k);
            tokio::task::yield_now().await;
        }
        assert_eq!(
            total.borrow().forwarded,
            1,
            "changes within the gap wait for its end"
        );
        assert_eq!(
            sum(&s.per_worker).forwarded,
            50,
            "the workers' own counters (`RelayHandle::current`) do not wait"
        );
        tokio::time::timeout(wait, total.wait_for(|c| c.forwarded == 50))
            .await
            .unwrap()
            .unwrap();
        assert!(changed_at.elapsed() >= PUBLISH_GAP);
    }
}
