//! Random draws shared by the initialization and the data: a standard normal from any
//! uniform generator.

use rand::Rng;

/// A standard normal draw (Box–Muller).
pub fn normal(r: &mut impl Rng) -> f64 {
    let (u1, u2): (f64, f64) = (1.0 - r.random::<f64>(), r.random::<f64>());
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}
