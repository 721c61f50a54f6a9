//! Regions, the links between them, and where workers go.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Result, SimError};
use crate::link::{LinkSpec, Window};
use crate::presets;
use crate::units::Dur;

/// Named regions, a [`LinkSpec`] for every ordered pair of them (asymmetric allowed) and for
/// traffic inside each region, the coordinator's region and how workers are placed.
///
/// Build one from a [preset](Self::preset), a [TOML file](Self::from_toml), or in code with
/// [`new`](Self::new) and the `set_*` methods followed by [`validate`](Self::validate).
///
/// # TOML
/// ```toml
/// name = "two-sites"                  # optional
/// regions = ["us-east", "eu-west"]    # order matters for round-robin placement
/// coordinator = "us-east"             # default: the first region
/// capacity = { us-east = 2 }          # optional: most workers a region takes
/// workers = ["eu-west", "us-east"]    # optional: explicit placement of worker i
/// speed = { eu-west = 0.5 }           # optional: compute speed against the stated step
///                                     # time (0.5: steps take twice as long); default 1
/// worker_speed = { 7 = 0.5 }          # optional: worker 7's speed, over its region's
/// speed_jitter = 0.05                 # optional: each step off by up to 5% either way
///
/// [intra]                             # inside every region (default: the `lan` link)
/// delay = "0.1ms"
/// rate = "10Gbps"
///
/// [links."us-east <-> eu-west"]       # both directions; "a -> b" for one, "a" for a
/// delay = "40ms"                      # region's own intra link
/// rate = "1Gbps"
/// loss = "0.1%"
///
/// [[partition]]                       # no traffic either way during the window
/// between = ["us-east", "eu-west"]
/// at = "60s"
/// duration = "30s"
/// ```
/// Every ordered pair of distinct regions needs a link; a missing one is an error naming
/// it, as is a link given twice, an unknown region or an out-of-range value.
#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    name: String,
    regions: Vec<String>,
    coordinator: String,
    capacity: BTreeMap<String, usize>,
    workers: Option<Vec<String>>,
    links: BTreeMap<(String, String), LinkSpec>,
    speed: BTreeMap<String, f64>,
    /// Per worker index, over its region's speed.
    worker_speed: BTreeMap<usize, f64>,
    speed_jitter: f64,
}

/// The fastest and slowest compute speeds a region may be given, against the stated step
/// time: a thousandfold either way covers a phone beside a datacenter.
pub const SPEED_RANGE: (f64, f64) = (1e-3, 1e3);

/// The largest `speed_jitter`: steps off by up to half their length either way.
pub const MAX_SPEED_JITTER: f64 = 0.5;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopologyToml {
    name: Option<String>,
    regions: Vec<String>,
    coordinator: Option<String>,
    #[serde(default)]
    capacity: BTreeMap<String, usize>,
    workers: Option<Vec<String>>,
    #[serde(default)]
    speed: BTreeMap<String, f64>,
    #[serde(default)]
    worker_speed: BTreeMap<String, f64>,
    #[serde(default)]
    speed_jitter: f64,
    intra: Option<LinkSpec>,
    #[serde(default)]
    links: BTreeMap<String, LinkSpec>,
    #[serde(default, rename = "partition")]
    partitions: Vec<PartitionToml>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PartitionToml {
    between: [String; 2],
    at: Dur,
    duration: Dur,
}

impl Topology {
    /// A topology with these regions, coordinator in `coordinator`, and no links yet.
    pub fn new(name: &str, regions: &[&str], coordinator: &str) -> Topology {
        Topology {
            name: name.to_string(),
            regions: regions.iter().map(|r| r.to_string()).collect(),
            coordinator: coordinator.to_string(),
            capacity: BTreeMap::new(),
            workers: None,
            links: BTreeMap::new(),
            speed: BTreeMap::new(),
            worker_speed: BTreeMap::new(),
            speed_jitter: 0.0,
        }
    }

    /// Two regions `a` (coordinator) and `b` joined by the given links, with an
    /// unlimited, zero-delay link inside each: the shape of a point-to-point experiment.
    pub fn point_to_point(a_to_b: LinkSpec, b_to_a: LinkSpec) -> Topology {
        let mut t = Topology::new("point-to-point", &["a", "b"], "a");
        t.set_link("a", "b", a_to_b);
        t.set_link("b", "a", b_to_a);
        t.set_link("a", "a", LinkSpec::default());
        t.set_link("b", "b", LinkSpec::default());
        t
    }

    /// A built-in topology by name (see [`preset_names`](Self::preset_names) and the
    /// crate docs for the figures and their sources).
    pub fn preset(name: &str) -> Result<Topology> {
        presets::build(name).ok_or_else(|| SimError::UnknownPreset {
            name: name.to_string(),
            known: Self::preset_names().join(", "),
        })
    }

    /// Names [`preset`](Self::preset) accepts.
    pub fn preset_names() -> &'static [&'static str] {
        presets::NAMES
    }

    /// Parses and [validates](Self::validate) a topology file.
    pub fn from_toml(text: &str) -> Result<Topology> {
        let t: TopologyToml = toml::from_str(text).map_err(|e| SimError::Parse(e.to_string()))?;
        let first = t.regions.first().cloned().unwrap_or_default();
        let regions: Vec<&str> = t.regions.iter().map(String::as_str).collect();
        let mut topo = Topology::new(
            t.name.as_deref().unwrap_or("custom"),
            &regions,
            t.coordinator.as_deref().unwrap_or(&first),
        );
        topo.check_regions()?;
        topo.capacity = t.capacity;
        topo.workers = t.workers;
        topo.speed = t.speed;
        for (key, speed) in t.worker_speed {
            let worker = key.trim().parse().map_err(|_| SimError::InvalidValue {
                field: format!("worker_speed key {key:?}"),
                reason: "keys are worker indices (0, 1, ...)".into(),
            })?;
            topo.worker_speed.insert(worker, speed);
        }
        topo.speed_jitter = t.speed_jitter;
        let mut given = BTreeMap::new();
        for (key, spec) in t.links {
            for (from, to) in topo.parse_link_key(&key)? {
                if given.insert((from.clone(), to.clone()), spec.clone()).is_some() {
                    return Err(SimError::DuplicateLink { from, to });
                }
            }
        }
        let intra = t.intra.unwrap_or_else(presets::lan_link);
        for r in &topo.regions {
            given.entry((r.clone(), r.clone())).or_insert_with(|| intra.clone());
        }
        topo.links = given;
        for p in t.partitions {
            let [a, b] = p.between;
            topo.add_partition(&a, &b, Window { at: p.at, duration: p.duration })?;
        }
        topo.validate()?;
        Ok(topo)
    }

    /// `"a -> b"`, `"a <-> b"` or `"a"` as directed pairs, regions checked.
    fn parse_link_key(&self, key: &str) -> Result<Vec<(String, String)>> {
        let context = format!("[links.\"{key}\"]");
        let known = |r: &str| self.known_region(r.trim(), &context).map(str::to_string);
        if let Some((a, b)) = key.split_once("<->") {
            let (a, b) = (known(a)?, known(b)?);
            Ok(vec![(a.clone(), b.clone()), (b, a)])
        } else if let Some((a, b)) = key.split_once("->") {
            Ok(vec![(known(a)?, known(b)?)])
        } else {
            let a = known(key)?;
            Ok(vec![(a.clone(), a)])
        }
    }

    fn known_region<'a>(&self, region: &'a str, context: &str) -> Result<&'a str> {
        if self.regions.iter().any(|r| r == region) {
            Ok(region)
        } else {
            Err(SimError::UnknownRegion {
                region: region.to_string(),
                context: context.to_string(),
                known: self.regions.join(", "),
            })
        }
    }

    fn check_regions(&self) -> Result<()> {
        let invalid = |reason: String| SimError::InvalidValue { field: "regions".into(), reason };
        if self.regions.is_empty() {
            return Err(invalid("at least one region is needed".into()));
        }
        for (i, r) in self.regions.iter().enumerate() {
            if r.trim().is_empty() || r.trim() != r || r.contains("->") || r.contains("<-") {
                return Err(invalid(format!("{r:?} is not a usable region name")));
            }
            if self.regions[..i].contains(r) {
                return Err(invalid(format!("{r:?} is listed twice")));
            }
        }
        if self.regions.len() > 250 {
            return Err(invalid("at most 250 regions".into()));
        }
        Ok(())
    }

    /// Sets the link from `from` to `to` (equal for the link inside a region).
    pub fn set_link(&mut self, from: &str, to: &str, spec: LinkSpec) {
        self.links.insert((from.to_string(), to.to_string()), spec);
    }

    /// Caps how many workers `region` takes.
    pub fn set_capacity(&mut self, region: &str, max_workers: usize) {
        self.capacity.insert(region.to_string(), max_workers);
    }

    /// Sets `region`'s compute speed against the stated step time (0.5: its steps take
    /// twice as long). Checked by [`validate`](Self::validate).
    pub fn set_speed(&mut self, region: &str, speed: f64) {
        self.speed.insert(region.to_string(), speed);
    }

    /// Sets worker `worker`'s compute speed, over its region's (one slow machine in a
    /// region of fast ones). Checked by [`validate`](Self::validate).
    pub fn set_worker_speed(&mut self, worker: usize, speed: f64) {
        self.worker_speed.insert(worker, speed);
    }

    /// Worker `worker`'s compute speed, placed in `region`: its own if set, else the
    /// region's.
    pub fn speed_of(&self, region: &str, worker: usize) -> f64 {
        self.worker_speed.get(&worker).copied().unwrap_or_else(|| self.speed(region))
    }

    /// Sets how far each step's time may stray from its region's, as a fraction either way.
    /// Checked by [`validate`](Self::validate).
    pub fn set_speed_jitter(&mut self, jitter: f64) {
        self.speed_jitter = jitter;
    }

    /// `region`'s compute speed (1 unless set).
    pub fn speed(&self, region: &str) -> f64 {
        self.speed.get(region).copied().unwrap_or(1.0)
    }

    /// How far each step's time may stray from its region's, as a fraction either way.
    pub fn speed_jitter(&self) -> f64 {
        self.speed_jitter
    }

    /// Whether every region and worker computes at the stated speed, without jitter.
    pub fn uniform_speed(&self) -> bool {
        self.speed.values().chain(self.worker_speed.values()).all(|&s| s == 1.0)
            && self.speed_jitter == 0.0
    }

    /// Places worker i in `regions[i]` instead of round-robin.
    pub fn set_worker_regions(&mut self, regions: Vec<String>) {
        self.workers = Some(regions);
    }

    /// Cuts both directions between `a` and `b` during `window` (an outage on each link).
    pub fn add_partition(&mut self, a: &str, b: &str, window: Window) -> Result<()> {
        for (from, to) in [(a, b), (b, a)] {
            let context = format!("partition between {a:?} and {b:?}");
            self.known_region(from, &context)?;
            let spec =
                self.links.get_mut(&(from.to_string(), to.to_string())).ok_or_else(|| {
                    SimError::MissingLink { from: from.to_string(), to: to.to_string() }
                })?;
            spec.outages.push(window);
            if a == b {
                break;
            }
        }
        Ok(())
    }

    /// Checks the whole topology: regions, coordinator, a link for every ordered pair,
    /// every link's values, capacities and placement.
    pub fn validate(&self) -> Result<()> {
        self.check_regions()?;
        self.known_region(&self.coordinator, "coordinator")?;
        for from in &self.regions {
            for to in &self.regions {
                let spec = self.link(from, to)?;
                spec.validate().map_err(|(field, reason)| SimError::InvalidValue {
                    field: format!("link {from} -> {to}: {field}"),
                    reason,
                })?;
            }
        }
        for (from, to) in self.links.keys() {
            let context = format!("link {from} -> {to}");
            self.known_region(from, &context)?;
            self.known_region(to, &context)?;
        }
        for region in self.capacity.keys() {
            self.known_region(region, "capacity")?;
        }
        for region in self.workers.iter().flatten() {
            self.known_region(region, "workers")?;
        }
        for (region, &speed) in &self.speed {
            self.known_region(region, "speed")?;
            check_speed(&format!("speed of {region}"), "region", speed)?;
        }
        for (worker, &speed) in &self.worker_speed {
            check_speed(&format!("speed of worker {worker}"), "worker", speed)?;
        }
        if !(self.speed_jitter.is_finite() && (0.0..=MAX_SPEED_JITTER).contains(&self.speed_jitter))
        {
            return Err(SimError::InvalidValue {
                field: "speed_jitter".into(),
                reason: format!(
                    "{} is out of range: a step strays by a fraction from 0 to {MAX_SPEED_JITTER}",
                    self.speed_jitter
                ),
            });
        }
        Ok(())
    }

    /// The topology's name (the preset's, or the file's `name`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The regions, in placement order.
    pub fn regions(&self) -> &[String] {
        &self.regions
    }

    /// The region that hosts the coordinator.
    pub fn coordinator_region(&self) -> &str {
        &self.coordinator
    }

    /// Region of worker i: the topology's explicit `workers` list if it has one, else
    /// round-robin over the regions skipping those at their capacity. Errors if `n`
    /// workers do not fit.
    pub fn place_workers(&self, n: usize) -> Result<Vec<String>> {
        if let Some(list) = &self.workers {
            if n > list.len() {
                return Err(SimError::TooManyWorkers { requested: n, capacity: list.len() });
            }
            return Ok(list[..n].to_vec());
        }
        let cap = |r: &String| self.capacity.get(r).copied();
        if self.regions.iter().all(|r| cap(r).is_some()) {
            let total: usize = self.regions.iter().filter_map(cap).sum();
            if n > total {
                return Err(SimError::TooManyWorkers { requested: n, capacity: total });
            }
        }
        let mut placed = Vec::with_capacity(n);
        let mut count: BTreeMap<&String, usize> = BTreeMap::new();
        let mut i = 0;
        while placed.len() < n {
            let r = &self.regions[i % self.regions.len()];
            let c = count.entry(r).or_default();
            if cap(r).is_none_or(|max| *c < max) {
                *c += 1;
                placed.push(r.clone());
            }
            i += 1;
        }
        Ok(placed)
    }

    /// The link from region `from` to region `to` (equal names: inside the region).
    pub fn link(&self, from: &str, to: &str) -> Result<&LinkSpec> {
        self.known_region(from, "link lookup")?;
        self.known_region(to, "link lookup")?;
        self.links
            .get(&(from.to_string(), to.to_string()))
            .ok_or_else(|| SimError::MissingLink { from: from.to_string(), to: to.to_string() })
    }

    /// Round-trip base delay between two regions (both directions' `delay`), ignoring
    /// jitter, queueing and serialization.
    pub fn base_rtt(&self, a: &str, b: &str) -> Result<Duration> {
        Ok(self.link(a, b)?.base_delay() + self.link(b, a)?.base_delay())
    }

    /// A header line, then one line per directed link, for a CLI to print.
    pub fn describe(&self) -> String {
        let mut out = format!(
            "topology {}: regions {}; coordinator in {}\n",
            self.name,
            self.regions.join(", "),
            self.coordinator
        );
        for ((from, to), spec) in &self.links {
            let _ = writeln!(out, "  {from} -> {to}: {spec}");
        }
        if !self.uniform_speed() {
            let speeds: Vec<String> =
                self.regions.iter().map(|r| format!("{r} {}", self.speed(r))).collect();
            let _ = writeln!(
                out,
                "  compute speed: {}; each step within {}% of its region's",
                speeds.join(", "),
                self.speed_jitter * 100.0
            );
            if !self.worker_speed.is_empty() {
                let workers: Vec<String> =
                    self.worker_speed.iter().map(|(w, s)| format!("worker {w} {s}")).collect();
                let _ = writeln!(out, "  over its region's: {}", workers.join(", "));
            }
        }
        out
    }
}

/// Refuses a compute speed outside [`SPEED_RANGE`], naming `field` (a region's or a
/// worker's, as `what` says).
fn check_speed(field: &str, what: &str, speed: f64) -> Result<()> {
    let (slowest, fastest) = SPEED_RANGE;
    if speed.is_finite() && (slowest..=fastest).contains(&speed) {
        return Ok(());
    }
    Err(SimError::InvalidValue {
        field: field.to_string(),
        reason: format!(
            "{speed} is out of range: a {what} computes between {slowest} and {fastest} times \
             the stated speed"
        ),
    })
}

#[cfg(test)]
mod tests;
