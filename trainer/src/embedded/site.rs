//! A site: several processes (one torchrun job) that train as one Meridian worker. Only
//! the leader (the site group's rank 0) talks to the run; every rank keeps a full replica
//! and applies the very same rounds.
//!
//! The driver decides what to do from what its link returns, call by call, so the leader
//! records each answer its network link gave ([`Recording`]) and the other ranks' drivers
//! are given those answers in the same order ([`Replay`]): identical parameters and
//! identical answers make identical steps, bit for bit, whatever arrived when on the
//! leader's connection. Followers send nothing; the leader alone publishes, serves
//! newcomers and counts bytes.

use std::collections::VecDeque;

use anyhow::{bail, ensure, Context, Result};

use crate::networked::drive::{NetEvent, RoundLink};

/// One answer the leader's link gave its driver.
#[derive(Debug, Clone, PartialEq)]
enum Answer {
    /// `poll_event` returned this.
    Poll(Option<NetEvent>),
    /// `next_event` returned this.
    Next(NetEvent),
}

/// The leader's link, recording every answer for the followers.
pub struct Recording<L> {
    /// The network link.
    pub inner: L,
    log: Vec<Answer>,
}

impl<L> Recording<L> {
    /// Records `inner`'s answers.
    pub fn new(inner: L) -> Self {
        Self { inner, log: Vec::new() }
    }

    /// The answers given since the last call, encoded for the followers.
    pub fn take_log(&mut self) -> Vec<u8> {
        encode(&std::mem::take(&mut self.log))
    }
}

impl<L: RoundLink> RoundLink for Recording<L> {
    fn publish(&mut self, round: u64, payload: Vec<u8>) -> Result<()> {
        self.inner.publish(round, payload)
    }

    fn next_event(&mut self) -> Result<NetEvent> {
        let event = self.inner.next_event()?;
        self.log.push(Answer::Next(event.clone()));
        Ok(event)
    }

    fn poll_event(&mut self) -> Result<Option<NetEvent>> {
        let event = self.inner.poll_event()?;
        self.log.push(Answer::Poll(event.clone()));
        Ok(event)
    }

    fn provide_state(&mut self, round: u64, state: Vec<u8>) -> Result<()> {
        self.inner.provide_state(round, state)
    }

    fn before_step(&mut self, step: u64) -> Result<()> {
        self.inner.before_step(step)
    }
}

/// A follower's link: the leader's answers, in order; nothing is sent.
#[derive(Debug, Default)]
pub struct Replay {
    answers: VecDeque<Answer>,
}

impl Replay {
    /// Queues the answers of the leader's next step (from [`Recording::take_log`]).
    pub fn feed(&mut self, log: &[u8]) -> Result<()> {
        ensure!(
            self.answers.is_empty(),
            "{} answers of the previous step were never asked for: the site's ranks diverged",
            self.answers.len()
        );
        self.answers.extend(decode(log).context("the site leader's log")?);
        Ok(())
    }

    /// Whether every answer fed has been used.
    pub fn drained(&self) -> bool {
        self.answers.is_empty()
    }

    fn diverged(asked: &str, had: Option<&Answer>) -> anyhow::Error {
        anyhow::anyhow!(
            "this rank asked its link {asked} where the site's leader {}: the ranks of a site \
             must hold identical parameters and step together (is the model wrapped in \
             DistributedDataParallel, and does every rank call step()?)",
            match had {
                Some(Answer::Poll(_)) => "polled",
                Some(Answer::Next(_)) => "waited",
                None => "had nothing more",
            }
        )
    }
}

impl RoundLink for Replay {
    fn publish(&mut self, _: u64, _: Vec<u8>) -> Result<()> {
        Ok(())
    }

    fn next_event(&mut self) -> Result<NetEvent> {
        match self.answers.pop_front() {
            Some(Answer::Next(event)) => Ok(event),
            other => Err(Self::diverged("to wait for an event", other.as_ref())),
        }
    }

    fn poll_event(&mut self) -> Result<Option<NetEvent>> {
        match self.answers.pop_front() {
            Some(Answer::Poll(event)) => Ok(event),
            other => Err(Self::diverged("to poll", other.as_ref())),
        }
    }

    fn provide_state(&mut self, _: u64, _: Vec<u8>) -> Result<()> {
        Ok(())
    }
}

// The log's encoding (little-endian): u32 count, then per answer a tag byte
// (0 poll → nothing, 1 poll → event, 2 next → event) and the event: a tag byte
// (0 round ready, 1 aggregate ready, 2 snapshot requested, 3 state received), u64 round,
// and the event's fields, every byte string as u64 length + bytes.

fn encode(log: &[Answer]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(log.len() as u32).to_le_bytes());
    for answer in log {
        match answer {
            Answer::Poll(None) => out.push(0),
            Answer::Poll(Some(e)) => {
                out.push(1);
                encode_event(e, &mut out);
            }
            Answer::Next(e) => {
                out.push(2);
                encode_event(e, &mut out);
            }
        }
    }
    out
}

fn put_bytes(b: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(b.len() as u64).to_le_bytes());
    out.extend_from_slice(b);
}

fn encode_event(e: &NetEvent, out: &mut Vec<u8>) {
    match e {
        NetEvent::RoundReady { round, payloads } => {
            out.push(0);
            out.extend_from_slice(&round.to_le_bytes());
            out.extend_from_slice(&(payloads.len() as u32).to_le_bytes());
            for p in payloads {
                put_bytes(p, out);
            }
        }
        NetEvent::AggregateReady { round, members, bytes } => {
            out.push(1);
            out.extend_from_slice(&round.to_le_bytes());
            out.extend_from_slice(&(members.len() as u32).to_le_bytes());
            for m in members {
                out.extend_from_slice(&m.to_le_bytes());
            }
            put_bytes(bytes, out);
        }
        NetEvent::SnapshotRequested { round } => {
            out.push(2);
            out.extend_from_slice(&round.to_le_bytes());
        }
        NetEvent::StateReceived { round, bytes } => {
            out.push(3);
            out.extend_from_slice(&round.to_le_bytes());
            put_bytes(bytes, out);
        }
    }
}

/// Reads the log, refusing anything truncated, oversized or with trailing bytes.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        ensure!(n <= self.0.len(), "truncated: {n} bytes wanted, {} left", self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    fn bytes(&mut self) -> Result<Vec<u8>> {
        let n = usize::try_from(self.u64()?).context("length")?;
        Ok(self.take(n)?.to_vec())
    }
    /// A count of items each at least `min` bytes long, checked against what is left.
    fn count(&mut self, min: usize) -> Result<usize> {
        let n = self.u32()? as usize;
        ensure!(n.saturating_mul(min) <= self.0.len(), "count {n} exceeds the bytes left");
        Ok(n)
    }
}

fn decode(bytes: &[u8]) -> Result<Vec<Answer>> {
    let mut r = Reader(bytes);
    let n = r.count(1)?;
    let mut log = Vec::with_capacity(n);
    for _ in 0..n {
        log.push(match r.u8()? {
            0 => Answer::Poll(None),
            1 => Answer::Poll(Some(decode_event(&mut r)?)),
            2 => Answer::Next(decode_event(&mut r)?),
            t => bail!("unknown answer tag {t}"),
        });
    }
    ensure!(r.0.is_empty(), "{} trailing bytes", r.0.len());
    Ok(log)
}

fn decode_event(r: &mut Reader<'_>) -> Result<NetEvent> {
    let tag = r.u8()?;
    let round = r.u64()?;
    Ok(match tag {
        0 => {
            let n = r.count(8)?;
            NetEvent::RoundReady {
                round,
                payloads: (0..n).map(|_| r.bytes()).collect::<Result<_>>()?,
            }
        }
        1 => {
            let n = r.count(4)?;
            let members = (0..n).map(|_| r.u32()).collect::<Result<_>>()?;
            NetEvent::AggregateReady { round, members, bytes: r.bytes()? }
        }
        2 => NetEvent::SnapshotRequested { round },
        3 => NetEvent::StateReceived { round, bytes: r.bytes()? },
        t => bail!("unknown event tag {t}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Answer> {
        vec![
            Answer::Poll(None),
            Answer::Next(NetEvent::RoundReady { round: 3, payloads: vec![vec![1, 2], vec![]] }),
            Answer::Poll(Some(NetEvent::SnapshotRequested { round: 4 })),
            Answer::Next(NetEvent::AggregateReady {
                round: 5,
                members: vec![0, 2],
                bytes: vec![9; 5],
            }),
            Answer::Next(NetEvent::StateReceived { round: 6, bytes: vec![7; 3] }),
        ]
    }

    #[test]
    fn a_log_round_trips_and_damage_is_refused() {
        let bytes = encode(&sample());
        assert_eq!(decode(&bytes).unwrap(), sample());
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(decode(&long).is_err());
        // A claimed count or length far beyond the bytes is refused before allocating.
        assert!(decode(&[0xFF, 0xFF, 0xFF, 0xFF]).is_err());
        let mut huge = encode(&[Answer::Next(NetEvent::StateReceived { round: 0, bytes: vec![] })]);
        let at = huge.len() - 8;
        huge[at..].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode(&huge).is_err());
    }

    /// A link that answers from a script, as a network would.
    struct Scripted(VecDeque<Option<NetEvent>>);
    impl RoundLink for Scripted {
        fn publish(&mut self, _: u64, _: Vec<u8>) -> Result<()> {
            Ok(())
        }
        fn next_event(&mut self) -> Result<NetEvent> {
            self.0.pop_front().flatten().context("no event")
        }
        fn poll_event(&mut self) -> Result<Option<NetEvent>> {
            Ok(self.0.pop_front().flatten())
        }
        fn provide_state(&mut self, _: u64, _: Vec<u8>) -> Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_follower_gets_the_leaders_answers_in_order_and_a_different_call_is_refused() {
        let ready = NetEvent::RoundReady { round: 0, payloads: vec![vec![1]] };
        let mut leader = Recording::new(Scripted(VecDeque::from([None, Some(ready.clone())])));
        assert_eq!(leader.poll_event().unwrap(), None);
        assert_eq!(leader.next_event().unwrap(), ready);
        let log = leader.take_log();
        let mut follower = Replay::default();
        follower.feed(&log).unwrap();
        assert_eq!(follower.poll_event().unwrap(), None);
        assert_eq!(follower.next_event().unwrap(), ready);
        assert!(follower.drained());
        // Asking in another order than the leader did means the ranks diverged.
        follower.feed(&log).unwrap();
        let e = follower.next_event().unwrap_err();
        assert!(
            format!("{e:#}").contains("diverged") || format!("{e:#}").contains("polled"),
            "{e:#}"
        );
        // Unused answers at the next feed are reported too.
        assert!(follower.feed(&log).is_err());
    }
}
