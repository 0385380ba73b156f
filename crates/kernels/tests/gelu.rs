//! The GELU training kernels (`gelu_forward`, `gelu_backward`) against f64 references, bit for bit
//! the same on every ISA this CPU has (forced) and for 1 and 3 threads.

use sparsec_kernels::gelu::{exp_nonpositive, gelu_backward, gelu_forward};
use sparsec_kernels::{Isa, Serial};

use crate::masked_linear::Threads;

fn isas() -> Vec<Isa> {
    Isa::available().into_iter().filter(|&i| Isa::forced(i).is_ok()).collect()
}

fn erf64(x: f64) -> f64 {
    libm::erf(x)
}

#[test]
fn gelu_forward_and_backward_match_f64_and_agree_on_every_isa() {
    // 2^-10-spaced grid over [-10, 10] plus specials; 200k values (several tasks).
    let mut xs: Vec<f32> = (-10_240..=10_240).map(|i| i as f32 / 1024.0).collect();
    xs.extend([0.0, -0.0, 1e-30, -1e-30, 30.0, -30.0, 1e4, -1e4]);
    while xs.len() < 200_000 {
        xs.push(xs[xs.len() % 20_000] * 0.37);
    }
    let dy: Vec<f32> = (0..xs.len()).map(|i| 1.0 - (i % 7) as f32 * 0.25).collect();
    let mut first: Option<(Vec<f32>, Vec<f32>)> = None;
    for isa in isas() {
        let (mut y, mut dx) = (vec![0f32; xs.len()], vec![0f32; xs.len()]);
        gelu_forward(isa, &xs, &mut y, &Serial).unwrap();
        gelu_backward(isa, &dy, &xs, &mut dx, &Serial).unwrap();
        let (mut worst_y, mut worst_d) = (0f64, 0f64);
        for ((&x, &yv), (&g, &d)) in xs.iter().zip(&y).zip(dy.iter().zip(&dx)) {
            let x64 = x as f64;
            let want_y = 0.5 * x64 * (1.0 + erf64(x64 / std::f64::consts::SQRT_2));
            let pdf = (-0.5 * x64 * x64).exp() / (2.0 * std::f64::consts::PI).sqrt();
            let want_d = g as f64 * (0.5 * (1.0 + erf64(x64 / std::f64::consts::SQRT_2)) + x64 * pdf);
            // erf within 4e-7 absolute (gelu.rs), times |x|/2 for y; the derivative adds e^(-x²/2)'s
            // 2 ulp times |x|/√(2π) and the products' roundings.
            let (ey, ed) = ((yv as f64 - want_y).abs(), (d as f64 - want_d).abs());
            assert!(
                ey <= 4e-7 * (0.5 * x64.abs()).max(1.0) + 2e-7 * want_y.abs(),
                "{isa}: gelu({x}) = {yv}, f64 {want_y}"
            );
            assert!(ed <= g.abs() as f64 * 1e-6 + 2e-7 * want_d.abs(), "{isa}: gelu'({x})·{g} = {d}, f64 {want_d}");
            worst_y = worst_y.max(ey);
            worst_d = worst_d.max(ed);
        }
        let (mut y3, mut dx3) = (vec![0f32; xs.len()], vec![0f32; xs.len()]);
        gelu_forward(isa, &xs, &mut y3, &Threads(3)).unwrap();
        gelu_backward(isa, &dy, &xs, &mut dx3, &Threads(3)).unwrap();
        assert!(y3 == y && dx3 == dx, "{isa}: 3 threads differ from 1");
        match &first {
            None => first = Some((y, dx)),
            Some((y0, d0)) => {
                let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits());
                assert!(same(&y, y0) && same(&dx, d0), "{isa}: results differ from the first ISA's");
            }
        }
        println!("{isa}: gelu max |Δ| {worst_y:.2e}, gelu' max |Δ| {worst_d:.2e}");
    }
}

#[test]
fn exp_nonpositive_is_within_two_ulp() {
    for i in 0..=90_000 {
        let x = -(i as f32) / 1024.0;
        let (got, want) = (exp_nonpositive(x) as f64, (x as f64).exp());
        if x < -87.336 {
            assert_eq!(got, 0.0);
            continue;
        }
        let ulp = (want as f32).abs().max(f32::MIN_POSITIVE) as f64 * f32::EPSILON as f64;
        assert!((got - want).abs() <= 2.0 * ulp, "exp({x}) = {got}, f64 {want}");
    }
    assert_eq!(exp_nonpositive(f32::NEG_INFINITY), 0.0);
    assert_eq!(exp_nonpositive(0.0), 1.0);
}

#[test]
fn gelu_slices_of_different_lengths_are_errors() {
    let mut y = vec![0f32; 3];
    let e = gelu_forward(Isa::Scalar, &[0.0; 4], &mut y, &Serial).unwrap_err();
    assert!(e.to_string().contains("x has 4"), "{e}");
    let e = gelu_backward(Isa::Scalar, &[0.0; 3], &[0.0; 4], &mut y, &Serial).unwrap_err();
    assert!(e.to_string().contains("dy 3"), "{e}");
}
