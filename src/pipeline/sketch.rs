//! The two sketches behind `count_distinct` and `quantiles`: HyperLogLog++ (p = 14, sparse
//! at p' = 25 until it would outgrow the dense registers) and DDSketch (alpha = 0.01).
//!
//! Both are written here rather than taken from a crate because the engine needs four
//! things of them the crates do not give together: a compact binary form of the exact
//! state for checkpoints (sparse sketches stay small on disk), its real heap size for
//! `state_bytes`, equality, and a state that is a function of the set (HLL) or multiset
//! (DDSketch) of inputs alone, so merging panes gives the very state one pass gives and a
//! replay of the log gives identical results. The hash is xxh3 with a fixed seed: stable
//! across runs and builds.
//!
//! HLL estimates with Ertl's improved raw estimator ("New cardinality estimation
//! algorithms for HyperLogLog sketches", 2017) over the registers' histogram, in sparse
//! and dense mode alike. It is unbiased over the whole range without HLL++'s empirical
//! bias tables (some 200 interpolation points per precision) and without the switch to
//! linear counting. No IO.

use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::json;

/// Dense precision: 2^14 registers, a standard error of 1.04 / 128 = 0.81%.
pub const HLL_P: u32 = 14;
/// Sparse precision: entries keep 25 bits of index, so a sparse sketch is near exact.
pub const HLL_SPARSE_P: u32 = 25;
const HLL_M: usize = 1 << HLL_P;
/// Most sparse entries (4 bytes each) before a sketch turns dense (one byte a register):
/// the sparse form never takes more memory than the dense one.
pub const HLL_SPARSE_MAX: usize = HLL_M / 4;
/// Largest register value: a run of `64 - p` zero bits, plus one.
#[allow(clippy::cast_possible_truncation, reason = "51")]
const HLL_RHO_MAX: u8 = (64 - HLL_P + 1) as u8;
const HLL_SPARSE_RHO_MAX: u32 = 64 - HLL_SPARSE_P + 1;

/// Seeds of the value hash: a JSON string hashes its decoded text under one, any other
/// value its raw JSON text under the other, so `"1"` and `1` are distinct values.
const SEED_STRING: u64 = 0x7765_6972_5f73_7472;
const SEED_OTHER: u64 = 0x7765_6972_5f6f_7468;

/// The hash `count_distinct` counts a raw JSON value by: strings by their decoded
/// content (`"A"` and `"\u0041"` are one value), numbers, booleans, objects and arrays
/// by their text (`1` and `1.0` are two values; the stored envelope is compact JSON).
pub fn hash_value(raw: &str) -> u64 {
    if raw.starts_with('"')
        && let Ok(text) = json::decode_str(raw)
    {
        return xxh3_64_with_seed(text.as_bytes(), SEED_STRING);
    }
    xxh3_64_with_seed(raw.as_bytes(), SEED_OTHER)
}

/// A HyperLogLog++ sketch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hll {
    /// Sorted by index, one entry per index seen: `index << 6 | rho` at p' = 25.
    Sparse(Vec<u32>),
    /// One register per index at p = 14.
    Dense(Box<[u8]>),
}

impl Default for Hll {
    fn default() -> Self {
        Hll::Sparse(Vec::new())
    }
}

/// The dense register (index, rho) a sparse entry stands for.
fn sparse_to_dense(entry: u32) -> (usize, u8) {
    let index = entry >> 6;
    let low_bits = HLL_SPARSE_P - HLL_P;
    let low = index & ((1 << low_bits) - 1);
    let rho = if low != 0 {
        low.leading_zeros() - (32 - low_bits) + 1
    } else {
        low_bits + (entry & 63)
    };
    #[allow(clippy::cast_possible_truncation, reason = "rho <= 51")]
    ((index >> low_bits) as usize, rho as u8)
}

impl Hll {
    /// Takes a hash from [`hash_value`].
    pub fn insert(&mut self, hash: u64) {
        match self {
            Hll::Sparse(entries) => {
                #[allow(clippy::cast_possible_truncation, reason = "25 bits")]
                let index = (hash >> (64 - HLL_SPARSE_P)) as u32;
                let rho = (hash << HLL_SPARSE_P)
                    .leading_zeros()
                    .min(64 - HLL_SPARSE_P)
                    + 1;
                match entries.binary_search_by(|e| (e >> 6).cmp(&index)) {
                    Ok(i) => {
                        if entries[i] & 63 < rho {
                            entries[i] = index << 6 | rho;
                        }
                    }
                    Err(i) => {
                        entries.insert(i, index << 6 | rho);
                        if entries.len() > HLL_SPARSE_MAX {
                            self.densify();
                        }
                    }
                }
            }
            Hll::Dense(registers) => {
                #[allow(clippy::cast_possible_truncation, reason = "14 bits")]
                let index = (hash >> (64 - HLL_P)) as usize;
                #[allow(clippy::cast_possible_truncation, reason = "<= 51")]
                let rho = ((hash << HLL_P).leading_zeros().min(64 - HLL_P) + 1) as u8;
                let r = &mut registers[index];
                *r = (*r).max(rho);
            }
        }
    }

    fn densify(&mut self) {
        if let Hll::Sparse(entries) = self {
            let mut registers = vec![0u8; HLL_M].into_boxed_slice();
            for e in entries.iter() {
                let (index, rho) = sparse_to_dense(*e);
                registers[index] = registers[index].max(rho);
            }
            *self = Hll::Dense(registers);
        }
    }

    /// Folds `other` in: the sketch of the union of both inputs.
    pub fn merge(&mut self, other: &Hll) {
        match (&mut *self, other) {
            (Hll::Sparse(a), Hll::Sparse(b)) => {
                if b.is_empty() {
                    return;
                }
                let mut out = Vec::with_capacity(a.len() + b.len());
                let (mut i, mut j) = (0, 0);
                while i < a.len() && j < b.len() {
                    let (x, y) = (a[i], b[j]);
                    match (x >> 6).cmp(&(y >> 6)) {
                        std::cmp::Ordering::Less => {
                            out.push(x);
                            i += 1;
                        }
                        std::cmp::Ordering::Greater => {
                            out.push(y);
                            j += 1;
                        }
                        std::cmp::Ordering::Equal => {
                            out.push(x.max(y));
                            i += 1;
                            j += 1;
                        }
                    }
                }
                out.extend_from_slice(&a[i..]);
                out.extend_from_slice(&b[j..]);
                *a = out;
                if a.len() > HLL_SPARSE_MAX {
                    self.densify();
                }
            }
            (Hll::Dense(a), Hll::Sparse(b)) => {
                for e in b {
                    let (index, rho) = sparse_to_dense(*e);
                    a[index] = a[index].max(rho);
                }
            }
            (Hll::Sparse(_), Hll::Dense(_)) => {
                self.densify();
                self.merge(other);
            }
            (Hll::Dense(a), Hll::Dense(b)) => {
                for (x, y) in a.iter_mut().zip(b.iter()) {
                    *x = (*x).max(*y);
                }
            }
        }
    }

    /// The estimated number of distinct values inserted.
    pub fn estimate(&self) -> f64 {
        let mut histogram = [0u32; 64];
        let p = match self {
            Hll::Sparse(entries) => {
                if entries.is_empty() {
                    return 0.0;
                }
                #[allow(clippy::cast_possible_truncation, reason = "<= HLL_SPARSE_MAX")]
                let used = entries.len() as u32;
                histogram[0] = (1 << HLL_SPARSE_P) - used;
                for e in entries {
                    histogram[(e & 63) as usize] += 1;
                }
                HLL_SPARSE_P
            }
            Hll::Dense(registers) => {
                for r in registers.iter() {
                    histogram[*r as usize] += 1;
                }
                HLL_P
            }
        };
        ertl_estimate(&histogram, p)
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        match self {
            Hll::Sparse(entries) => entries.capacity() * 4,
            Hll::Dense(registers) => registers.len(),
        }
    }

    /// Encodes for a checkpoint: sparse as a count and varint deltas (2 to 3 bytes an
    /// entry), dense as 6-bit registers (12 KiB).
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Hll::Sparse(entries) => {
                out.push(0);
                put_uvar(out, entries.len() as u64);
                let mut prev = 0u32;
                for e in entries {
                    put_uvar(out, u64::from(e - prev));
                    prev = *e;
                }
            }
            Hll::Dense(registers) => {
                out.push(1);
                for four in registers.chunks_exact(4) {
                    let w = u32::from(four[0])
                        | u32::from(four[1]) << 6
                        | u32::from(four[2]) << 12
                        | u32::from(four[3]) << 18;
                    out.extend_from_slice(&w.to_le_bytes()[..3]);
                }
            }
        }
    }

    /// Decodes what [`encode`](Self::encode) wrote, checking it is a state `insert` could
    /// reach; advances `input` past it.
    pub fn decode(input: &mut &[u8]) -> Result<Hll, &'static str> {
        match take(input, 1)?[0] {
            0 => {
                let n = usize::try_from(get_uvar(input)?).map_err(|_| "hll length")?;
                if n > HLL_SPARSE_MAX {
                    return Err("hll sparse length");
                }
                let mut entries = Vec::with_capacity(n);
                let mut prev = 0u32;
                for i in 0..n {
                    let delta = u32::try_from(get_uvar(input)?).map_err(|_| "hll entry")?;
                    let e = prev.checked_add(delta).ok_or("hll entry")?;
                    let rho = e & 63;
                    if (i > 0 && e >> 6 <= prev >> 6)
                        || e >> 6 >= 1 << HLL_SPARSE_P
                        || !(1..=HLL_SPARSE_RHO_MAX).contains(&rho)
                    {
                        return Err("hll entry");
                    }
                    entries.push(e);
                    prev = e;
                }
                Ok(Hll::Sparse(entries))
            }
            1 => {
                let bytes = take(input, HLL_M / 4 * 3)?;
                let mut registers = Vec::with_capacity(HLL_M);
                for three in bytes.chunks_exact(3) {
                    let w = u32::from_le_bytes([three[0], three[1], three[2], 0]);
                    for k in 0..4 {
                        #[allow(clippy::cast_possible_truncation, reason = "6 bits")]
                        let r = ((w >> (6 * k)) & 63) as u8;
                        if r > HLL_RHO_MAX {
                            return Err("hll register");
                        }
                        registers.push(r);
                    }
                }
                Ok(Hll::Dense(registers.into_boxed_slice()))
            }
            _ => Err("hll tag"),
        }
    }
}

/// Ertl's improved raw estimate from the histogram of 2^p registers (each at most
/// `64 - p + 1`).
fn ertl_estimate(histogram: &[u32; 64], p: u32) -> f64 {
    let m = f64::from(1u32 << p);
    let q = (64 - p) as usize;
    let mut z = m * tau(1.0 - f64::from(histogram[q + 1]) / m);
    for k in (1..=q).rev() {
        z = 0.5 * (z + f64::from(histogram[k]));
    }
    z += m * sigma(f64::from(histogram[0]) / m);
    if !z.is_finite() || z == 0.0 {
        return 0.0;
    }
    m * m / (2.0 * std::f64::consts::LN_2) / z
}

fn sigma(mut x: f64) -> f64 {
    if x == 1.0 {
        return f64::INFINITY;
    }
    let (mut y, mut z) = (1.0, x);
    loop {
        x *= x;
        let before = z;
        z += x * y;
        y += y;
        if z == before {
            return z;
        }
    }
}

fn tau(mut x: f64) -> f64 {
    if x == 0.0 || x == 1.0 {
        return 0.0;
    }
    let (mut y, mut z) = (1.0, 1.0 - x);
    loop {
        x = x.sqrt();
        let before = z;
        y *= 0.5;
        z -= (1.0 - x).powi(2) * y;
        if z == before {
            return z / 3.0;
        }
    }
}

/// Relative accuracy of a quantile: the value returned is within 1% of the value at
/// that rank.
pub const DD_ALPHA: f64 = 0.01;
/// Most bins per sign (16 KiB of counts at most): the lowest ones collapse into one
/// beyond it. 2,048 bins at alpha = 0.01 span a ratio of 6e17 between the smallest and
/// largest value kept apart (a nanosecond to 19 years).
pub const DD_BINS_MAX: usize = 2048;

/// gamma = (1 + alpha) / (1 - alpha); bin k holds (gamma^(k-1), gamma^k].
fn dd_gamma() -> f64 {
    (1.0 + DD_ALPHA) / (1.0 - DD_ALPHA)
}

/// The bin of a positive finite value.
fn dd_key(v: f64) -> i32 {
    #[allow(
        clippy::cast_possible_truncation,
        reason = "|ln v| <= 745, / 0.02 fits"
    )]
    let k = (v.ln() / dd_gamma().ln()).ceil() as i32;
    k
}

/// The value standing for bin `k`: within alpha of every value in it.
fn dd_value(k: i32) -> f64 {
    let g = dd_gamma();
    2.0 * (f64::from(k) * g.ln()).exp() / (g + 1.0)
}

/// Counts of one sign's bins, from `offset` up; the lowest and highest counts are never
/// zero, so equal inputs give equal bins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Bins {
    offset: i32,
    counts: Vec<u64>,
}

impl Bins {
    fn high(&self) -> i32 {
        #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
        let len = self.counts.len() as i32;
        self.offset + len - 1
    }

    /// Adds `n` (> 0) to bin `k`. Past `DD_BINS_MAX` bins the lowest collapse into the
    /// lowest kept: the floor only rises with the highest key, so the bins depend on the
    /// multiset of keys alone, not their order.
    fn add(&mut self, k: i32, n: u64) {
        if self.counts.is_empty() {
            self.offset = k;
            self.counts.push(n);
            return;
        }
        let high = self.high();
        if k > high {
            self.counts.resize(k.abs_diff(self.offset) as usize + 1, 0);
        } else if k < self.offset {
            #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
            let floor = high - DD_BINS_MAX as i32 + 1;
            let low = k.max(floor);
            if low < self.offset {
                let grow = self.offset.abs_diff(low) as usize;
                self.counts.splice(0..0, std::iter::repeat_n(0, grow));
                self.offset = low;
            }
        }
        let at = k.max(self.offset).abs_diff(self.offset) as usize;
        self.counts[at] += n;
        if self.counts.len() > DD_BINS_MAX {
            let cut = self.counts.len() - DD_BINS_MAX;
            let collapsed: u64 = self.counts.drain(..cut).sum();
            self.counts[0] += collapsed;
            #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
            let cut = cut as i32;
            self.offset += cut;
        }
    }

    fn merge(&mut self, other: &Bins) {
        let (Some(&first), Some(&last)) = (other.counts.first(), other.counts.last()) else {
            return;
        };
        // The ends first: the range grows at most twice, then every add lands inside.
        let n = other.counts.len();
        self.add(other.high(), last);
        if n > 1 {
            self.add(other.offset, first);
        }
        for (k, c) in (other.offset..)
            .zip(&other.counts)
            .take(n.saturating_sub(1))
            .skip(1)
        {
            if *c > 0 {
                self.add(k, *c);
            }
        }
    }

    fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    fn encode(&self, out: &mut Vec<u8>) {
        put_uvar(out, zigzag(self.offset));
        put_uvar(out, self.counts.len() as u64);
        for c in &self.counts {
            put_uvar(out, *c);
        }
    }

    fn decode(input: &mut &[u8]) -> Result<Bins, &'static str> {
        let offset = unzigzag(get_uvar(input)?).ok_or("ddsketch offset")?;
        let n = usize::try_from(get_uvar(input)?).map_err(|_| "ddsketch length")?;
        if n > DD_BINS_MAX || n > input.len() {
            return Err("ddsketch length");
        }
        let counts = (0..n)
            .map(|_| get_uvar(input))
            .collect::<Result<Vec<u64>, _>>()?;
        if counts.first().is_some_and(|c| *c == 0) || counts.last().is_some_and(|c| *c == 0) {
            return Err("ddsketch bins");
        }
        #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
        if offset.checked_add(n as i32).is_none() {
            return Err("ddsketch offset");
        }
        Ok(Bins { offset, counts })
    }
}

/// A DDSketch of finite numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct DdSketch {
    positive: Bins,
    /// Bins of the magnitudes of negative values.
    negative: Bins,
    zeros: u64,
    /// The exact extremes: quantiles are clamped to them, so one value comes back as it
    /// went in. +inf and -inf while empty.
    min: f64,
    max: f64,
}

impl Default for DdSketch {
    fn default() -> Self {
        DdSketch {
            positive: Bins::default(),
            negative: Bins::default(),
            zeros: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }
}

impl DdSketch {
    /// Takes a finite value.
    pub fn insert(&mut self, v: f64) {
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        if v > 0.0 {
            self.positive.add(dd_key(v), 1);
        } else if v < 0.0 {
            self.negative.add(dd_key(-v), 1);
        } else {
            self.zeros += 1;
        }
    }

    pub fn merge(&mut self, other: &DdSketch) {
        self.positive.merge(&other.positive);
        self.negative.merge(&other.negative);
        self.zeros += other.zeros;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    pub fn count(&self) -> u64 {
        self.positive.total() + self.negative.total() + self.zeros
    }

    /// The value at rank `floor(q * (count - 1))` of the sorted inputs (0-based), within
    /// alpha relative; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        self.bin_quantile(q).map(|v| v.clamp(self.min, self.max))
    }

    fn bin_quantile(&self, q: f64) -> Option<f64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        #[allow(
            clippy::cast_precision_loss,
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "a rank below n"
        )]
        let mut rank = ((q.clamp(0.0, 1.0) * (n - 1) as f64).floor() as u64).min(n - 1);
        for (i, c) in self.negative.counts.iter().enumerate().rev() {
            if rank < *c {
                #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
                return Some(-dd_value(self.negative.offset + i as i32));
            }
            rank -= c;
        }
        if rank < self.zeros {
            return Some(0.0);
        }
        rank -= self.zeros;
        for (k, c) in (self.positive.offset..).zip(&self.positive.counts) {
            if rank < *c {
                return Some(dd_value(k));
            }
            rank -= c;
        }
        None
    }

    pub fn heap_bytes(&self) -> usize {
        (self.positive.counts.capacity() + self.negative.counts.capacity()) * 8
    }

    /// Encodes for a checkpoint: varints, a byte for most empty bins.
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_uvar(out, self.zeros);
        self.positive.encode(out);
        self.negative.encode(out);
        if self.count() > 0 {
            out.extend_from_slice(&self.min.to_bits().to_le_bytes());
            out.extend_from_slice(&self.max.to_bits().to_le_bytes());
        }
    }

    pub fn decode(input: &mut &[u8]) -> Result<DdSketch, &'static str> {
        let mut d = DdSketch {
            zeros: get_uvar(input)?,
            positive: Bins::decode(input)?,
            negative: Bins::decode(input)?,
            ..DdSketch::default()
        };
        if d.count() > 0 {
            let mut f = || -> Result<f64, &'static str> {
                let b = take(input, 8)?;
                Ok(f64::from_bits(u64::from_le_bytes(
                    b.try_into().map_err(|_| "ddsketch extreme")?,
                )))
            };
            (d.min, d.max) = (f()?, f()?);
            if !(d.min.is_finite() && d.max.is_finite() && d.min <= d.max) {
                return Err("ddsketch extremes");
            }
        }
        Ok(d)
    }
}

fn zigzag(v: i32) -> u64 {
    #[allow(clippy::cast_sign_loss)]
    u64::from(((v << 1) ^ (v >> 31)) as u32)
}

fn unzigzag(v: u64) -> Option<i32> {
    let v = u32::try_from(v).ok()?;
    #[allow(clippy::cast_possible_wrap)]
    Some((v >> 1) as i32 ^ -((v & 1) as i32))
}

pub fn put_uvar(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        #[allow(clippy::cast_possible_truncation, reason = "7 bits")]
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    #[allow(clippy::cast_possible_truncation, reason = "< 0x80")]
    out.push(v as u8);
}

pub fn get_uvar(input: &mut &[u8]) -> Result<u64, &'static str> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = take(input, 1)?[0];
        if shift == 63 && b > 1 {
            return Err("varint too large");
        }
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Ok(v);
        }
    }
    Err("varint too long")
}

fn take<'a>(input: &mut &'a [u8], n: usize) -> Result<&'a [u8], &'static str> {
    if input.len() < n {
        return Err("value too short");
    }
    let (a, b) = input.split_at(n);
    *input = b;
    Ok(a)
}

#[cfg(test)]
mod tests;
