//! The device mesh: `dp_replicate × dp_shard × cp × tp`, outermost first.
//!
//! A rank's coordinates are its mixed-radix digits, `tp` fastest: ranks of one tensor-parallel
//! group are neighbours (on one node), the replicate dimension strides widest (across nodes).
//! Every group a layer talks to is a set of ranks that differ only along some dimensions; it
//! is computed here by pure functions and turned into a communicator with one `split`.

use std::fmt;

/// One mesh dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dim {
    /// HSDP replicas (gradients all-reduced).
    Replicate,
    /// FSDP shards (parameters gathered, gradients reduce-scattered).
    Shard,
    /// Context parallel (sequence split for attention).
    Cp,
    /// Tensor (and sequence) parallel.
    Tp,
}

impl Dim {
    pub const ALL: [Dim; 4] = [Dim::Replicate, Dim::Shard, Dim::Cp, Dim::Tp];
    fn index(self) -> usize {
        self as usize
    }
    /// The config key that sets this dimension.
    pub fn key(self) -> &'static str {
        match self {
            Dim::Replicate => "parallel.dp_replicate",
            Dim::Shard => "parallel.dp_shard",
            Dim::Cp => "parallel.cp",
            Dim::Tp => "parallel.tp",
        }
    }
}

/// Sizes of the four dimensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mesh {
    pub sizes: [usize; 4],
}

/// Why a mesh was refused; the message names the key, the rule and what would fit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshError(pub String);

impl fmt::Display for MeshError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for MeshError {}

/// The model sizes a mesh must divide.
#[derive(Clone, Debug, Default)]
pub struct ModelDims {
    pub heads: usize,
    pub kv_heads: usize,
    /// Hidden sizes split by tensor parallelism, with their config names.
    pub hidden: Vec<(&'static str, usize)>,
    /// Tokens per sample (sequence length or latent patches) and their config name.
    pub tokens: (&'static str, usize),
    /// Causal attention: ring chunks are head–tail balanced, so each cp rank holds 2 chunks.
    pub causal: bool,
    /// Ulysses degree inside `cp` (1 = ring only, `cp` = all-to-all only).
    pub ulysses: usize,
}

fn divisors(n: usize) -> String {
    let v: Vec<String> = (1..=n)
        .filter(|d| n.is_multiple_of(*d))
        .map(|d| d.to_string())
        .collect();
    v.join(", ")
}

impl Mesh {
    pub fn new(dp_replicate: usize, dp_shard: usize, cp: usize, tp: usize) -> Self {
        Mesh {
            sizes: [dp_replicate, dp_shard, cp, tp],
        }
    }
    pub fn size(&self, d: Dim) -> usize {
        self.sizes[d.index()]
    }
    pub fn world(&self) -> usize {
        self.sizes.iter().product()
    }
    /// Data-parallel degree: samples are split over `dp_replicate × dp_shard`.
    pub fn dp(&self) -> usize {
        self.size(Dim::Replicate) * self.size(Dim::Shard)
    }

    /// Coordinates of `rank`, in [`Dim::ALL`] order.
    pub fn coords(&self, rank: usize) -> [usize; 4] {
        let mut c = [0; 4];
        let mut r = rank;
        for i in (0..4).rev() {
            c[i] = r % self.sizes[i];
            r /= self.sizes[i];
        }
        c
    }
    pub fn rank_of(&self, coords: [usize; 4]) -> usize {
        coords.iter().zip(self.sizes).fold(0, |acc, (&c, s)| acc * s + c)
    }
    pub fn coord(&self, rank: usize, d: Dim) -> usize {
        self.coords(rank)[d.index()]
    }
    /// Index of `rank` within the data-parallel ranks (`replicate · dp_shard + shard`).
    pub fn dp_rank(&self, rank: usize) -> usize {
        let c = self.coords(rank);
        c[0] * self.sizes[1] + c[1]
    }

    /// The ranks that share every coordinate of `rank` except those in `dims`, in rank
    /// order (which is the order of their coordinates along `dims`).
    pub fn group(&self, rank: usize, dims: &[Dim]) -> Vec<usize> {
        let base = self.coords(rank);
        (0..self.world())
            .filter(|&r| {
                let c = self.coords(r);
                (0..4).all(|i| dims.iter().any(|d| d.index() == i) || c[i] == base[i])
            })
            .collect()
    }
    /// A colour that is equal for exactly the ranks of [`Mesh::group`] (for `split`).
    pub fn color(&self, rank: usize, dims: &[Dim]) -> usize {
        let mut c = self.coords(rank);
        for d in dims {
            c[d.index()] = 0;
        }
        self.rank_of(c)
    }
    /// Position of `rank` inside its group along `dims`.
    pub fn index_in(&self, rank: usize, dims: &[Dim]) -> usize {
        self.group(rank, dims)
            .iter()
            .position(|&r| r == rank)
            .expect("a rank is in its own group")
    }

    /// Check the mesh against the world size and the model. Every rule names its key.
    pub fn validate(&self, world: usize, m: &ModelDims) -> Result<(), MeshError> {
        for d in Dim::ALL {
            if self.size(d) == 0 {
                return Err(MeshError(format!("config: `{}` must be at least 1", d.key())));
            }
        }
        if self.world() != world {
            let [a, b, c, d] = self.sizes;
            return Err(MeshError(format!(
                "config: the mesh dp_replicate × dp_shard × cp × tp = {a} × {b} × {c} × {d} = {} must \
                 equal the number of ranks ({world}); sizes of one dimension that fit with the others \
                 fixed: parallel.dp_shard = {}",
                self.world(),
                if world.is_multiple_of(a * c * d) {
                    (world / (a * c * d)).to_string()
                } else {
                    "none".into()
                }
            )));
        }
        let tp = self.size(Dim::Tp);
        let rule = |ok: bool, what: &str, n: usize, key: &str| -> Result<(), MeshError> {
            if ok {
                Ok(())
            } else {
                Err(MeshError(format!(
                    "config: `{key}` ({}) must divide {what} ({n}); values that fit: {}",
                    self.sizes[Dim::ALL.iter().position(|d| d.key() == key).unwrap()],
                    divisors(n)
                )))
            }
        };
        rule(m.heads.is_multiple_of(tp), "model.heads", m.heads, Dim::Tp.key())?;
        rule(
            m.kv_heads.is_multiple_of(tp),
            "the key/value heads",
            m.kv_heads,
            Dim::Tp.key(),
        )?;
        for &(name, n) in &m.hidden {
            rule(n % tp == 0, name, n, Dim::Tp.key())?;
        }
        let cp = self.size(Dim::Cp);
        let u = m.ulysses.max(1);
        if !cp.is_multiple_of(u) {
            return Err(MeshError(format!(
                "config: `parallel.ulysses` ({u}) must divide parallel.cp ({cp}); values that fit: {}",
                divisors(cp)
            )));
        }
        for (what, n) in [
            ("query heads per tp rank", m.heads / tp),
            ("key/value heads per tp rank", m.kv_heads / tp),
        ] {
            if n % u != 0 {
                return Err(MeshError(format!(
                    "config: `parallel.ulysses` ({u}) must divide the {what} ({n}): Ulysses splits heads \
                     over its ranks; values that fit: {}; use ring attention for the rest of parallel.cp",
                    divisors(n)
                )));
            }
        }
        // Tokens: `cp` chunks (2 per rank when causal, for load balance), each split over tp for
        // sequence parallelism.
        let (tname, t) = m.tokens;
        let ring = cp / u;
        let chunks = if m.causal && ring > 1 { 2 * cp } else { cp } * tp;
        if t % chunks != 0 {
            let why = if m.causal && ring > 1 {
                format!("2 × parallel.cp × parallel.tp = {chunks} (causal ring attention holds a head and a tail chunk per rank; sequence parallelism splits each over tp)")
            } else {
                format!("parallel.cp × parallel.tp = {chunks} (context parallelism splits the tokens over cp, sequence parallelism over tp)")
            };
            return Err(MeshError(format!(
                "config: {tname} ({t}) must be divisible by {why}; token counts that fit are multiples of {chunks}"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coordinates_round_trip_with_tp_fastest() {
        let m = Mesh::new(2, 3, 2, 2);
        assert_eq!(m.world(), 24);
        for r in 0..24 {
            assert_eq!(m.rank_of(m.coords(r)), r);
        }
        assert_eq!(m.coords(1), [0, 0, 0, 1]);
        assert_eq!(m.coords(2), [0, 0, 1, 0]);
        assert_eq!(m.coords(4), [0, 1, 0, 0]);
        assert_eq!(m.coords(12), [1, 0, 0, 0]);
    }

    #[test]
    fn groups_vary_only_their_dimensions() {
        let m = Mesh::new(2, 2, 2, 2);
        assert_eq!(m.group(5, &[Dim::Tp]), vec![4, 5]);
        assert_eq!(m.group(5, &[Dim::Cp]), vec![5, 7]);
        assert_eq!(m.group(5, &[Dim::Shard]), vec![1, 5]);
        assert_eq!(m.group(5, &[Dim::Replicate]), vec![5, 13]);
        assert_eq!(m.group(5, &[Dim::Cp, Dim::Tp]), vec![4, 5, 6, 7]);
        assert_eq!(m.group(5, &[Dim::Replicate, Dim::Cp]), vec![5, 7, 13, 15]);
        // Groups along a set of dims partition the world, and colours agree with groups.
        for dims in [
            &[Dim::Tp][..],
            &[Dim::Shard, Dim::Cp],
            &[Dim::Replicate, Dim::Shard, Dim::Cp, Dim::Tp],
        ] {
            let mut seen = [0; 16];
            for r in 0..16 {
                let g = m.group(r, dims);
                assert_eq!(g.len(), dims.iter().map(|&d| m.size(d)).product::<usize>());
                for &o in &g {
                    assert_eq!(m.color(o, dims), m.color(r, dims));
                }
                seen[r] += 1;
                assert_eq!(g[m.index_in(r, dims)], r);
            }
            assert!(seen.iter().all(|&s| s == 1));
        }
        assert_eq!(m.dp_rank(13), 3);
    }

    fn dims() -> ModelDims {
        ModelDims {
            heads: 4,
            kv_heads: 2,
            hidden: vec![("model.width", 64), ("the MLP hidden size", 192)],
            tokens: ("model.seq_len", 32),
            causal: true,
            ulysses: 1,
        }
    }

    #[test]
    fn bad_meshes_name_the_rule() {
        let e = Mesh::new(1, 3, 1, 1).validate(4, &dims()).unwrap_err().0;
        assert!(
            e.contains("must equal the number of ranks (4)") && e.contains("dp_shard = 4"),
            "{e}"
        );
        let e = Mesh::new(1, 1, 1, 4).validate(4, &dims()).unwrap_err().0;
        assert!(
            e.contains("`parallel.tp` (4) must divide the key/value heads (2)"),
            "{e}"
        );
        let e = Mesh::new(1, 1, 1, 3).validate(
            3,
            &ModelDims {
                kv_heads: 3,
                heads: 3,
                ..dims()
            },
        );
        assert!(e.unwrap_err().0.contains("model.width (64)"));
        let short = ModelDims {
            tokens: ("model.seq_len", 24),
            ..dims()
        };
        let e = Mesh::new(1, 1, 4, 2).validate(8, &short).unwrap_err().0;
        assert!(
            e.contains("model.seq_len (24) must be divisible by 2 × parallel.cp × parallel.tp = 16"),
            "{e}"
        );
        let e = Mesh::new(1, 1, 2, 1).validate(
            2,
            &ModelDims {
                ulysses: 2,
                kv_heads: 1,
                ..dims()
            },
        );
        assert!(e
            .unwrap_err()
            .0
            .contains("`parallel.ulysses` (2) must divide the key/value heads per tp rank (1)"));
        assert!(Mesh::new(1, 2, 2, 2).validate(8, &dims()).is_ok());
        assert!(Mesh::new(2, 2, 1, 1).validate(4, &dims()).is_ok());
    }
}
