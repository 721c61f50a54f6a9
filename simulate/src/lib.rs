//! WAN simulation for Meridian: link models, a virtual UDP fabric, an impairment proxy and
//! an analytic what-if model.
//!
//! `meridian-simulate` moves datagrams the way a wide-area network would (propagation
//! delay, jitter, bandwidth, queues, loss, partitions) in virtual time, so one machine can
//! show what a cross-continent run will do.
//!
//! It must not know about training, tensors or the round protocol: it only carries
//! datagrams. The link models land with the simulator work; this crate is the reserved
//! place for them in the workspace's layering.
