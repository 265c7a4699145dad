//! Kernel checks against the CPU ops (the reference): fresh random inputs (never zeros),
//! outputs poisoned with NaN before each run (gradients that the ops add into start from the
//! same zeros on both sides), relative error ‖gpu − cpu‖ / ‖cpu‖ per output tensor.
//! Run by the GPU test and by the gpu-check binary.

use crate::cpu;
use crate::rng;

use super::memory::DType;
use super::{AttentionSaved, AttentionShape, DSlice, DeviceBuffer, Gpu, GpuError, Pooling};

/// One compared tensor.
#[derive(Debug, Clone)]
pub struct CheckResult {
    pub name: String,
    pub rel_err: f64,
    pub threshold: f64,
}

impl CheckResult {
    pub fn passed(&self) -> bool {
        self.rel_err.is_finite() && self.rel_err <= self.threshold
    }
}

impl std::fmt::Display for CheckResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<4} {:<52} rel_err {:.3e} (threshold {:.0e})",
            if self.passed() { "ok" } else { "FAIL" },
            self.name,
            self.rel_err,
            self.threshold
        )
    }
}

/// ‖a − b‖ / ‖b‖ in f64 (NaN anywhere in `a` gives NaN: poisoned outputs that were not
/// written fail).
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return f64::NAN;
    }
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let d = f64::from(x) - f64::from(y);
        num += d * d;
        den += f64::from(y) * f64::from(y);
    }
    if den == 0.0 {
        return if num == 0.0 { 0.0 } else { num.sqrt() };
    }
    (num / den).sqrt()
}

/// Device element types the checks run with.
pub trait Elem: DType {
    fn from_f32(v: f32) -> Self;
    fn to_f32(self) -> f32;
}
impl Elem for f32 {
    fn from_f32(v: f32) -> Self {
        v
    }
    fn to_f32(self) -> f32 {
        self
    }
}
impl Elem for half::bf16 {
    fn from_f32(v: f32) -> Self {
        half::bf16::from_f32(v)
    }
    fn to_f32(self) -> f32 {
        half::bf16::to_f32(self)
    }
}

/// Deterministic uniform values in `[-scale, scale)` (a stream per call site), rounded through
/// `T` so that the CPU sees exactly what the GPU sees.
fn rand<T: Elem>(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let u = rng::uniform(seed, i as u64) as f32 * 2.0 - 1.0;
            T::from_f32(u * scale).to_f32()
        })
        .collect()
}

struct Ctx<'g> {
    gpu: &'g Gpu,
    out: Vec<CheckResult>,
    tag: &'static str,
    tol: f64,
}

impl Ctx<'_> {
    fn up<T: Elem>(&self, v: &[f32]) -> Result<DeviceBuffer<T>, GpuError> {
        let b = self.gpu.alloc::<T>(v.len())?;
        let host: Vec<T> = v.iter().map(|&x| T::from_f32(x)).collect();
        self.gpu.upload(b.view(), &host)?;
        Ok(b)
    }
    fn up_i32(&self, v: &[i32]) -> Result<DeviceBuffer<i32>, GpuError> {
        let b = self.gpu.alloc::<i32>(v.len())?;
        self.gpu.upload(b.view(), v)?;
        Ok(b)
    }
    fn poisoned<T: Elem>(&self, n: usize) -> Result<DeviceBuffer<T>, GpuError> {
        let b = self.gpu.alloc::<T>(n)?;
        super::fill(self.gpu, b.view(), f32::NAN)?;
        Ok(b)
    }
    fn down<T: Elem>(&self, s: DSlice<T>) -> Result<Vec<f32>, GpuError> {
        Ok(self.gpu.download(s)?.into_iter().map(T::to_f32).collect())
    }
    fn cmp<T: Elem>(&mut self, name: &str, got: DSlice<T>, want: &[f32], tol: f64) -> Result<(), GpuError> {
        let g = self.down(got)?;
        self.out.push(CheckResult {
            name: format!("{} {name}", self.tag),
            rel_err: rel_err(&g, want),
            threshold: tol,
        });
        Ok(())
    }
}

fn cpu_err(e: crate::TensorError) -> GpuError {
    GpuError::Arg {
        op: "check (CPU reference)",
        arg: "op",
        reason: e.to_string(),
    }
}

/// Runs every kernel check on `gpu`: f32 (exact products, then TF32) and bf16.
pub fn run_kernel_checks(gpu: &Gpu) -> Result<Vec<CheckResult>, GpuError> {
    let mut all = Vec::new();
    gpu.set_tf32(false);
    all.extend(checks::<f32>(gpu, "f32", 1e-5, 1e-5)?);
    gpu.set_tf32(true);
    all.extend(checks_gemm::<f32>(gpu, "tf32", 3e-3)?);
    all.extend(checks::<half::bf16>(gpu, "bf16", 1e-2, 3e-2)?);
    all.extend(checks_optimizer(gpu)?);
    Ok(all)
}

fn checks_gemm<T: Elem>(gpu: &Gpu, tag: &'static str, tol: f64) -> Result<Vec<CheckResult>, GpuError> {
    let mut c = Ctx {
        gpu,
        out: Vec::new(),
        tag,
        tol,
    };
    linear(&mut c, 7)?;
    attention::<T>(&mut c, 8)?;
    Ok(c.out)
}

fn checks<T: Elem>(
    gpu: &Gpu,
    tag: &'static str,
    tol: f64,
    gemm_tol: f64,
) -> Result<Vec<CheckResult>, GpuError> {
    let mut c = Ctx {
        gpu,
        out: Vec::new(),
        tag,
        tol,
    };
    embedding::<T>(&mut c, 1)?;
    gelu::<T>(&mut c, 2)?;
    bias_grad::<T>(&mut c, 10)?;
    layernorm::<T>(&mut c, 3)?;
    dropout::<T>(&mut c, 4)?;
    pooling::<T>(&mut c, 5)?;
    c.tol = gemm_tol;
    if T::NAME == "bf16" {
        linear_t::<T>(&mut c, 6)?;
    } else {
        linear(&mut c, 6)?;
    }
    attention::<T>(&mut c, 9)?;
    Ok(c.out)
}

fn embedding<T: Elem>(c: &mut Ctx, s: u64) -> Result<(), GpuError> {
    let (n, h, vocab, npos, ntyp) = (57, 48, 40, 32, 2);
    let word = rand::<f32>(s * 100 + 1, vocab * h, 1.0);
    let pos = rand::<f32>(s * 100 + 2, npos * h, 1.0);
    let typ = rand::<f32>(s * 100 + 3, ntyp * h, 1.0);
    let ids: Vec<u32> = (0..n)
        .map(|i| (rng::bits(s, i as u64) % vocab as u64) as u32)
        .collect();
    let positions: Vec<u32> = (0..n).map(|i| (i % npos) as u32).collect();
    let types: Vec<u32> = (0..n).map(|i| (rng::bits(s + 1, i as u64) % 2) as u32).collect();
    let mut want = vec![0.0f32; n * h];
    cpu::embedding_forward(&mut want, &ids, &positions, &types, &word, &pos, &typ, n, h).map_err(cpu_err)?;
    let want: Vec<f32> = want.iter().map(|&x| T::from_f32(x).to_f32()).collect();
    let i32s = |v: &[u32]| v.iter().map(|&x| x as i32).collect::<Vec<_>>();
    let (gi, gp, gt) = (
        c.up_i32(&i32s(&ids))?,
        c.up_i32(&i32s(&positions))?,
        c.up_i32(&i32s(&types))?,
    );
    let (gw, gpo, gty) = (c.up::<f32>(&word)?, c.up::<f32>(&pos)?, c.up::<f32>(&typ)?);
    let out = c.poisoned::<T>(n * h)?;
    super::embedding_forward(
        c.gpu,
        out.view(),
        gi.view(),
        gp.view(),
        gt.view(),
        gw.view(),
        gpo.view(),
        gty.view(),
        n,
        h,
    )?;
    let tol = if T::NAME == "bf16" { 1e-6 } else { c.tol };
    c.cmp("embedding_forward", out.view(), &want, tol)?;
    let dout = rand::<T>(s * 100 + 4, n * h, 1.0);
    let (mut dw, mut dp, mut dt) = (vec![0.0; vocab * h], vec![0.0; npos * h], vec![0.0; ntyp * h]);
    cpu::embedding_backward(&mut dw, &mut dp, &mut dt, &dout, &ids, &positions, &types, n, h)
        .map_err(cpu_err)?;
    let (gdw, gdp, gdt) = (
        c.gpu.alloc::<f32>(vocab * h)?,
        c.gpu.alloc::<f32>(npos * h)?,
        c.gpu.alloc::<f32>(ntyp * h)?,
    );
    let gdout = c.up::<T>(&dout)?;
    super::embedding_backward(
        c.gpu,
        gdw.view(),
        gdp.view(),
        gdt.view(),
        gdout.view(),
        gi.view(),
        gp.view(),
        gt.view(),
        n,
        h,
    )?;
    let tol = c.tol.min(1e-5);
    c.cmp("embedding_backward dword", gdw.view(), &dw, tol)?;
    c.cmp("embedding_backward dpos", gdp.view(), &dp, tol)?;
    c.cmp("embedding_backward dtyp", gdt.view(), &dt, tol)
}

fn gelu<T: Elem>(c: &mut Ctx, s: u64) -> Result<(), GpuError> {
    // Scalar kernels (70 columns; an address one element off), vectorised ones (widths that are
    // multiples of 4: BERT's 3072, a narrow 12, and 68 rows x 4 = an odd number of groups), and
    // the vectorised backward's tail (33 x 70 = 2310 = 4 * 577 + 2).
    for (rows, cols, offset) in [
        (33usize, 70usize, 0usize),
        (9, 3072, 0),
        (5, 12, 0),
        (68, 4, 0),
        (11, 64, 1),
    ] {
        let n = rows * cols;
        let seed = s * 100 + (rows * 7 + cols) as u64;
        let a = rand::<T>(seed + 1, n, 3.0);
        let bias = rand::<f32>(seed + 2, cols, 1.0);
        let pre: Vec<f32> = (0..n)
            .map(|i| T::from_f32(a[i] + bias[i % cols]).to_f32())
            .collect();
        let mut want = vec![0.0f32; n];
        cpu::gelu_forward(&mut want, &pre, n, cpu::GeluKind::Erf).map_err(cpu_err)?;
        // `offset` shifts every view off the 4-element alignment.
        let padded = |v: &[f32]| {
            let mut p = vec![0.5f32; offset];
            p.extend_from_slice(v);
            p
        };
        let gpre_buf = c.up::<T>(&padded(&a))?;
        let gpre = gpre_buf.view().slice(offset..offset + n)?;
        let gb = c.up::<f32>(&bias)?;
        let out_buf = c.poisoned::<T>(offset + n)?;
        let out = out_buf.view().slice(offset..offset + n)?;
        let path = if super::gelu::fwd_vectorised(out, gpre, cols) {
            "vec4"
        } else {
            "scalar"
        };
        super::bias_gelu_forward(c.gpu, out, gpre, Some(gb.view()), rows, cols)?;
        let what = format!("bias_gelu {rows}x{cols} ({path})");
        c.cmp(&format!("{what} forward out"), out, &want, c.tol)?;
        c.cmp(&format!("{what} forward pre"), gpre, &pre, c.tol)?;
        let dout = rand::<T>(seed + 3, n, 1.0);
        let mut din = vec![0.0f32; n];
        cpu::gelu_backward(&mut din, &pre, &dout, n, cpu::GeluKind::Erf).map_err(cpu_err)?;
        let gdout_buf = c.up::<T>(&padded(&dout))?;
        let gdout = gdout_buf.view().slice(offset..offset + n)?;
        let gdin_buf = c.poisoned::<T>(offset + n)?;
        let gdin = gdin_buf.view().slice(offset..offset + n)?;
        let path = if super::gelu::bwd_vectorised(&[gdin, gpre, gdout]) {
            "vec4"
        } else {
            "scalar"
        };
        super::bias_gelu_backward(c.gpu, gdin, gpre, gdout, n, false)?;
        c.cmp(
            &format!("bias_gelu {rows}x{cols} ({path}) backward"),
            gdin,
            &din,
            c.tol,
        )?;
        // Accumulating, in place as the encoder calls it (dpre aliases dout): 2 * dout * gelu'.
        let twice: Vec<f32> = din.iter().map(|&x| T::from_f32(x).to_f32() * 2.0).collect();
        let acc_buf = c.up::<T>(&padded(&dout))?;
        let acc = acc_buf.view().slice(offset..offset + n)?;
        super::bias_gelu_backward(c.gpu, acc, gpre, acc, n, false)?;
        super::bias_gelu_backward(c.gpu, acc, gpre, gdout, n, true)?;
        c.cmp(
            &format!("bias_gelu {rows}x{cols} ({path}) backward in place + accumulate"),
            acc,
            &twice,
            c.tol,
        )?;
    }
    Ok(())
}

fn bias_grad<T: Elem>(c: &mut Ctx, s: u64) -> Result<(), GpuError> {
    // 70 columns and a shifted view: the per-column kernel; the rest the 4-column one (600 rows:
    // three row blocks; 3072 and 12 columns: more and fewer than a block's 128).
    for (rows, cols, offset) in [
        (57usize, 70usize, 0usize),
        (300, 768, 0),
        (600, 12, 0),
        (41, 3072, 0),
        (37, 384, 1),
    ] {
        let n = rows * cols;
        let seed = s * 100 + (rows + cols) as u64;
        let dout = rand::<T>(seed, n, 1.0);
        let init = rand::<f32>(seed + 1, cols, 1.0);
        // dbias += column sums (f64 on the host)
        let want: Vec<f32> = (0..cols)
            .map(|j| (init[j] as f64 + (0..rows).map(|r| dout[r * cols + j] as f64).sum::<f64>()) as f32)
            .collect();
        let mut padded = vec![0.5f32; offset];
        padded.extend_from_slice(&dout);
        let gdout_buf = c.up::<T>(&padded)?;
        let gdout = gdout_buf.view().slice(offset..offset + n)?;
        let gdb = c.up::<f32>(&init)?;
        let path = if super::misc::bias_grad_vectorised(gdout, cols) {
            "vec4"
        } else {
            "scalar"
        };
        super::bias_grad(c.gpu, gdb.view(), gdout, rows, cols)?;
        c.cmp(
            &format!("bias_grad {rows}x{cols} offset {offset} ({path})"),
            gdb.view(),
            &want,
            c.tol,
        )?;
    }
    Ok(())
}

fn layernorm<T: Elem>(c: &mut Ctx, s: u64) -> Result<(), GpuError> {
    // Widths that are multiples of 4 take the vectorised warp kernels (at offset 0), 90 and the
    // shifted views the scalar warp kernels, 2048 the block-per-row kernels.
    for (rows, cols, p, offset) in [
        (37usize, 96usize, 0.0f32, 0usize),
        (41, 384, 0.1, 0),
        (77, 768, 0.1, 0),
        (9, 1024, 0.1, 0),
        (5, 2048, 0.1, 0),
        (13, 90, 0.1, 0),
        (19, 768, 0.1, 1),
        (7, 384, 0.0, 1),
    ] {
        let n = rows * cols;
        // Every activation view starts `offset` elements into its buffer (off the 4-element
        // alignment when 1); the buffers stay alive in `keep`.
        let mut keep: Vec<DeviceBuffer<T>> = Vec::new();
        let mut shifted = |buf: DeviceBuffer<T>| -> Result<DSlice<T>, GpuError> {
            let v = buf.view().slice(offset..offset + n)?;
            keep.push(buf);
            Ok(v)
        };
        // Which kernels run: the block-per-row ones above 1024 columns.
        let kind = |vec: bool| match (cols > 1024, vec) {
            (true, _) => "block",
            (false, true) => "vec4",
            (false, false) => "scalar",
        };
        let seed = 77 + rows as u64;
        let a = rand::<T>(s * 100 + 1, n, 2.0);
        let abias = rand::<f32>(s * 100 + 2, cols, 0.5);
        let res = rand::<T>(s * 100 + 3, n, 1.0);
        let w = rand::<f32>(s * 100 + 4, cols, 1.0)
            .iter()
            .map(|x| 1.0 + x * 0.5)
            .collect::<Vec<_>>();
        let b = rand::<f32>(s * 100 + 5, cols, 0.3);
        let eps = 1e-12f32;
        // CPU: bias, dropout, residual, layer norm (each its own op).
        let ab: Vec<f32> = (0..n).map(|i| a[i] + abias[i % cols]).collect();
        let mut dropped = vec![0.0f32; n];
        cpu::dropout_forward(&mut dropped, &ab, n, p, seed).map_err(cpu_err)?;
        let mut sum = vec![0.0f32; n];
        cpu::residual_forward(&mut sum, &dropped, &res, n).map_err(cpu_err)?;
        let sum: Vec<f32> = sum.iter().map(|&x| T::from_f32(x).to_f32()).collect();
        let (mut out, mut mean, mut rstd) = (vec![0.0f32; n], vec![0.0f32; rows], vec![0.0f32; rows]);
        cpu::layernorm_forward(&mut out, &mut mean, &mut rstd, &sum, &w, &b, rows, cols, eps)
            .map_err(cpu_err)?;
        let pad = |v: &[f32]| {
            let mut p = vec![0.25f32; offset];
            p.extend_from_slice(v);
            p
        };
        let (ga, gab, gres, gw, gb) = (
            shifted(c.up::<T>(&pad(&a))?)?,
            c.up::<f32>(&abias)?,
            shifted(c.up::<T>(&pad(&res))?)?,
            c.up::<f32>(&w)?,
            c.up::<f32>(&b)?,
        );
        let (gout, gsum) = (
            shifted(c.poisoned::<T>(offset + n)?)?,
            shifted(c.poisoned::<T>(offset + n)?)?,
        );
        let path_fwd = kind(super::layernorm::vectorised(
            cols,
            &[Some(gout), Some(gsum), Some(ga), Some(gres)],
        ));
        let (gmean, grstd) = (c.poisoned::<f32>(rows)?, c.poisoned::<f32>(rows)?);
        super::residual_layernorm_forward(
            c.gpu,
            gout,
            gsum,
            gmean.view(),
            grstd.view(),
            ga,
            Some(gab.view()),
            Some(gres),
            gw.view(),
            gb.view(),
            rows,
            cols,
            eps,
            p,
            seed,
        )?;
        let what = format!("residual_layernorm {rows}x{cols} p={p} offset {offset}");
        c.cmp(&format!("{what} forward ({path_fwd}) out"), gout, &out, c.tol)?;
        c.cmp(&format!("{what} forward ({path_fwd}) sum"), gsum, &sum, c.tol)?;
        c.cmp(&format!("{what} forward mean"), gmean.view(), &mean, c.tol)?;
        c.cmp(&format!("{what} forward rstd"), grstd.view(), &rstd, c.tol)?;
        let dout = rand::<T>(s * 100 + 6, n, 1.0);
        let (mut ds, mut dw, mut db) = (vec![0.0f32; n], vec![0.0f32; cols], vec![0.0f32; cols]);
        cpu::layernorm_backward(
            &mut ds, &mut dw, &mut db, &dout, &sum, &w, &mean, &rstd, rows, cols,
        )
        .map_err(cpu_err)?;
        let mut da = vec![0.0f32; n];
        cpu::dropout_backward(&mut da, &ds, n, p, seed).map_err(cpu_err)?;
        let gdout = shifted(c.up::<T>(&pad(&dout))?)?;
        let (gda, gdres) = (
            shifted(c.poisoned::<T>(offset + n)?)?,
            shifted(c.poisoned::<T>(offset + n)?)?,
        );
        let path_bwd = kind(super::layernorm::vectorised(
            cols,
            &[Some(gda), Some(gdres), Some(gdout), Some(gsum)],
        ));
        let (gdw, gdb) = (c.gpu.alloc::<f32>(cols)?, c.gpu.alloc::<f32>(cols)?);
        super::residual_layernorm_backward(
            c.gpu,
            Some(gda),
            Some(gdres),
            gdw.view(),
            gdb.view(),
            gdout,
            gsum,
            gmean.view(),
            grstd.view(),
            gw.view(),
            rows,
            cols,
            p,
            seed,
            false,
        )?;
        c.cmp(&format!("{what} backward ({path_bwd}) da"), gda, &da, c.tol)?;
        c.cmp(&format!("{what} backward ({path_bwd}) dres"), gdres, &ds, c.tol)?;
        c.cmp(
            &format!("{what} backward ({path_bwd}) dweight"),
            gdw.view(),
            &dw,
            c.tol,
        )?;
        c.cmp(
            &format!("{what} backward ({path_bwd}) dbias"),
            gdb.view(),
            &db,
            c.tol,
        )?;
    }
    Ok(())
}

fn dropout<T: Elem>(c: &mut Ctx, s: u64) -> Result<(), GpuError> {
    let n = 100_003;
    let (p, seed) = (0.1f32, 0xDEAD_BEEF_u64 + s);
    let x = rand::<T>(s * 100 + 1, n, 1.0);
    let mut want = vec![0.0f32; n];
    cpu::dropout_forward(&mut want, &x, n, p, seed).map_err(cpu_err)?;
    let want: Vec<f32> = want.iter().map(|&v| T::from_f32(v).to_f32()).collect();
    let gx = c.up::<T>(&x)?;
    let out = c.poisoned::<T>(n)?;
    super::dropout_forward(c.gpu, out.view(), gx.view(), n, p, seed)?;
    // The masks must agree exactly: compare the zero patterns too.
    let got = c.down(out.view())?;
    let mismatched = got
        .iter()
        .zip(&want)
        .filter(|(g, w)| (**g == 0.0) != (**w == 0.0))
        .count();
    c.out.push(CheckResult {
        name: format!("{} dropout mask (elements differing of {n})", c.tag),
        rel_err: mismatched as f64,
        threshold: 0.0,
    });
    c.cmp("dropout_forward", out.view(), &want, c.tol)?;
    let mut din = vec![0.0f32; n];
    cpu::dropout_backward(&mut din, &x, n, p, seed).map_err(cpu_err)?;
    let gdin = c.poisoned::<T>(n)?;
    super::dropout_backward(c.gpu, gdin.view(), gx.view(), n, p, seed, false)?;
    c.cmp("dropout_backward", gdin.view(), &din, c.tol)
}

fn pooling<T: Elem>(c: &mut Ctx, s: u64) -> Result<(), GpuError> {
    let offs = [0usize, 3, 20, 21, 50];
    let (b, h, n) = (offs.len() - 1, 40, 50);
    let x = rand::<T>(s * 100 + 1, n * h, 1.0);
    let goffs = c.up_i32(&offs.iter().map(|&o| o as i32).collect::<Vec<_>>())?;
    let gx = c.up::<T>(&x)?;
    let dout = rand::<f32>(s * 100 + 2, b * h, 1.0);
    let gdout = c.up::<f32>(&dout)?;
    for (pool, name) in [(Pooling::Mean, "mean"), (Pooling::Cls, "cls")] {
        let mut want = vec![0.0f32; b * h];
        let mut dx = vec![0.0f32; n * h];
        for q in 0..b {
            let (r0, r1) = (offs[q], offs[q + 1]);
            let inv = 1.0 / (r1 - r0) as f32;
            for col in 0..h {
                want[q * h + col] = match pool {
                    Pooling::Cls => x[r0 * h + col],
                    Pooling::Mean => (r0..r1).map(|r| x[r * h + col]).sum::<f32>() * inv,
                };
                for r in r0..r1 {
                    dx[r * h + col] = match pool {
                        Pooling::Cls => {
                            if r == r0 {
                                dout[q * h + col]
                            } else {
                                0.0
                            }
                        }
                        Pooling::Mean => dout[q * h + col] * inv,
                    };
                }
            }
        }
        let dx: Vec<f32> = dx.iter().map(|&v| T::from_f32(v).to_f32()).collect();
        let out = c.poisoned::<f32>(b * h)?;
        super::pooling_forward(c.gpu, out.view(), gx.view(), goffs.view(), b, n, h, pool)?;
        c.cmp(
            &format!("pooling_forward {name}"),
            out.view(),
            &want,
            c.tol.min(1e-5),
        )?;
        let gdx = c.poisoned::<T>(n * h)?;
        super::pooling_backward(
            c.gpu,
            gdx.view(),
            gdout.view(),
            goffs.view(),
            b,
            n,
            h,
            pool,
            false,
        )?;
        c.cmp(&format!("pooling_backward {name}"), gdx.view(), &dx, c.tol)?;
    }
    Ok(())
}

/// f32 linear layer against the CPU op (exact or TF32 per the context's tag).
fn linear(c: &mut Ctx, s: u64) -> Result<(), GpuError> {
    linear_t::<f32>(c, s)
}

fn linear_t<T: Elem>(c: &mut Ctx, s: u64) -> Result<(), GpuError> {
    let (n, i, o) = (77, 96, 130);
    let x = rand::<T>(s * 100 + 1, n * i, 1.0);
    let w = rand::<T>(s * 100 + 2, o * i, 0.2);
    let b = rand::<f32>(s * 100 + 3, o, 0.5);
    let mut want = vec![0.0f32; n * o];
    cpu::linear_forward(&mut want, &x, &w, Some(&b), n, i, o).map_err(cpu_err)?;
    let (gx, gw, gb) = (c.up::<T>(&x)?, c.up::<T>(&w)?, c.up::<f32>(&b)?);
    let out = c.poisoned::<T>(n * o)?;
    super::linear_forward(c.gpu, out.view(), gx.view(), gw.view(), Some(gb.view()), n, i, o)?;
    c.cmp("linear_forward", out.view(), &want, c.tol)?;
    let dout = rand::<T>(s * 100 + 4, n * o, 1.0);
    let (mut dx, mut dw, mut db) = (vec![0.0f32; n * i], vec![0.0f32; o * i], vec![0.0f32; o]);
    cpu::linear_backward(Some(&mut dx), &mut dw, Some(&mut db), &dout, &x, &w, n, i, o).map_err(cpu_err)?;
    let gdout = c.up::<T>(&dout)?;
    let gdx = c.poisoned::<T>(n * i)?;
    let (gdw, gdb) = (c.gpu.alloc::<f32>(o * i)?, c.gpu.alloc::<f32>(o)?);
    super::linear_backward(
        c.gpu,
        Some(gdx.view()),
        false,
        gdw.view(),
        Some(gdb.view()),
        gdout.view(),
        gx.view(),
        gw.view(),
        n,
        i,
        o,
    )?;
    c.cmp("linear_backward dinp", gdx.view(), &dx, c.tol)?;
    c.cmp("linear_backward dweight", gdw.view(), &dw, c.tol)?;
    c.cmp(
        "linear_backward dbias",
        gdb.view(),
        &db,
        c.tol.min(1e-5).max(if T::NAME == "bf16" { 1e-2 } else { 0.0 }),
    )
}

fn attention<T: Elem>(c: &mut Ctx, s: u64) -> Result<(), GpuError> {
    // Head widths 8 and 16 take the vectorised permutes, 6 the scalar ones.
    for (offs, nh, hidden, p) in [
        (vec![0usize, 5, 17, 18, 40], 4usize, 32usize, 0.0f32),
        (vec![0usize, 31, 33, 97, 128], 6, 96, 0.1),
        (vec![0usize, 3, 10, 11, 24], 2, 12, 0.1),
    ] {
        let shape = AttentionShape::new(&offs, nh, hidden);
        let n = shape.rows;
        let seed = 1234 + s;
        let qkv_raw = rand::<T>(s * 100 + 1, n * 3 * hidden, 1.0);
        let bias = rand::<f32>(s * 100 + 2, 3 * hidden, 0.3);
        let qkv: Vec<f32> = (0..n * 3 * hidden)
            .map(|i| T::from_f32(qkv_raw[i] + bias[i % (3 * hidden)]).to_f32())
            .collect();
        let plen = cpu::attention_probs_len(&offs, nh);
        let (mut out, mut probs, mut scratch) =
            (vec![0.0f32; n * hidden], vec![0.0f32; plen], vec![0.0f32; plen]);
        let drop = (p > 0.0).then_some(cpu::AttentionDropout {
            p: f64::from(p),
            seed,
        });
        cpu::attention_forward(&mut out, &mut probs, &mut scratch, &qkv, &offs, nh, hidden, drop)
            .map_err(cpu_err)?;
        // The GPU gets the raw product and the bias separately (it adds the bias itself).
        let gqkv = c.up::<T>(&qkv_raw)?;
        let gbias = c.up::<f32>(&bias)?;
        let goffs = c.up_i32(&offs.iter().map(|&o| o as i32).collect::<Vec<_>>())?;
        let pb = super::attention_pbase(&offs, nh);
        let gpb = c.gpu.alloc::<i64>(pb.len())?;
        c.gpu.upload(gpb.view(), &pb)?;
        let (pl, sl) = super::attention_scratch_len(&shape);
        let bufs: Vec<DeviceBuffer<T>> = (0..8).map(|_| c.poisoned::<T>(pl)).collect::<Result<_, _>>()?;
        let gprobs = c.poisoned::<T>(sl)?;
        let gscores = c.poisoned::<T>(sl)?;
        let saved = AttentionSaved {
            q: bufs[0].view(),
            k: bufs[1].view(),
            v: bufs[2].view(),
            probs: gprobs.view(),
        };
        let gout = c.poisoned::<T>(n * hidden)?;
        let dr = (p > 0.0).then_some((p, seed));
        super::attention_forward(
            c.gpu,
            gout.view(),
            saved,
            gscores.view(),
            bufs[3].view(),
            gqkv.view(),
            Some(gbias.view()),
            goffs.view(),
            gpb.view(),
            &shape,
            dr,
        )?;
        // Fresh buffers are aligned: the head width decides the permute kernels.
        let path = if shape.head_dim.is_multiple_of(4) {
            "vec4"
        } else {
            "scalar"
        };
        let what = format!(
            "attention B={} nh={nh} H={hidden} p={p} ({path} permutes)",
            offs.len() - 1
        );
        c.cmp(&format!("{what} forward out"), gout.view(), &out, c.tol)?;
        // probabilities: gather the padded [B, nh, T, T] rows into the CPU's packed layout.
        let gp = c.down(gprobs.view())?;
        let t = shape.t_max;
        let mut packed = Vec::with_capacity(plen);
        for bq in 0..offs.len() - 1 {
            let len = offs[bq + 1] - offs[bq];
            for hh in 0..nh {
                for i in 0..len {
                    let row = ((bq * nh + hh) * t + i) * t;
                    packed.extend_from_slice(&gp[row..row + len]);
                }
            }
        }
        c.out.push(CheckResult {
            name: format!("{} {what} forward probs", c.tag),
            rel_err: rel_err(&packed, &probs),
            threshold: c.tol,
        });
        let dout = rand::<T>(s * 100 + 3, n * hidden, 1.0);
        let mut dqkv = vec![0.0f32; n * 3 * hidden];
        cpu::attention_backward(
            &mut dqkv,
            &mut scratch,
            &dout,
            &qkv,
            &probs,
            &offs,
            nh,
            hidden,
            drop,
        )
        .map_err(cpu_err)?;
        let gdout = c.up::<T>(&dout)?;
        let gdqkv = c.poisoned::<T>(n * 3 * hidden)?;
        let grads = [bufs[4].view(), bufs[5].view(), bufs[6].view(), bufs[7].view()];
        super::attention_backward(
            c.gpu,
            gdqkv.view(),
            false,
            gdout.view(),
            saved,
            gscores.view(),
            grads,
            goffs.view(),
            gpb.view(),
            &shape,
            dr,
        )?;
        c.cmp(&format!("{what} backward dqkv"), gdqkv.view(), &dqkv, c.tol)?;
    }
    Ok(())
}

fn checks_optimizer(gpu: &Gpu) -> Result<Vec<CheckResult>, GpuError> {
    let mut c = Ctx {
        gpu,
        out: Vec::new(),
        tag: "f32",
        tol: 1e-6,
    };
    let n = 300_007;
    let p0 = rand::<f32>(11, n, 1.0);
    let g0 = rand::<f32>(12, n, 0.01);
    let m0 = rand::<f32>(13, n, 0.001);
    let v0: Vec<f32> = rand::<f32>(14, n, 1e-5).iter().map(|x| x.abs()).collect();
    // norm, then clip at half the norm, then AdamW step 3.
    let norm = cpu::grad_norm(&g0);
    let max_norm = (norm * 0.5) as f32;
    let mut g = g0.clone();
    cpu::clip_grad_norm(&mut g, f64::from(max_norm));
    let (mut p, mut m, mut v) = (p0.clone(), m0.clone(), v0.clone());
    // undecayed ranges inside the grid-stride pattern and at both ends (decay 0.1: a missed range is off by 1e-4)
    let no_decay = [0..5, 1000..1256, 200_000..200_001, n - 3..n];
    cpu::adamw_update_masked(
        &mut p, &g, &mut m, &mut v, 1e-3, 0.9, 0.999, 1e-8, 0.1, &no_decay, 3,
    )
    .map_err(cpu_err)?;
    let bounds = super::no_decay_bounds(&no_decay);
    let nd = c.gpu.alloc::<i64>(bounds.len())?;
    c.gpu.upload(nd.view(), &bounds)?;
    let (gp, gg, gm, gv) = (
        c.up::<f32>(&p0)?,
        c.up::<f32>(&g0)?,
        c.up::<f32>(&m0)?,
        c.up::<f32>(&v0)?,
    );
    let ns = c.poisoned::<f32>(1)?;
    let copy = c.poisoned::<half::bf16>(n)?;
    super::grad_norm_sq(gpu, ns.view(), gg.view())?;
    let got = c.down(ns.view())?[0].sqrt();
    c.out.push(CheckResult {
        name: "f32 grad_norm".into(),
        rel_err: (f64::from(got) - norm).abs() / norm,
        threshold: 1e-5,
    });
    super::adamw_update(
        gpu,
        gp.view(),
        gg.view(),
        gm.view(),
        gv.view(),
        Some(copy.view()),
        1e-3,
        0.9,
        0.999,
        1e-8,
        0.1,
        nd.view(),
        3,
        Some((ns.view(), max_norm)),
    )?;
    c.cmp("adamw_update params (clipped)", gp.view(), &p, 1e-6)?;
    c.cmp("adamw_update m", gm.view(), &m, 1e-5)?;
    c.cmp("adamw_update v", gv.view(), &v, 1e-5)?;
    let pb: Vec<f32> = p.iter().map(|&x| half::bf16::from_f32(x).to_f32()).collect();
    c.cmp("adamw_update bf16 weight copy", copy.view(), &pb, 5e-3)?;
    // clipping as its own op
    super::scale_by_norm(gpu, gg.view(), ns.view(), max_norm)?;
    c.cmp("scale_by_norm (clip)", gg.view(), &g, 1e-6)?;
    Ok(c.out)
}
