//! Accuracy over fixed-seed inputs, merge equal to one pass, and the binary form.

use super::*;

/// xorshift64*: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let x = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        x
    }
}

fn hll_of(values: impl IntoIterator<Item = String>) -> Hll {
    let mut h = Hll::default();
    for v in values {
        h.insert(hash_value(&v));
    }
    h
}

fn round_trip_hll(h: &Hll) -> Hll {
    let mut buf = Vec::new();
    h.encode(&mut buf);
    let mut input = buf.as_slice();
    let back = Hll::decode(&mut input).unwrap();
    assert!(input.is_empty());
    back
}

#[test]
fn count_distinct_is_within_one_percent_on_average_from_10_to_a_million() {
    let cardinalities = [
        10, 20, 50, 100, 200, 500, 1_000, 2_000, 4_000, 5_000, 10_000, 20_000, 50_000, 100_000,
        200_000, 500_000, 1_000_000,
    ];
    let mut errors = Vec::new();
    for (n, seed) in cardinalities.iter().zip(1u64..) {
        let mut h = Hll::default();
        // Every value twice: duplicates must not count.
        for i in 0..*n {
            let v = format!("\"u-{seed}-{i}\"");
            h.insert(hash_value(&v));
            h.insert(hash_value(&v));
        }
        #[allow(clippy::cast_precision_loss)]
        let want = *n as f64;
        let err = (h.estimate() - want).abs() / want;
        assert!(err < 0.03, "n = {n}: estimate {} ({err})", h.estimate());
        if *n <= HLL_SPARSE_MAX {
            assert!(matches!(h, Hll::Sparse(_)), "n = {n} stays sparse");
            assert!(
                err < 0.001,
                "sparse is near exact: n = {n}, {}",
                h.estimate()
            );
        } else {
            assert!(matches!(h, Hll::Dense(_)), "n = {n} is dense");
        }
        assert_eq!(round_trip_hll(&h), h);
        errors.push(err);
    }
    #[allow(clippy::cast_precision_loss)]
    let mean = errors.iter().sum::<f64>() / errors.len() as f64;
    assert!(mean < 0.01, "mean relative error {mean}: {errors:?}");
}

#[test]
fn strings_are_counted_by_their_content_and_apart_from_numbers() {
    assert_eq!(hash_value(r#""A""#), hash_value(r#""\u0041""#));
    assert_ne!(hash_value(r#""1""#), hash_value("1"));
    assert_ne!(hash_value("1"), hash_value("1.0"));
    assert_eq!(hash_value("true"), hash_value("true"));
    let h = hll_of(["\"u-1\"", "1", "\"1\"", "\"u-1\""].map(String::from));
    assert_eq!(h.estimate().round(), 3.0);
    assert_eq!(Hll::default().estimate(), 0.0);
}

#[test]
fn merging_hll_sketches_equals_one_pass_across_the_dense_switch() {
    for (n, split) in [(100, 3), (4_000, 2), (4_200, 7), (9_000, 3), (30_000, 5)] {
        let values: Vec<String> = (0..n).map(|i| format!("\"v{i}\"")).collect();
        let whole = hll_of(values.iter().cloned());
        let mut parts: Vec<Hll> = (0..split).map(|_| Hll::default()).collect();
        for (i, v) in values.iter().enumerate() {
            // Overlapping parts: some values in two of them.
            parts[i % split].insert(hash_value(v));
            if i % 5 == 0 {
                parts[(i + 1) % split].insert(hash_value(v));
            }
        }
        let mut forward = Hll::default();
        for p in &parts {
            forward.merge(p);
        }
        let mut backward = parts.last().cloned().unwrap_or_default();
        for p in parts.iter().rev() {
            backward.merge(p);
        }
        assert_eq!(forward, whole, "n = {n}");
        assert_eq!(backward, whole, "n = {n}");
    }
}

#[test]
fn a_sparse_sketch_is_small_on_disk_and_corrupt_forms_are_refused() {
    let h = hll_of((0..1000).map(|i| format!("\"u-{i}\"")));
    let mut buf = Vec::new();
    h.encode(&mut buf);
    // Varint deltas of 31-bit entries: under 4 bytes an entry, their size in memory.
    assert!(
        buf.len() < 4 * 1000,
        "{} bytes for 1,000 entries",
        buf.len()
    );
    for cut in 0..buf.len() {
        assert!(Hll::decode(&mut &buf[..cut]).is_err(), "cut at {cut}");
    }
    let dense = hll_of((0..10_000).map(|i| format!("\"u-{i}\"")));
    let mut buf = Vec::new();
    dense.encode(&mut buf);
    assert_eq!(buf.len(), 1 + 12 * 1024);
    assert!(Hll::decode(&mut &buf[..buf.len() - 1]).is_err());
    // Sparse, two entries: index 5 rho 1, then the same index again (delta 0).
    let good: &[u8] = &[0, 2, 0xc1, 0x02, 0x41];
    assert!(Hll::decode(&mut &good[..]).is_ok());
    let repeated: &[u8] = &[0, 2, 0xc1, 0x02, 0x00];
    assert!(Hll::decode(&mut &repeated[..]).is_err());
    let rho_zero: &[u8] = &[0, 1, 0xc0, 0x02];
    assert!(Hll::decode(&mut &rho_zero[..]).is_err());
}

fn exact_quantile(sorted: &[f64], q: f64) -> f64 {
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    let rank = (q * (sorted.len() - 1) as f64).floor() as usize;
    sorted[rank]
}

fn round_trip_dd(d: &DdSketch) -> DdSketch {
    let mut buf = Vec::new();
    d.encode(&mut buf);
    let mut input = buf.as_slice();
    let back = DdSketch::decode(&mut input).unwrap();
    assert!(input.is_empty());
    back
}

#[test]
fn quantiles_are_within_one_percent_of_the_value_at_their_rank() {
    let mut rng = Rng(7);
    let data_sets: Vec<(&str, Vec<f64>)> = vec![
        // Latencies in ms: log-uniform over 0.1 ms .. 10 s.
        (
            "log-uniform",
            (0..100_000)
                .map(|_| 0.1 * 1e5f64.powf(rng.unit()))
                .collect(),
        ),
        (
            "uniform integers",
            (0..50_000).map(|_| (rng.next() % 5_000) as f64).collect(),
        ),
        (
            "signed with zeros",
            (0..20_001)
                .map(|i| {
                    if i % 10 == 0 {
                        0.0
                    } else {
                        (rng.unit() - 0.3) * 1e6
                    }
                })
                .collect(),
        ),
        ("one value", vec![42.0]),
    ];
    for (name, values) in data_sets {
        let mut d = DdSketch::default();
        for v in &values {
            d.insert(*v);
        }
        let mut sorted = values.clone();
        sorted.sort_by(f64::total_cmp);
        for q in [0.0, 0.01, 0.25, 0.5, 0.9, 0.99, 0.999, 1.0] {
            let want = exact_quantile(&sorted, q);
            let got = d.quantile(q).unwrap();
            let err = if want == 0.0 {
                got.abs()
            } else {
                (got - want).abs() / want.abs()
            };
            assert!(
                err <= DD_ALPHA + 1e-12,
                "{name} q {q}: {got} for {want} ({err})"
            );
        }
        assert_eq!(round_trip_dd(&d), d);
    }
    assert_eq!(DdSketch::default().quantile(0.5), None);
}

#[test]
fn merging_ddsketches_equals_one_pass_even_when_bins_collapse() {
    let mut rng = Rng(11);
    // Values over 1e-300 .. 1e300: far more than DD_BINS_MAX bins, so the lowest collapse.
    let wide: Vec<f64> = (0..20_000)
        .map(|_| {
            let v = 10f64.powf(rng.unit() * 600.0 - 300.0);
            if rng.next().is_multiple_of(3) { -v } else { v }
        })
        .collect();
    let narrow: Vec<f64> = (0..5_000).map(|i| f64::from(i % 700)).collect();
    for values in [wide, narrow] {
        let mut whole = DdSketch::default();
        values.iter().for_each(|v| whole.insert(*v));
        assert!(whole.positive.counts.len() <= DD_BINS_MAX);
        let mut parts = vec![DdSketch::default(); 4];
        for (i, v) in values.iter().enumerate() {
            parts[(i * 7 + i / 13) % 4].insert(*v);
        }
        let mut forward = DdSketch::default();
        parts.iter().for_each(|p| forward.merge(p));
        let mut backward = DdSketch::default();
        parts.iter().rev().for_each(|p| backward.merge(p));
        assert_eq!(forward, whole);
        assert_eq!(backward, whole);
        assert_eq!(round_trip_dd(&whole), whole);
        // The top quantiles (above the collapsed bins: the top 18 decades of 1e-300 ..
        // 1e300) are still within alpha.
        let mut sorted = values.clone();
        sorted.sort_by(f64::total_cmp);
        for q in [0.99, 0.999] {
            let want = exact_quantile(&sorted, q);
            let got = whole.quantile(q).unwrap();
            assert!(
                (got - want).abs() <= want.abs() * (DD_ALPHA + 1e-12),
                "{got} {want}"
            );
        }
    }
}

#[test]
fn a_corrupt_ddsketch_is_refused() {
    let mut d = DdSketch::default();
    for v in [1.0, 5.0, -3.0, 0.0, 1000.0] {
        d.insert(v);
    }
    let mut buf = Vec::new();
    d.encode(&mut buf);
    for cut in 0..buf.len() {
        assert!(DdSketch::decode(&mut &buf[..cut]).is_err(), "cut at {cut}");
    }
}
