//! A site: several processes (one torchrun job) that train as one Meridian worker. Only
//! the leader (the site group's rank 0) talks to the run; the ranks step together.
//!
//! The driver decides what to do from what its link returns, call by call, so every rank's
//! driver is given the leader's answers, in order ([`SiteLink`]): the leader asks its
//! network link and tells the others through the site's [`SiteChannel`] (the process
//! group), which they wait for at the same call. Identical parameters and identical
//! answers make identical steps, bit for bit, whatever arrived when on the leader's
//! connection. The leader alone publishes, serves newcomers and counts bytes.
//!
//! With a [`ShardLayout`], each rank runs the outer algorithm on its own part of the model
//! (see [`crate::embedded::shard`]): the leader gathers the ranks' payloads and states and
//! sends them merged, and every rank takes its part of what arrives.

use anyhow::{bail, ensure, Context, Result};

use meridian_optimizer::params::hash_of_records;
use meridian_optimizer::payload::Effort;

use super::shard::ShardLayout;
use crate::networked::drive::{AppliedRound, NetEvent, RoundLink};

/// What a site's ranks say to one another: in practice a `torch.distributed` process
/// group. Every rank makes the same calls in the same order.
pub trait SiteChannel {
    /// On the leader, sends `message` to every other rank; elsewhere (`None`), waits for
    /// the leader's. Returns the message.
    fn broadcast(&mut self, message: Option<Vec<u8>>) -> Result<Vec<u8>>;
    /// Every rank's `message`, in rank order, on the leader; `None` on the others.
    fn gather(&mut self, message: Vec<u8>) -> Result<Option<Vec<Vec<u8>>>>;
}

/// One answer the leader's link gave its driver.
#[derive(Debug, Clone, PartialEq)]
enum Answer {
    /// `poll_event` returned this.
    Poll(Option<NetEvent>),
    /// `next_event` returned this.
    Next(NetEvent),
}

/// Every rank's link to the run: the leader's network link (on the leader), the site's
/// channel, and, when the site shards its outer state, the layout.
pub struct SiteLink<L> {
    net: Option<L>,
    channel: Box<dyn SiteChannel>,
    shard: Option<ShardLayout>,
}

impl<L> SiteLink<L> {
    /// The leader's link (`net`: its connection) or another rank's (`None`).
    pub fn new(net: Option<L>, channel: Box<dyn SiteChannel>, shard: Option<ShardLayout>) -> Self {
        Self { net, channel, shard }
    }

    /// The leader's network link; `None` on the other ranks.
    pub fn network(&self) -> Option<&L> {
        self.net.as_ref()
    }

    /// The leader's network link, given up (to leave the run).
    pub fn into_network(self) -> Option<L> {
        self.net
    }

    /// The layout, when the site shards its outer state.
    pub fn shard(&self) -> Option<&ShardLayout> {
        self.shard.as_ref()
    }

    /// The leader tells every rank `said` (an error too, so no rank waits for a word that
    /// never comes); the others hear it. Every rank returns what the leader said.
    pub fn tell(&mut self, said: Option<Result<Vec<u8>>>) -> Result<Vec<u8>> {
        let Some(said) = said else {
            let heard = self.channel.broadcast(None).context("waiting for the site's leader")?;
            return match heard.split_first() {
                Some((0, rest)) => Ok(rest.to_vec()),
                Some((1, why)) => {
                    bail!("the site's leader failed: {}", String::from_utf8_lossy(why))
                }
                _ => bail!("the site's leader sent a malformed message ({} bytes)", heard.len()),
            };
        };
        let message = match &said {
            Ok(bytes) => [&[0u8][..], bytes].concat(),
            Err(e) => [&[1u8][..], format!("{e:#}").as_bytes()].concat(),
        };
        self.channel.broadcast(Some(message)).context("telling the site's ranks")?;
        said
    }

    /// Hands the leader its connection once it has joined.
    pub fn set_network(&mut self, net: L) {
        self.net = Some(net);
    }

    /// On the leader: tells the other ranks that it failed with `e`, and returns `e`.
    pub fn fail(&mut self, e: anyhow::Error) -> anyhow::Error {
        match self.tell(Some(Err(e))) {
            Err(e) => e,
            Ok(_) => anyhow::anyhow!("the site's leader failed"),
        }
    }

    /// On a sharded site, after rounds were applied (each rank's part): checks that every
    /// rank applied the same members' payloads, and sets each round's hash to the whole
    /// model's, from every rank's `records` of its part
    /// ([`meridian_optimizer::params::hash_records`], one per round).
    /// A payload valid in one part of the model and not in another would have the ranks
    /// apply different members, which no single process does: the site stops rather than
    /// diverge from the run.
    pub fn agree(&mut self, rounds: &mut [AppliedRound], records: &[Vec<u8>]) -> Result<()> {
        ensure!(
            records.len() == rounds.len(),
            "{} records for {} rounds",
            records.len(),
            rounds.len()
        );
        let mut mine = Vec::new();
        mine.extend_from_slice(&(rounds.len() as u32).to_le_bytes());
        for (round, rec) in rounds.iter().zip(records) {
            let members = &round.exchange.applied;
            mine.extend_from_slice(&(members.len() as u32).to_le_bytes());
            for m in members {
                mine.extend_from_slice(&m.to_le_bytes());
            }
            put_bytes(rec, &mut mine);
        }
        let said = self.gather(mine)?.map(|parts| whole_hashes(rounds, &parts));
        let hashes = self.tell(said)?;
        ensure!(hashes.len() == 8 * rounds.len(), "{} bytes of hashes", hashes.len());
        for (round, h) in rounds.iter_mut().zip(hashes.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(h);
            round.exchange.hash = u64::from_le_bytes(b);
        }
        Ok(())
    }

    /// The whole model's hash from every rank's hash records of its part (a collective).
    pub fn whole_hash(&mut self, records: Vec<u8>) -> Result<u64> {
        let said = self.gather(records)?.map(|parts| {
            ensure!(parts.iter().all(|p| !p.is_empty()), "a rank had no hash records");
            Ok(hash_of_records(&parts.concat()).to_le_bytes().to_vec())
        });
        let hash = self.tell(said)?;
        let bytes: [u8; 8] = hash.as_slice().try_into().context("a hash of 8 bytes")?;
        Ok(u64::from_le_bytes(bytes))
    }

    /// Every rank's `message` on the leader (rank order), `None` on the others.
    pub fn gather(&mut self, message: Vec<u8>) -> Result<Option<Vec<Vec<u8>>>> {
        let parts = self.channel.gather(message).context("gathering from the site's ranks")?;
        ensure!(
            parts.is_some() == self.net.is_some(),
            "the site's channel gathered on a rank that does not lead (or not on the leader)"
        );
        Ok(parts)
    }

    /// This rank's part of `event` (all of it unless the site is sharded).
    fn localize(&self, event: NetEvent) -> Result<NetEvent> {
        let Some(shard) = &self.shard else { return Ok(event) };
        Ok(match event {
            NetEvent::RoundReady { round, payloads } => NetEvent::RoundReady {
                round,
                payloads: payloads.iter().map(|p| shard.localize_payload(p)).collect(),
            },
            NetEvent::AggregateReady { round, .. } => bail!(
                "round {round} went round a ring, which a site that shards its outer state \
                 cannot take: start the coordinator with topology relay or all-gather"
            ),
            NetEvent::StateReceived { round, bytes } => {
                NetEvent::StateReceived { round, bytes: shard.localize_state(&bytes)? }
            }
            other => other,
        })
    }
}

/// The whole model's hash after each of `rounds`, from every rank's part of
/// [`SiteLink::agree`]'s message (rank order), checking they applied the same members.
fn whole_hashes(rounds: &[AppliedRound], parts: &[Vec<u8>]) -> Result<Vec<u8>> {
    let mut wholes = vec![Vec::new(); rounds.len()];
    for (rank, part) in parts.iter().enumerate() {
        let mut r = Reader(part);
        let n = r.count(12)?;
        ensure!(n == rounds.len(), "rank {rank} applied {n} rounds, rank 0 {}", rounds.len());
        for (round, whole) in rounds.iter().zip(&mut wholes) {
            let k = r.count(4)?;
            let members = (0..k).map(|_| r.u32()).collect::<Result<Vec<u32>>>()?;
            let (number, expected) = (round.exchange.round, &round.exchange.applied);
            ensure!(
                &members == expected,
                "round {number}: rank {rank} applied the payloads of members {members:?}, \
                 rank 0 those of {expected:?} (a payload valid in one part of the model and \
                 not in another); the site stops rather than diverge from the run"
            );
            let records = r.bytes()?;
            ensure!(
                !records.is_empty(),
                "rank {rank} could not hash its part after round {number}"
            );
            whole.extend_from_slice(&records);
        }
        ensure!(r.0.is_empty(), "{} trailing bytes from rank {rank}", r.0.len());
    }
    Ok(wholes.iter().flat_map(|w| hash_of_records(w).to_le_bytes()).collect())
}

/// How the leader makes the whole model's bytes of its ranks' parts.
type Merge = fn(&ShardLayout, &[Vec<u8>]) -> Result<Vec<u8>>;

impl<L: RoundLink> SiteLink<L> {
    /// What the site sends for this rank's `part`: on a sharded site the ranks' parts,
    /// gathered and `merge`d on the leader (`None` on the other ranks, which send nothing);
    /// otherwise `part` itself, the whole.
    fn whole(&mut self, part: Vec<u8>, merge: Merge) -> Result<Option<Vec<u8>>> {
        if self.shard.is_none() {
            return Ok(Some(part));
        }
        match self.gather(part)? {
            Some(parts) => Ok(Some(merge(self.shard.as_ref().context("sharded")?, &parts)?)),
            None => Ok(None),
        }
    }

    /// The leader's answer to `ask`, on every rank.
    fn answer(&mut self, ask: impl FnOnce(&mut L) -> Result<Answer>) -> Result<Answer> {
        let said = self.net.as_mut().map(|net| ask(net).map(|a| encode(&[a])));
        let mut answers = decode(&self.tell(said)?).context("the site leader's answer")?;
        ensure!(answers.len() == 1, "the site's leader gave {} answers for one", answers.len());
        Ok(answers.remove(0))
    }
}

impl<L: RoundLink> RoundLink for SiteLink<L> {
    fn publish(&mut self, round: u64, payload: Vec<u8>) -> Result<()> {
        let Some(payload) = self.whole(payload, ShardLayout::merge_payloads)? else {
            return Ok(());
        };
        let Some(net) = self.net.as_mut() else { return Ok(()) };
        if let Err(e) = net.publish(round, payload) {
            // The other ranks go on to wait for the round: their next answer is this error.
            let _ = self.tell(Some(Err(anyhow::anyhow!("publishing round {round}: {e:#}"))));
            return Err(e);
        }
        Ok(())
    }

    fn next_event(&mut self) -> Result<NetEvent> {
        match self.answer(|net| net.next_event().map(Answer::Next))? {
            Answer::Next(event) => self.localize(event),
            Answer::Poll(_) => bail!("the site's leader polled where this rank waited"),
        }
    }

    fn poll_event(&mut self) -> Result<Option<NetEvent>> {
        match self.answer(|net| net.poll_event().map(Answer::Poll))? {
            Answer::Poll(event) => event.map(|e| self.localize(e)).transpose(),
            Answer::Next(_) => bail!("the site's leader waited where this rank polled"),
        }
    }

    fn provide_state(&mut self, round: u64, state: Vec<u8>) -> Result<()> {
        let Some(state) = self.whole(state, ShardLayout::merge_states)? else { return Ok(()) };
        match self.net.as_mut() {
            Some(net) => net.provide_state(round, state),
            None => Ok(()),
        }
    }

    fn before_step(&mut self, step: u64) -> Result<Option<std::time::Duration>> {
        match self.net.as_mut() {
            Some(net) => net.before_step(step),
            None => Ok(None),
        }
    }
}

// The log's encoding (little-endian): u32 count, then per answer a tag byte
// (0 poll → nothing, 1 poll → event, 2 next → event) and the event: a tag byte
// (0 round ready, 1 aggregate ready, 2 snapshot requested, 3 state received, 4 a peer
// launched), u64 round, and the event's fields, every byte string as u64 length + bytes.

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
        NetEvent::PeerLaunched { round, effort } => {
            out.push(4);
            out.extend_from_slice(&round.to_le_bytes());
            out.extend_from_slice(&effort.steps.to_le_bytes());
            out.extend_from_slice(&effort.step_micros.to_le_bytes());
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
        4 => {
            let effort = Effort { steps: r.u32()?, step_micros: r.u32()? };
            NetEvent::PeerLaunched { round, effort }
        }
        t => bail!("unknown event tag {t}"),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::mpsc::{channel, Receiver, Sender};

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
            Answer::Poll(Some(NetEvent::PeerLaunched {
                round: 7,
                effort: Effort { steps: 30, step_micros: 1_000_000 },
            })),
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

    /// A link that answers from a script, as a network would, and keeps what it sent.
    #[derive(Default)]
    struct Scripted {
        events: VecDeque<Result<Option<NetEvent>, String>>,
        published: Vec<Vec<u8>>,
        states: Vec<Vec<u8>>,
    }
    impl RoundLink for Scripted {
        fn publish(&mut self, _: u64, p: Vec<u8>) -> Result<()> {
            self.published.push(p);
            Ok(())
        }
        fn next_event(&mut self) -> Result<NetEvent> {
            match self.events.pop_front() {
                Some(Ok(Some(e))) => Ok(e),
                Some(Err(why)) => bail!("{why}"),
                _ => bail!("no event"),
            }
        }
        fn poll_event(&mut self) -> Result<Option<NetEvent>> {
            match self.events.pop_front() {
                Some(Ok(e)) => Ok(e),
                Some(Err(why)) => bail!("{why}"),
                None => Ok(None),
            }
        }
        fn provide_state(&mut self, _: u64, s: Vec<u8>) -> Result<()> {
            self.states.push(s);
            Ok(())
        }
    }

    /// A site's channel between threads: the leader's words to every rank, every rank's
    /// words to the leader.
    struct Wire {
        rank: usize,
        to_followers: Vec<Sender<Vec<u8>>>,
        from_leader: Option<Receiver<Vec<u8>>>,
        to_leader: Sender<(usize, Vec<u8>)>,
        at_leader: Option<Receiver<(usize, Vec<u8>)>>,
        ranks: usize,
    }

    fn wires(ranks: usize) -> Vec<Wire> {
        let (to_leader, at_leader) = channel();
        let (senders, receivers): (Vec<_>, Vec<_>) = (1..ranks).map(|_| channel()).unzip();
        let mut out = vec![Wire {
            rank: 0,
            to_followers: senders,
            from_leader: None,
            to_leader: to_leader.clone(),
            at_leader: Some(at_leader),
            ranks,
        }];
        for (k, rx) in receivers.into_iter().enumerate() {
            out.push(Wire {
                rank: k + 1,
                to_followers: Vec::new(),
                from_leader: Some(rx),
                to_leader: to_leader.clone(),
                at_leader: None,
                ranks,
            });
        }
        out
    }

    impl SiteChannel for Wire {
        fn broadcast(&mut self, message: Option<Vec<u8>>) -> Result<Vec<u8>> {
            match (message, &self.from_leader) {
                (Some(m), None) => {
                    for tx in &self.to_followers {
                        tx.send(m.clone())?;
                    }
                    Ok(m)
                }
                (None, Some(rx)) => Ok(rx.recv()?),
                _ => bail!("only the leader broadcasts"),
            }
        }
        fn gather(&mut self, message: Vec<u8>) -> Result<Option<Vec<Vec<u8>>>> {
            self.to_leader.send((self.rank, message))?;
            let Some(rx) = &self.at_leader else {
                // A collective: nobody goes on before the leader has every part.
                let _ack = self.from_leader.as_ref().context("a follower's wire")?.recv()?;
                return Ok(None);
            };
            let mut parts = vec![Vec::new(); self.ranks];
            for _ in 0..self.ranks {
                let (r, m) = rx.recv()?;
                parts[r] = m;
            }
            for tx in &self.to_followers {
                tx.send(Vec::new())?;
            }
            Ok(Some(parts))
        }
    }

    #[test]
    fn every_rank_gets_the_leaders_answers_and_its_errors() {
        let ready = NetEvent::RoundReady { round: 0, payloads: vec![vec![1]] };
        let mut net = Scripted::default();
        net.events.extend([Ok(None), Ok(Some(ready.clone())), Err("coordinator gone".into())]);
        let mut w = wires(2).into_iter();
        let (lead, follow) = (w.next().unwrap(), w.next().unwrap());
        let expected = ready.clone();
        let follower = std::thread::spawn(move || {
            let mut link = SiteLink::<Scripted>::new(None, Box::new(follow), None);
            assert_eq!(link.poll_event().unwrap(), None);
            assert_eq!(link.next_event().unwrap(), expected);
            // Nothing leaves a follower.
            link.publish(0, vec![9]).unwrap();
            link.provide_state(0, vec![9]).unwrap();
            format!("{:#}", link.next_event().unwrap_err())
        });
        let mut leader = SiteLink::new(Some(net), Box::new(lead), None);
        assert_eq!(leader.poll_event().unwrap(), None);
        assert_eq!(leader.next_event().unwrap(), ready);
        leader.publish(0, vec![1]).unwrap();
        leader.provide_state(0, vec![2]).unwrap();
        let e = leader.next_event().unwrap_err();
        assert!(format!("{e:#}").contains("coordinator gone"), "{e:#}");
        let heard = follower.join().unwrap();
        assert!(heard.contains("leader failed: coordinator gone"), "{heard}");
        let net = leader.into_network().unwrap();
        assert_eq!((net.published, net.states), (vec![vec![1]], vec![vec![2]]));
    }

    #[test]
    fn a_rank_that_asks_otherwise_than_the_leader_is_refused() {
        let mut net = Scripted::default();
        net.events.extend([Ok(None)]);
        let mut w = wires(2).into_iter();
        let (lead, follow) = (w.next().unwrap(), w.next().unwrap());
        let follower = std::thread::spawn(move || {
            let mut link = SiteLink::<Scripted>::new(None, Box::new(follow), None);
            format!("{:#}", link.next_event().unwrap_err())
        });
        let mut leader = SiteLink::new(Some(net), Box::new(lead), None);
        assert_eq!(leader.poll_event().unwrap(), None);
        let heard = follower.join().unwrap();
        assert!(heard.contains("polled where this rank waited"), "{heard}");
    }

    #[test]
    fn a_sharded_site_publishes_and_serves_the_whole_model() {
        use meridian_optimizer::outer::OptimizerState;
        use meridian_optimizer::payload::{Payload, Segment};
        use meridian_optimizer::Algorithm;

        let shapes = vec![vec![2], vec![3], vec![1]];
        let bounds = vec![0, 1, 3];
        let whole = Payload {
            algorithm: Algorithm::Diloco,
            round: 2,
            worker: 0,
            effort: Default::default(),
            segments: shapes
                .iter()
                .enumerate()
                .map(|(i, s)| Segment::dense(i as u32, s, &vec![i as f32; s[0]], false))
                .collect(),
        };
        let part = |r: usize| {
            let mut p = whole.clone();
            p.segments = p.segments[bounds[r]..bounds[r + 1]].to_vec();
            for (k, s) in p.segments.iter_mut().enumerate() {
                s.tensor = k as u32;
            }
            p.encode()
        };
        let state = |r: usize| {
            let mut s = OptimizerState::new(Algorithm::Diloco);
            for i in 0..bounds[r + 1] - bounds[r] {
                s.put(format!("param.{i}"), &tch::Tensor::from_slice(&[(bounds[r] + i) as f32]));
            }
            s.put_scalar("step", 7.0);
            s.to_bytes().unwrap()
        };
        let mut net = Scripted::default();
        // The run's round holds this site's payload; a peer's state arrives whole.
        let mut peer = OptimizerState::new(Algorithm::Diloco);
        for i in 0..3 {
            peer.put(format!("param.{i}"), &tch::Tensor::from_slice(&[10.0 + i as f32]));
        }
        peer.put_scalar("step", 9.0);
        net.events.extend([
            Ok(Some(NetEvent::RoundReady { round: 2, payloads: vec![whole.encode()] })),
            Ok(Some(NetEvent::StateReceived { round: 2, bytes: peer.to_bytes().unwrap() })),
        ]);
        let layout = |r| ShardLayout::new(shapes.clone(), bounds.clone(), r).unwrap();
        let mut w = wires(2).into_iter();
        let (lead, follow) = (w.next().unwrap(), w.next().unwrap());
        let follower_layout = layout(1);
        let (part1, state1) = (part(1), state(1));
        let follower = std::thread::spawn(move || {
            let mut link = SiteLink::<Scripted>::new(None, Box::new(follow), Some(follower_layout));
            link.publish(2, part1.clone()).unwrap();
            link.provide_state(2, state1).unwrap();
            let NetEvent::RoundReady { payloads, .. } = link.next_event().unwrap() else {
                panic!()
            };
            assert_eq!(payloads, vec![part1]);
            let NetEvent::StateReceived { bytes, .. } = link.next_event().unwrap() else {
                panic!()
            };
            let s = OptimizerState::from_bytes(&bytes).unwrap();
            let got: Vec<f64> = ["param.0", "param.1"]
                .iter()
                .map(|k| s.get(k).unwrap().double_value(&[0]))
                .collect();
            assert_eq!(got, [11.0, 12.0]);
            assert_eq!(s.get_scalar("step").unwrap(), 9.0);
            assert!(s.get("param.2").is_err());
        });
        let mut leader = SiteLink::new(Some(net), Box::new(lead), Some(layout(0)));
        leader.publish(2, part(0)).unwrap();
        leader.provide_state(2, state(0)).unwrap();
        let NetEvent::RoundReady { payloads, .. } = leader.next_event().unwrap() else { panic!() };
        assert_eq!(payloads, vec![part(0)]);
        leader.next_event().unwrap();
        follower.join().unwrap();
        let net = leader.into_network().unwrap();
        assert_eq!(net.published, vec![whole.encode()], "the site publishes the whole payload");
        let served = OptimizerState::from_bytes(&net.states[0]).unwrap();
        for i in 0..3 {
            assert_eq!(served.get(&format!("param.{i}")).unwrap().double_value(&[0]), i as f64);
        }
    }
}
