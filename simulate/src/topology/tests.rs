//! Presets, TOML files, placement and the errors bad input gets.

use super::*;
use crate::units::Rate;

#[test]
fn every_preset_builds_validates_and_places_workers() {
    for &name in Topology::preset_names() {
        let t = Topology::preset(name).unwrap();
        t.validate().unwrap();
        assert_eq!(t.name(), name);
        let placed = t.place_workers(8).unwrap();
        assert_eq!(placed.len(), 8);
        assert!(placed.iter().all(|r| t.regions().contains(r)));
        let lines = t.describe().lines().count();
        assert_eq!(lines, 1 + t.regions().len() * t.regions().len(), "{}", t.describe());
    }
}

#[test]
fn cross_continent_has_the_documented_rtts_and_rates() {
    let t = Topology::preset("cross-continent").unwrap();
    assert_eq!(t.regions(), ["us-east", "us-west", "eu-west", "ap-southeast"]);
    assert_eq!(t.coordinator_region(), "us-east");
    let rtt = |a, b| t.base_rtt(a, b).unwrap().as_secs_f64() * 1e3;
    assert!((rtt("us-east", "us-west") - 70.0).abs() < 1e-9);
    assert!((rtt("us-east", "eu-west") - 80.0).abs() < 1e-9);
    assert!((rtt("us-west", "ap-southeast") - 160.0).abs() < 1e-9);
    assert!((rtt("ap-southeast", "us-east") - 250.0).abs() < 1e-9);
    let l = t.link("eu-west", "us-west").unwrap();
    assert_eq!(l.rate.map(Rate::bits_per_sec), Some(1e9));
    assert!((0.001..=0.005).contains(&l.loss.get()));
    let text = t.describe();
    assert!(
        text.contains("us-east -> eu-west: delay 40ms ±0.5ms, 1Gbps, queue 50ms, loss 0.2%\n"),
        "{text}"
    );
    let lossy = Topology::preset("lossy").unwrap().describe();
    assert!(lossy.contains("bursty loss 3% (mean burst 3)"), "{lossy}");
    // Round-robin over the four regions.
    assert_eq!(t.place_workers(5).unwrap()[4], "us-east");
}

#[test]
fn home_is_asymmetric_and_keeps_workers_out_of_the_datacenter() {
    let t = Topology::preset("home").unwrap();
    let up = t.link("cable", "datacenter").unwrap().rate.unwrap().bits_per_sec();
    let down = t.link("datacenter", "cable").unwrap().rate.unwrap().bits_per_sec();
    assert_eq!((up, down), (20e6, 200e6));
    assert_eq!(t.link("fiber", "datacenter").unwrap().rate.unwrap().bits_per_sec(), 100e6);
    assert_eq!(t.place_workers(3).unwrap(), ["cable", "fiber", "cable"]);
}

const TWO_SITES: &str = r#"
name = "two-sites"
regions = ["east", "west"]
coordinator = "west"
capacity = { east = 1 }

[intra]
delay = "0.1ms"

[links."east -> west"]
delay = "20ms"
rate = "100Mbps"
queue = "64KiB"

[links."west -> east"]
delay = "25ms"
rate = "1Gbps"
burst = { loss = "2%", mean_burst = 3 }
changes = [{ at = "30s", rate = "100Mbps" }]

[[partition]]
between = ["east", "west"]
at = "60s"
duration = "30s"
"#;

#[test]
fn a_topology_file_parses_with_units_schedules_and_partitions() {
    let t = Topology::from_toml(TWO_SITES).unwrap();
    assert_eq!(t.name(), "two-sites");
    assert_eq!(t.coordinator_region(), "west");
    let ew = t.link("east", "west").unwrap();
    assert_eq!(ew.delay.0, Duration::from_millis(20));
    assert_eq!(ew.queue, crate::units::QueueLimit::Bytes(65536));
    let we = t.link("west", "east").unwrap();
    assert_eq!(we.rate.unwrap().bits_per_sec(), 1e9);
    assert_eq!(we.changes[0].rate.unwrap().bits_per_sec(), 100e6);
    assert!((we.burst.unwrap().mean_loss() - 0.02).abs() < 1e-12);
    // The partition is an outage on both directions.
    let window =
        Window { at: Dur(Duration::from_secs(60)), duration: Dur(Duration::from_secs(30)) };
    assert_eq!(ew.outages, [window]);
    assert_eq!(we.outages, [window]);
    assert_eq!(t.link("east", "east").unwrap().delay.0, Duration::from_micros(100));
    // east holds one worker, west is unbounded.
    assert_eq!(t.place_workers(3).unwrap(), ["east", "west", "west"]);
    assert_eq!(t.base_rtt("east", "west").unwrap(), Duration::from_millis(45));
}

#[test]
fn both_ways_and_intra_keys() {
    let t = Topology::from_toml(
        r#"
regions = ["a", "b"]
[links."a <-> b"]
delay = "10ms"
[links.a]
delay = "1ms"
"#,
    )
    .unwrap();
    assert_eq!(t.coordinator_region(), "a");
    assert_eq!(t.link("b", "a").unwrap().delay.0, Duration::from_millis(10));
    assert_eq!(t.link("a", "a").unwrap().delay.0, Duration::from_millis(1));
    // b has no own entry, so it gets the default intra link (the lan one).
    assert_eq!(t.link("b", "b").unwrap(), &crate::presets::lan_link());
}

fn err(text: &str) -> String {
    Topology::from_toml(text).unwrap_err().to_string()
}

#[test]
fn an_unknown_preset_names_the_known_ones() {
    let e = Topology::preset("moon-base").unwrap_err().to_string();
    assert!(e.contains("moon-base") && e.contains("cross-continent"), "{e}");
}

#[test]
fn a_missing_link_is_named() {
    let e = err("regions = [\"a\", \"b\"]\n[links.\"a -> b\"]\ndelay = \"1ms\"\n");
    assert!(e.contains("no link from region \"b\" to region \"a\""), "{e}");
}

#[test]
fn a_negative_rate_is_refused_naming_the_key() {
    let e = err("regions = [\"a\", \"b\"]\n[links.\"a <-> b\"]\nrate = \"-5Mbps\"\n");
    assert!(e.contains("rate must be positive") && e.contains("-5Mbps"), "{e}");
    assert!(e.contains("line 3"), "the error points at the line: {e}");
}

#[test]
fn unknown_regions_fields_and_duplicates_are_refused() {
    let e = err("regions = [\"a\"]\n[links.\"a -> mars\"]\n");
    assert!(e.contains("unknown region \"mars\"") && e.contains("a -> mars"), "{e}");
    let e = err("regions = [\"a\"]\ncoordinator = \"b\"\n");
    assert!(e.contains("unknown region \"b\" in coordinator"), "{e}");
    let e = err("regions = [\"a\"]\n[intra]\nlatency = \"1ms\"\n");
    assert!(e.contains("unknown field") && e.contains("latency"), "{e}");
    let e = err("regions = [\"a\", \"b\"]\n[links.\"a <-> b\"]\n[links.\"b -> a\"]\n");
    assert!(e.contains("more than once"), "{e}");
    let e = err("regions = [\"a\", \"a\"]\n");
    assert!(e.contains("listed twice"), "{e}");
    let e = err("regions = []\n");
    assert!(e.contains("at least one region"), "{e}");
    let e = err("regions = [\"a\"]\n[intra]\nloss = 1.5\n");
    assert!(e.contains("[0, 1]"), "{e}");
    let e = err("regions = [\"a\"]\ncapacity = { b = 1 }\n");
    assert!(e.contains("\"b\" in capacity"), "{e}");
}

#[test]
fn too_many_workers_is_an_error_naming_the_capacity() {
    let t = Topology::from_toml(
        "regions = [\"a\", \"b\"]\ncapacity = { a = 2, b = 1 }\n[links.\"a <-> b\"]\n",
    )
    .unwrap();
    assert_eq!(t.place_workers(3).unwrap(), ["a", "b", "a"]);
    let e = t.place_workers(4).unwrap_err().to_string();
    assert!(e.contains("cannot place 4 workers") && e.contains("at most 3"), "{e}");
    let mut t = Topology::preset("lan").unwrap();
    t.set_worker_regions(vec!["lan".into(); 2]);
    assert!(matches!(t.place_workers(3), Err(SimError::TooManyWorkers { capacity: 2, .. })));
}

#[test]
fn compute_speeds_parse_default_to_one_and_refuse_what_makes_no_sense() {
    let base = r#"
regions = ["a", "b"]
[links."a <-> b"]
delay = "10ms"
"#;
    let t = Topology::from_toml(base).unwrap();
    assert!(t.uniform_speed());
    assert_eq!((t.speed("a"), t.speed("b"), t.speed_jitter()), (1.0, 1.0, 0.0));
    let t =
        Topology::from_toml(&format!("speed = {{ b = 0.5 }}\nspeed_jitter = 0.1\n{base}")).unwrap();
    assert!(!t.uniform_speed());
    assert_eq!((t.speed("a"), t.speed("b"), t.speed_jitter()), (1.0, 0.5, 0.1));
    assert!(t.describe().contains("compute speed: a 1, b 0.5; each step within 10% of"));
    for (bad, names) in [
        ("speed = { c = 0.5 }", "c"),
        ("speed = { b = 0 }", "speed of b"),
        ("speed = { b = -1 }", "speed of b"),
        ("speed = { b = 2000 }", "speed of b"),
        ("speed = { b = nan }", "speed of b"),
        ("speed_jitter = 0.6", "speed_jitter"),
        ("speed_jitter = -0.1", "speed_jitter"),
        ("worker_speed = { 1 = 0 }", "speed of worker 1"),
        ("worker_speed = { first = 0.5 }", "worker_speed key \"first\""),
    ] {
        let e = Topology::from_toml(&format!("{bad}\n{base}")).unwrap_err().to_string();
        assert!(e.contains(names), "{bad}: {e}");
    }
    // Set in code: checked by validate.
    let mut t = Topology::preset("cross-continent").unwrap();
    t.set_speed("ap-southeast", 0.5);
    t.validate().unwrap();
    assert_eq!(t.speed("ap-southeast"), 0.5);
    t.set_speed("mars", 0.5);
    assert!(t.validate().unwrap_err().to_string().contains("mars"));
    // One worker slower than its region: its own speed wins, its neighbours keep the region's.
    let t = Topology::from_toml(&format!("worker_speed = {{ 3 = 0.5 }}\n{base}")).unwrap();
    assert!(!t.uniform_speed());
    assert_eq!((t.speed_of("b", 3), t.speed_of("b", 1), t.speed("b")), (0.5, 1.0, 1.0));
    assert!(t.describe().contains("over its region's: worker 3 0.5"), "{}", t.describe());
}
