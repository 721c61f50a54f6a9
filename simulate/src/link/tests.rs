//! The link model against its configuration, measured over many datagrams.

use super::*;

const MS: Duration = Duration::from_millis(1);

fn spec() -> LinkSpec {
    LinkSpec::default()
}

fn arrival(f: Fate) -> Option<Duration> {
    match f {
        Fate::Arrives { at, .. } => Some(at),
        Fate::Dropped(_) => None,
    }
}

/// Offers `n` datagrams of `len` bytes, one every `gap`, from t = 0; returns the fates.
fn run(model: &mut LinkModel, n: usize, len: usize, gap: Duration) -> Vec<(Duration, Fate)> {
    (0..n)
        .map(|i| {
            let now = gap * i as u32;
            (now, model.offer(now, len))
        })
        .collect()
}

/// Allowed deviation of an observed frequency from `p` over `n` trials: 5 standard errors.
fn tolerance(p: f64, n: usize) -> f64 {
    5.0 * (p * (1.0 - p) / n as f64).sqrt()
}

#[test]
fn one_way_delay_is_exact_without_jitter_or_rate() {
    let mut m = LinkModel::new(LinkSpec { delay: Dur(35 * MS), ..spec() }, 1);
    for (now, fate) in run(&mut m, 1000, 1200, Duration::from_micros(370)) {
        assert_eq!(fate, Fate::Arrives { at: now + 35 * MS, duplicated: false });
    }
}

#[test]
fn serialization_follows_the_rate_including_headers() {
    // 10 Mb/s: a 1222-byte payload is 1250 bytes on the wire, 1 ms to serialize.
    let link = LinkSpec {
        delay: Dur(20 * MS),
        rate: Some(Rate::new(10e6).unwrap()),
        queue: QueueLimit::Bytes(u64::MAX),
        ..spec()
    };
    let mut m = LinkModel::new(link, 1);
    let fates = run(&mut m, 500, 1222, Duration::ZERO);
    for (i, (_, fate)) in fates.iter().enumerate() {
        let expect = 20 * MS + MS * (i as u32 + 1);
        let at = arrival(*fate).unwrap();
        let err = at.abs_diff(expect);
        assert!(err < Duration::from_micros(1), "datagram {i}: {at:?} vs {expect:?}");
    }
}

#[test]
fn saturated_throughput_equals_the_rate() {
    // Offered at twice the rate for 10 s; what arrives per second is the rate ± 2%.
    let rate = 50e6;
    let link = LinkSpec { rate: Some(Rate::new(rate).unwrap()), ..spec() };
    let mut m = LinkModel::new(link, 3);
    let len = 1200;
    let gap = Duration::from_secs_f64((len as f64 + 28.0) * 8.0 / (2.0 * rate));
    let n = (10.0 / gap.as_secs_f64()) as usize;
    let fates = run(&mut m, n, len, gap);
    let window = (Duration::from_secs(2), Duration::from_secs(9));
    let bytes: u64 = fates
        .iter()
        .filter_map(|(_, f)| arrival(*f))
        .filter(|at| *at >= window.0 && *at < window.1)
        .map(|_| len as u64 + 28)
        .sum();
    let measured = bytes as f64 * 8.0 / (window.1 - window.0).as_secs_f64();
    assert!((measured / rate - 1.0).abs() < 0.02, "{measured} vs {rate}");
    let queue_drops = fates.iter().filter(|(_, f)| *f == Fate::Dropped(DropReason::Queue)).count();
    assert!(queue_drops as f64 > 0.4 * n as f64, "half the offered load must be dropped");
}

#[test]
fn drop_tail_queue_holds_its_bytes_or_its_time() {
    // 1 Mb/s, 1250-byte wire datagrams: 10 ms each.
    let rate = Some(Rate::new(1e6).unwrap());
    let bytes = LinkSpec { rate, queue: QueueLimit::Bytes(10 * 1250), ..spec() };
    let mut m = LinkModel::new(bytes, 1);
    let fates = run(&mut m, 100, 1222, Duration::ZERO);
    let passed = fates.iter().filter(|(_, f)| arrival(*f).is_some()).count();
    assert_eq!(passed, 10);
    // After the queue drains (100 ms), there is room again.
    assert!(arrival(m.offer(100 * MS, 1222)).is_some());

    // At most 25 ms of wait: datagrams starting at 0, 10 and 20 ms fit, the 4th would wait 30.
    let time = LinkSpec { rate, queue: QueueLimit::Time(25 * MS), ..spec() };
    let mut m = LinkModel::new(time, 1);
    let fates = run(&mut m, 100, 1222, Duration::ZERO);
    assert_eq!(fates.iter().filter(|(_, f)| arrival(*f).is_some()).count(), 3);
}

#[test]
fn random_loss_matches_its_probability() {
    let p = 0.005;
    let n = 400_000;
    let mut m = LinkModel::new(LinkSpec { loss: Prob::new(p).unwrap(), ..spec() }, 11);
    let fates = run(&mut m, n, 1200, Duration::from_micros(10));
    let lost = fates.iter().filter(|(_, f)| *f == Fate::Dropped(DropReason::Random)).count();
    let rate = lost as f64 / n as f64;
    assert!((rate - p).abs() < tolerance(p, n), "{rate}");
}

#[test]
fn gilbert_elliott_loss_has_its_mean_and_burst_length() {
    let ge = GilbertElliott::with_mean(0.03, 4.0).unwrap();
    assert!((ge.mean_loss() - 0.03).abs() < 1e-12);
    let n = 1_000_000;
    let mut m = LinkModel::new(LinkSpec { burst: Some(ge), ..spec() }, 5);
    let lost: Vec<bool> = run(&mut m, n, 1200, Duration::from_micros(10))
        .iter()
        .map(|(_, f)| *f == Fate::Dropped(DropReason::Burst))
        .collect();
    let rate = lost.iter().filter(|&&l| l).count() as f64 / n as f64;
    // Losses come in bursts of ~4, so the effective sample is ~4× smaller: 4× the variance.
    assert!((rate - 0.03).abs() < 2.0 * tolerance(0.03, n), "{rate}");
    let bursts = lost.windows(2).filter(|w| !w[0] && w[1]).count();
    let mean_burst = lost.iter().filter(|&&l| l).count() as f64 / bursts as f64;
    assert!((mean_burst - 4.0).abs() < 0.2, "mean burst {mean_burst}");
}

#[test]
fn duplication_matches_its_probability() {
    let p = 0.01;
    let n = 200_000;
    let mut m = LinkModel::new(LinkSpec { duplicate: Prob::new(p).unwrap(), ..spec() }, 2);
    let dups = run(&mut m, n, 1200, Duration::from_micros(10))
        .iter()
        .filter(|(_, f)| matches!(f, Fate::Arrives { duplicated: true, .. }))
        .count();
    assert!((dups as f64 / n as f64 - p).abs() < tolerance(p, n));
}

#[test]
fn jitter_spreads_delay_but_keeps_order() {
    let link = LinkSpec { delay: Dur(50 * MS), jitter: Dur(5 * MS), ..spec() };
    let mut m = LinkModel::new(link, 9);
    let fates = run(&mut m, 100_000, 1200, Duration::from_millis(20));
    let arrivals: Vec<Duration> = fates.iter().map(|(_, f)| arrival(*f).unwrap()).collect();
    assert!(arrivals.windows(2).all(|w| w[0] <= w[1]), "jitter alone must not reorder");
    let delays: Vec<f64> =
        fates.iter().map(|(now, f)| (arrival(*f).unwrap() - *now).as_secs_f64() * 1e3).collect();
    let mean = delays.iter().sum::<f64>() / delays.len() as f64;
    let (lo, hi) = delays.iter().fold((f64::MAX, f64::MIN), |(l, h), &d| (l.min(d), h.max(d)));
    // Datagrams 20 ms apart never catch up, so each sees delay ± 5 ms, uniform.
    assert!((mean - 50.0).abs() < 0.05, "mean {mean}");
    assert!((45.0 - 1e-6..45.1).contains(&lo), "shortest {lo}");
    assert!((54.9..=55.0 + 1e-6).contains(&hi), "longest {hi}");
}

#[test]
fn reordering_lets_later_datagrams_overtake_held_ones() {
    let p = 0.05;
    let link = LinkSpec {
        delay: Dur(30 * MS),
        reorder: Prob::new(p).unwrap(),
        reorder_delay: Dur(2 * MS),
        ..spec()
    };
    let n = 100_000;
    let mut m = LinkModel::new(link, 4);
    // 0.5 ms apart: a datagram held back 2 ms is overtaken by the next 4.
    let arrivals: Vec<Duration> = run(&mut m, n, 1200, Duration::from_micros(500))
        .iter()
        .map(|(_, f)| arrival(*f).unwrap())
        .collect();
    let held = arrivals.windows(2).filter(|w| w[0] > w[1]).count();
    assert!((held as f64 / n as f64 - p).abs() < tolerance(p, n), "{held}");
    // Without reorder, the same link delivers in order.
    let mut m = LinkModel::new(LinkSpec { reorder: Prob::default(), ..m.spec().clone() }, 4);
    let arrivals: Vec<Duration> = run(&mut m, 1000, 1200, Duration::from_micros(500))
        .iter()
        .map(|(_, f)| arrival(*f).unwrap())
        .collect();
    assert!(arrivals.windows(2).all(|w| w[0] <= w[1]));
}

#[test]
fn outages_drop_everything_inside_their_window() {
    let link = LinkSpec {
        delay: Dur(10 * MS),
        outages: vec![Window { at: Dur(Duration::from_secs(1)), duration: Dur(500 * MS) }],
        ..spec()
    };
    let mut m = LinkModel::new(link, 1);
    for (now, fate) in run(&mut m, 3000, 1200, MS) {
        let inside = now >= Duration::from_secs(1) && now < Duration::from_millis(1500);
        assert_eq!(fate == Fate::Dropped(DropReason::Outage), inside, "at {now:?}");
    }
}

#[test]
fn a_rate_change_takes_effect_at_its_time() {
    // 100 Mb/s, then 10 Mb/s from t = 1 s (a 10× drop); offered at 200 Mb/s throughout.
    let link = LinkSpec {
        rate: Some(Rate::new(100e6).unwrap()),
        changes: vec![Change {
            at: Dur(Duration::from_secs(1)),
            rate: Some(Rate::new(10e6).unwrap()),
            ..Change::default()
        }],
        ..spec()
    };
    let mut m = LinkModel::new(link, 1);
    let gap = Duration::from_secs_f64(1250.0 * 8.0 / 200e6);
    let n = (2.0 / gap.as_secs_f64()) as usize;
    let fates = run(&mut m, n, 1222, gap);
    let rate_in = |from: f64, to: f64| {
        let count = fates
            .iter()
            .filter_map(|(_, f)| arrival(*f))
            .filter(|at| at.as_secs_f64() >= from && at.as_secs_f64() < to)
            .count();
        count as f64 * 1250.0 * 8.0 / (to - from)
    };
    let before = rate_in(0.2, 0.9);
    let after = rate_in(1.3, 1.9);
    assert!((before / 100e6 - 1.0).abs() < 0.02, "{before}");
    assert!((after / 10e6 - 1.0).abs() < 0.02, "{after}");
}

#[test]
fn oversized_datagrams_are_dropped() {
    let mut m = LinkModel::new(spec(), 1);
    assert_eq!(m.offer(Duration::ZERO, 1473), Fate::Dropped(DropReason::TooLarge));
    assert!(arrival(m.offer(Duration::ZERO, 1472)).is_some());
}

#[test]
fn same_seed_same_fates_other_seed_other_fates() {
    let link = LinkSpec {
        delay: Dur(10 * MS),
        jitter: Dur(MS),
        loss: Prob::new(0.05).unwrap(),
        rate: Some(Rate::new(1e9).unwrap()),
        ..spec()
    };
    let fates = |seed| run(&mut LinkModel::new(link.clone(), seed), 5000, 1200, MS);
    assert_eq!(fates(1), fates(1));
    assert_ne!(fates(1), fates(2));
}

#[test]
fn burst_models_parse_either_way_and_refuse_a_mix() {
    #[derive(Deserialize)]
    struct T {
        burst: GilbertElliott,
    }
    let t: T = toml::from_str("burst = { loss = \"5%\", mean_burst = 5 }").unwrap();
    assert!((t.burst.mean_loss() - 0.05).abs() < 1e-12);
    assert!((t.burst.r - 0.2).abs() < 1e-12);
    let t: T = toml::from_str("burst = { p = 0.01, r = 0.3, loss_bad = 0.5 }").unwrap();
    assert_eq!(t.burst.loss_bad, 0.5);
    assert_eq!(t.burst.loss_good, 0.0);
    let e = toml::from_str::<T>("burst = { loss = 0.05, p = 0.01 }").err().unwrap().to_string();
    assert!(e.contains("either"), "{e}");
}
