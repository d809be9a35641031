//! `e^x` without branches or library calls, so a loop over it vectorizes:
//! libm's `expf` is a call per value, the bulk of softmax and SiLU.

/// `e^x` for `−87 ≤ x ≤ 88`, within two units in the last place; `x` outside
/// is taken as the nearer end. `x = n ln 2 + r` with `|r| ≤ ln 2 / 2`; `e^r`
/// by Cephes' `expf` polynomial; `2^n` built in the exponent bits.
/// `madd(a, b, c)` is `a b + c`, fused where the caller's target has FMA.
#[inline(always)]
pub fn exp(x: f32, madd: &impl Fn(f32, f32, f32) -> f32) -> f32 {
    // Adding 1.5 × 2²³ rounds to an integer, left in the low mantissa bits.
    const MAGIC: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = if x < -87.0 { -87.0 } else { x };
    let x = if x > 88.0 { 88.0 } else { x };
    let shifted = madd(x, std::f32::consts::LOG2_E, MAGIC);
    let n = shifted - MAGIC;
    let r = madd(n, -LN2_LO, madd(n, -LN2_HI, x));
    let mut p = 1.987_569_1e-4;
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        0.166_666_65,
        0.5,
    ] {
        p = madd(p, r, c);
    }
    let e_r = madd(p, r * r, r + 1.0);
    // The low bits hold n mod 2⁹, and −126 ≤ n ≤ 127: 127 + n is the exponent.
    let pow = f32::from_bits(shifted.to_bits().wrapping_add(127) << 23);
    e_r * pow
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn within_two_ulp_of_libm() {
        let fused = |a: f32, b: f32, c: f32| a.mul_add(b, c);
        let plain = |a: f32, b: f32, c: f32| a * b + c;
        for i in -87_000..=88_000 {
            let x = i as f32 / 1000.0;
            let libm = f64::from(x).exp();
            let ulp = f64::from(f32::EPSILON) * libm;
            for ours in [exp(x, &fused), exp(x, &plain)] {
                assert!(
                    (f64::from(ours) - libm).abs() <= 2.0 * ulp,
                    "e^{x}: {ours} vs {libm}"
                );
            }
        }
        assert_eq!(exp(0.0, &fused), 1.0);
        assert_eq!(exp(-1000.0, &fused), exp(-87.0, &fused));
        assert_eq!(exp(1000.0, &fused), exp(88.0, &fused));
    }
}
