//! A simulated worker's training loop: the same blocking loop a worker process runs
//! ([`drive`](crate::networked::drive::drive)), run as a stackful coroutine inside an async task
//! on the one thread that owns the virtual clock.
//!
//! A paused tokio clock only means something if nothing else happens while a worker
//! computes: the clock jumps ahead whenever every task is idle. So the training code runs
//! on the runtime's own thread, and wherever it would block on the network it suspends
//! instead: the task serves the request with the async worker node (or sleeps, to charge
//! compute to the clock) and resumes it. One thread, one clock and a fixed order of events,
//! so the same seed replays the same run.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use corosensei::stack::DefaultStack;
use corosensei::{Coroutine, CoroutineResult, Yielder};
use meridian_comm::node::WorkerNode;
use meridian_simulate::Pace;

use crate::networked::drive::{NetEvent, RoundLink};
use crate::networked::node_link::{net_event, published, Mapped};

/// Stack of each worker's coroutine: LibTorch's CPU kernels run on it.
const STACK_BYTES: usize = 16 << 20;

/// What the training loop asks of the network.
#[derive(Debug)]
pub enum Request {
    /// Publish this worker's payload.
    Publish {
        /// The round.
        round: u64,
        /// The payload.
        payload: Vec<u8>,
    },
    /// Wait for the next event.
    NextEvent,
    /// The next event if one arrived.
    PollEvent,
    /// Upload this worker's state.
    ProvideState {
        /// The round it ends.
        round: u64,
        /// The state.
        state: Vec<u8>,
    },
    /// Let this much virtual time pass: the worker is computing.
    Compute(Duration),
}

/// The network's answer to a [`Request`].
#[derive(Debug)]
pub enum Reply {
    /// Publish, provide state or compute finished.
    Done(Result<()>),
    /// The next event.
    Event(Result<NetEvent>),
    /// An event if there was one.
    MaybeEvent(Result<Option<NetEvent>>),
}

/// Charges a worker's compute to the virtual clock: a fixed time before each step, or the
/// real time the worker's coroutine actually ran (never the time it sat suspended while
/// other workers or the network ran).
#[derive(Debug, Default)]
pub struct Charger {
    step_time: Option<Duration>,
    /// This worker's step times against `step_time` (its region's speed, jitter).
    pace: Pace,
    /// Fixed steps charged so far (the pace's draws are per step).
    steps: Cell<u64>,
    /// Real time spent inside the coroutine so far.
    inside: Cell<Duration>,
    /// `inside` when compute was last charged or skipped.
    mark: Cell<Duration>,
    /// Virtual time charged so far.
    charged: Cell<Duration>,
}

impl Charger {
    /// Every step costs `step_time` at `pace`; `None`: each costs what it measured.
    pub fn new(step_time: Option<Duration>, pace: Pace) -> Rc<Self> {
        Rc::new(Charger { step_time, pace, ..Default::default() })
    }

    /// Virtual compute time charged so far.
    pub fn charged(&self) -> Duration {
        self.charged.get()
    }

    fn charge(&self, y: &Yielder<Reply, Request>, time: Duration) -> Result<()> {
        self.charged.set(self.charged.get() + time);
        match y.suspend(Request::Compute(time)) {
            Reply::Done(r) => r,
            other => Err(anyhow!("simulator answered a compute request with {other:?}")),
        }
    }

    /// Before a step: its fixed cost, returned, or (measured) whatever ran since the last
    /// charge, and `None`.
    pub fn before_step(&self, y: &Yielder<Reply, Request>) -> Result<Option<Duration>> {
        match self.step_time {
            Some(t) => {
                let step = self.steps.get();
                self.steps.set(step + 1);
                let time = self.pace.step(t, step);
                self.charge(y, time).map(|()| Some(time))
            }
            None => self.flush(y).map(|()| None),
        }
    }

    /// Measured: charges what ran since the last charge (before anything leaves this
    /// worker, so it leaves at the right virtual time). Fixed: nothing.
    pub fn flush(&self, y: &Yielder<Reply, Request>) -> Result<()> {
        if self.step_time.is_some() {
            return Ok(());
        }
        let pending = self.inside.get().saturating_sub(self.mark.get());
        self.mark.set(self.inside.get());
        self.charge(y, pending)
    }

    /// Work since the last charge is not training (an evaluation, say): never charge it.
    pub fn skip(&self) {
        self.mark.set(self.inside.get());
    }
}

/// Payload bytes a worker put on its links and took off them, from the protocol's per-link
/// counters of each committed round (relay: the upload; all-gather: a copy per peer; ring:
/// the segments to its successor).
#[derive(Debug, Default)]
pub struct LinkBytes {
    /// Sent.
    pub sent: Cell<u64>,
    /// Received.
    pub received: Cell<u64>,
}

/// The coroutine's side: a [`RoundLink`] whose calls suspend the coroutine.
pub struct CoLink<'y> {
    yielder: &'y Yielder<Reply, Request>,
    charger: Rc<Charger>,
}

impl<'y> CoLink<'y> {
    /// A link that charges compute with `charger`.
    pub fn new(yielder: &'y Yielder<Reply, Request>, charger: Rc<Charger>) -> Self {
        CoLink { yielder, charger }
    }
}

impl RoundLink for CoLink<'_> {
    fn publish(&mut self, round: u64, payload: Vec<u8>) -> Result<()> {
        self.charger.flush(self.yielder)?;
        match self.yielder.suspend(Request::Publish { round, payload }) {
            Reply::Done(r) => r,
            other => Err(anyhow!("simulator answered a publish with {other:?}")),
        }
    }

    fn next_event(&mut self) -> Result<NetEvent> {
        match self.yielder.suspend(Request::NextEvent) {
            Reply::Event(r) => r,
            other => Err(anyhow!("simulator answered a wait with {other:?}")),
        }
    }

    fn poll_event(&mut self) -> Result<Option<NetEvent>> {
        match self.yielder.suspend(Request::PollEvent) {
            Reply::MaybeEvent(r) => r,
            other => Err(anyhow!("simulator answered a poll with {other:?}")),
        }
    }

    fn provide_state(&mut self, round: u64, state: Vec<u8>) -> Result<()> {
        match self.yielder.suspend(Request::ProvideState { round, state }) {
            Reply::Done(r) => r,
            other => Err(anyhow!("simulator answered a state upload with {other:?}")),
        }
    }

    fn before_step(&mut self, _step: u64) -> Result<Option<Duration>> {
        self.charger.before_step(self.yielder)
    }
}

/// How a worker's coroutine ended.
#[derive(Debug)]
pub enum Ended<R> {
    /// Its body returned.
    Finished(R),
    /// It was killed at the scheduled moment (`--chaos worker-restart`); whatever it
    /// returned after that is discarded.
    Killed,
}

/// Runs `body` as a coroutine, serving its requests with `node`, until it returns;
/// `charger` learns how long the coroutine ran, `bytes` what the committed rounds moved.
///
/// At `kill_at`, wherever the worker is (computing, waiting for a commit, uploading), the
/// request in progress is abandoned and this and every later request fails, so the
/// training loop unwinds as a killed process would stop: nothing more reaches the network.
pub async fn run<R: 'static>(
    node: &mut WorkerNode,
    charger: &Charger,
    bytes: &LinkBytes,
    kill_at: Option<tokio::time::Instant>,
    body: impl FnOnce(&Yielder<Reply, Request>) -> Result<R> + 'static,
) -> Result<Ended<R>> {
    let stack = DefaultStack::new(STACK_BYTES).context("allocating a worker's stack")?;
    let mut co = Coroutine::with_stack(stack, move |y: &Yielder<Reply, Request>, _: Reply| body(y));
    let mut reply = Reply::Done(Ok(()));
    let mut killed = false;
    loop {
        let resumed = Instant::now();
        let result = co.resume(reply);
        charger.inside.set(charger.inside.get() + resumed.elapsed());
        let request = match result {
            CoroutineResult::Return(_) if killed => return Ok(Ended::Killed),
            CoroutineResult::Return(r) => return r.map(Ended::Finished),
            CoroutineResult::Yield(request) => request,
        };
        let dead = dead_reply(&request);
        reply = match kill_at {
            _ if killed => dead,
            // `biased`: the kill wins a tie, the same way on every run.
            Some(at) => tokio::select! {
                biased;
                _ = tokio::time::sleep_until(at) => {
                    killed = true;
                    dead
                }
                reply = answer(node, bytes, request) => reply,
            },
            None => answer(node, bytes, request).await,
        };
    }
}

/// The answer a killed worker gets to `request`: an error of the kind it expects.
fn dead_reply(request: &Request) -> Reply {
    let killed = || anyhow!("this worker was killed (simulated fault)");
    match request {
        Request::NextEvent => Reply::Event(Err(killed())),
        Request::PollEvent => Reply::MaybeEvent(Err(killed())),
        Request::Publish { .. } | Request::ProvideState { .. } | Request::Compute(_) => {
            Reply::Done(Err(killed()))
        }
    }
}

async fn answer(node: &mut WorkerNode, bytes: &LinkBytes, request: Request) -> Reply {
    match request {
        Request::Publish { round, payload } => {
            let result = node.publish(round, payload.into()).await;
            Reply::Done(published(round, result).map(drop))
        }
        Request::ProvideState { round, state } => {
            Reply::Done(node.provide_state(round, state.into()).await.map_err(Into::into))
        }
        Request::Compute(time) => {
            tokio::time::sleep(time).await;
            Reply::Done(Ok(()))
        }
        Request::NextEvent => Reply::Event(next(node, bytes).await),
        Request::PollEvent => Reply::MaybeEvent(poll(node, bytes)),
    }
}

fn count(bytes: &LinkBytes, mapped: Mapped) -> NetEvent {
    if let Some((_, stats)) = &mapped.stats {
        for t in &stats.traffic {
            bytes.sent.set(bytes.sent.get() + t.sent);
            bytes.received.set(bytes.received.get() + t.received);
        }
    }
    mapped.event
}

async fn next(node: &mut WorkerNode, bytes: &LinkBytes) -> Result<NetEvent> {
    loop {
        let event = node.next_event().await?;
        if let Some(mapped) = net_event(event, node.member())? {
            return Ok(count(bytes, mapped));
        }
    }
}

fn poll(node: &mut WorkerNode, bytes: &LinkBytes) -> Result<Option<NetEvent>> {
    while let Some(event) = node.try_next_event()? {
        if let Some(mapped) = net_event(event, node.member())? {
            return Ok(Some(count(bytes, mapped)));
        }
    }
    Ok(None)
}
