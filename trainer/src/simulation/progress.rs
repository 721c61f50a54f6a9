//! What a running simulation shows while it runs, even when nothing it counts moves.
//!
//! Worker 0 moves the bar at each step and notes the loss at each evaluation; between
//! them (a long simulated step, a long round, workers still joining) a watcher thread
//! reads the virtual clock once per second of wall time and redraws the bar with it, so
//! a terminal sees the simulation advance. When stderr is not a terminal the bar is
//! hidden, and the watcher writes one progress line per `every` of wall time instead, so
//! a log shows the run is alive and how far it got.
//!
//! The watcher only reads (the clock, the bar's counters): it sends nothing into the
//! simulation and takes no lock the simulation's thread waits on for long, so a run
//! replays the same with or without it.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressState, ProgressStyle};

/// How often the watcher reads the clock and redraws.
const TICK: Duration = Duration::from_secs(1);

/// What the watcher shares with the bar's drawing.
#[derive(Debug, Default)]
struct Shared {
    /// Simulated milliseconds at the last tick.
    simulated_ms: AtomicU64,
    /// Workers admitted so far (of `workers`).
    joined: AtomicU64,
    workers: u64,
}

impl Shared {
    /// "12.3 s simulated" and, while workers are still joining, how many are in.
    fn status(&self) -> String {
        let mut s = format!("{} simulated", seconds(self.simulated_ms.load(Ordering::Relaxed)));
        let joined = self.joined.load(Ordering::Relaxed);
        if joined < self.workers {
            let _ = write!(s, ", {joined}/{} workers joined", self.workers);
        }
        s
    }
}

fn seconds(ms: u64) -> String {
    let s = ms as f64 / 1e3;
    if s < 1e6 {
        format!("{s:.1} s")
    } else {
        format!("{s:.3e} s")
    }
}

/// One algorithm's progress display.
pub struct Progress {
    bar: ProgressBar,
    shared: Arc<Shared>,
    stop: Option<mpsc::Sender<()>>,
    watcher: Option<JoinHandle<()>>,
}

impl Progress {
    /// A bar for `algorithm`'s `steps` steps over `workers` starting workers, watching the
    /// virtual clock of `runtime` from `start`; a line every `every` when the bar is hidden.
    pub fn start(
        algorithm: &str,
        steps: u64,
        workers: usize,
        runtime: tokio::runtime::Handle,
        start: tokio::time::Instant,
        every: Duration,
    ) -> Progress {
        let shared = Arc::new(Shared { workers: workers as u64, ..Shared::default() });
        let bar = ProgressBar::new(steps);
        let now = shared.clone();
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>10} [{bar:30}] {pos}/{len} steps  {msg}  (now {sim}, {elapsed} wall)",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .with_key("sim", move |_: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = w.write_str(&now.status());
            })
            .progress_chars("=> "),
        );
        bar.set_prefix(algorithm.to_string());
        let (stop, stopped) = mpsc::channel();
        let (b, s, name) = (bar.clone(), shared.clone(), algorithm.to_string());
        let watcher = std::thread::Builder::new()
            .name("simulate-progress".into())
            .spawn(move || watch(&b, &s, &name, &runtime, start, every, &stopped))
            // No watcher (the system refused a thread) only means a stiller display.
            .ok();
        Progress { bar, shared, stop: Some(stop), watcher }
    }

    /// The bar the workers move.
    pub fn bar(&self) -> ProgressBar {
        self.bar.clone()
    }

    /// Another starting worker was admitted.
    pub fn joined(&self) {
        self.shared.joined.fetch_add(1, Ordering::Relaxed);
    }

    /// Stops the watcher and clears the bar.
    pub fn finish(mut self) {
        self.stop_watcher();
        self.bar.finish_and_clear();
    }

    fn stop_watcher(&mut self) {
        // Dropping the sender wakes the watcher at once.
        self.stop.take();
        if let Some(w) = self.watcher.take() {
            let _ = w.join();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop_watcher();
    }
}

/// The watcher's loop: every [`TICK`], read the virtual clock and redraw; when the bar is
/// hidden, a line every `every`. Ends when `stopped` disconnects.
fn watch(
    bar: &ProgressBar,
    shared: &Shared,
    name: &str,
    runtime: &tokio::runtime::Handle,
    start: tokio::time::Instant,
    every: Duration,
    stopped: &mpsc::Receiver<()>,
) {
    let began = Instant::now();
    let mut last_line = began;
    loop {
        match stopped.recv_timeout(TICK) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        // Inside the runtime's context, tokio's clock is the simulation's paused one.
        let now = {
            let _context = runtime.enter();
            tokio::time::Instant::now()
        };
        let simulated = now.saturating_duration_since(start);
        let ms = u64::try_from(simulated.as_millis()).unwrap_or(u64::MAX);
        shared.simulated_ms.store(ms, Ordering::Relaxed);
        if !bar.is_hidden() {
            bar.tick();
        } else if !every.is_zero() && last_line.elapsed() >= every {
            last_line = Instant::now();
            // The hidden bar's stand-in, written where the bar would have been drawn: a
            // log line at info would be filtered out by the simulation's default filter.
            eprintln!(
                "simulate {name}: {}/{} steps, {} ({} s of wall time)",
                bar.position(),
                bar.length().unwrap_or(0),
                shared.status(),
                began.elapsed().as_secs()
            );
        }
    }
}

#[cfg(test)]
#[cfg_attr(test, allow(clippy::unwrap_used))]
mod tests {
    use super::*;

    #[test]
    fn the_status_shows_simulated_time_and_joins_until_everyone_is_in() {
        let s = Shared { workers: 3, ..Shared::default() };
        s.simulated_ms.store(12_345, Ordering::Relaxed);
        s.joined.store(1, Ordering::Relaxed);
        assert_eq!(s.status(), "12.3 s simulated, 1/3 workers joined");
        s.joined.store(3, Ordering::Relaxed);
        s.simulated_ms.store(429_000_000_000, Ordering::Relaxed);
        assert_eq!(s.status(), "4.290e8 s simulated");
    }

    #[test]
    fn the_watcher_reads_the_paused_clock_and_stops_when_told() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let start = rt.block_on(async { tokio::time::Instant::now() });
        let p = Progress::start("x", 10, 1, rt.handle().clone(), start, Duration::ZERO);
        // A virtual hour passes at once; the watcher sees it at its next tick.
        rt.block_on(async { tokio::time::sleep(Duration::from_secs(3600)).await });
        let deadline = Instant::now() + Duration::from_secs(20);
        while p.shared.simulated_ms.load(Ordering::Relaxed) < 3_600_000 {
            assert!(Instant::now() < deadline, "the watcher never saw the virtual hour");
            std::thread::sleep(Duration::from_millis(50));
        }
        p.finish();
    }
}
