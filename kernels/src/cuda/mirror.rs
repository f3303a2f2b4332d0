//! The CPU mirror of the GPU path: runs a [`Plan`] as the card would, every kernel as the
//! same index arithmetic in Rust over the same launch grid (block by block, thread by
//! thread, the shared-memory reductions phase by phase between their barriers), every
//! GEMM through cuBLAS's column-major definition with the plan's transposes, leading
//! dimensions and strides. A wrong index, stride, mask or bound in a plan or a kernel
//! shows here as a wrong answer or an out-of-bounds panic, on any machine.

use cudarc::driver::LaunchConfig;

use super::GpuError;
use super::plan::{Arg, Buf, Elem, Executor, Gemm, GemmType, Host, Op, Plan};
use super::source::{Kernel, ROW_BLOCK};

#[derive(Clone, Debug)]
enum Memory {
    F32(Vec<f32>),
    I32(Vec<i32>),
    U16(Vec<u16>),
}

impl Memory {
    fn from_host(data: Host<'_>) -> Memory {
        match data {
            Host::F32(v) => Memory::F32(v.to_vec()),
            Host::I32(v) => Memory::I32(v.to_vec()),
            Host::U16(v) => Memory::U16(v.to_vec()),
        }
    }
}

/// Buffers in host memory; see the module's documentation.
#[derive(Default)]
pub struct Mirror {
    buffers: Vec<Option<Memory>>,
}

impl Mirror {
    pub fn new() -> Mirror {
        Mirror::default()
    }

    /// Bytes the buffers hold now (after uploads: what the weights take on a card).
    pub fn bytes(&self) -> usize {
        self.buffers
            .iter()
            .flatten()
            .map(|m| match m {
                Memory::F32(v) => v.len() * 4,
                Memory::I32(v) => v.len() * 4,
                Memory::U16(v) => v.len() * 2,
            })
            .sum()
    }

    fn slot(&mut self, buf: Buf) -> &mut Option<Memory> {
        if self.buffers.len() <= buf.0 {
            self.buffers.resize(buf.0 + 1, None);
        }
        &mut self.buffers[buf.0]
    }

    fn take(&mut self, buf: Buf) -> Memory {
        self.slot(buf)
            .take()
            .unwrap_or_else(|| panic!("buffer {buf:?} is used before it exists. This is a bug."))
    }

    fn f32(&self, buf: Buf) -> &[f32] {
        match &self.buffers[buf.0] {
            Some(Memory::F32(v)) => v,
            other => panic!("buffer {buf:?} is not fp32: {other:?}"),
        }
    }

    fn launch(&mut self, kernel: Kernel, cfg: &LaunchConfig, args: &[Arg]) {
        assert_eq!(
            cfg.grid_dim.1 * cfg.grid_dim.2 * cfg.block_dim.1 * cfg.block_dim.2,
            1,
            "1-D launches"
        );
        // Each kernel writes one buffer and reads the others. Take the written one out of
        // the table so the rest can be borrowed beside it.
        let w = kernel.written();
        let Some(&Arg::Buf(out)) = args.get(w) else {
            panic!("{} writes its argument {w}, a buffer", kernel.name())
        };
        let mut written = self.take(out);
        // Read-only arguments that name the written buffer (`add_layer_norm` without a
        // residual) see a copy of it.
        let copy = written.clone();
        {
            let bufs = &self.buffers;
            let grid = Grid {
                blocks: cfg.grid_dim.0 as usize,
                threads: cfg.block_dim.0 as usize,
            };
            let a = Args {
                args,
                bufs,
                out,
                copy: &copy,
            };
            run_kernel(kernel, grid, &a, &mut written);
        }
        *self.slot(out) = Some(written);
    }
}

/// A 1-D launch grid.
#[derive(Clone, Copy)]
struct Grid {
    blocks: usize,
    threads: usize,
}

impl Grid {
    /// Every thread of every block, as `blockIdx.x * blockDim.x + threadIdx.x`.
    fn each(self, mut f: impl FnMut(i64)) {
        for block in 0..self.blocks {
            for thread in 0..self.threads {
                f((block * self.threads + thread) as i64);
            }
        }
    }
}

struct Args<'a> {
    args: &'a [Arg],
    bufs: &'a [Option<Memory>],
    out: Buf,
    copy: &'a Memory,
}

impl Args<'_> {
    fn mem(&self, i: usize) -> &Memory {
        match self.args[i] {
            Arg::Buf(b) if b == self.out => self.copy,
            Arg::Buf(b) => self.bufs[b.0].as_ref().expect("an argument buffer exists"),
            other => panic!("argument {i} is {other:?}, not a buffer"),
        }
    }
    fn f32(&self, i: usize) -> &[f32] {
        match self.mem(i) {
            Memory::F32(v) => v,
            other => panic!("argument {i} is not fp32: {:?}", elem_of(other)),
        }
    }
    fn i32s(&self, i: usize) -> &[i32] {
        match self.mem(i) {
            Memory::I32(v) => v,
            other => panic!("argument {i} is not int: {:?}", elem_of(other)),
        }
    }
    fn int(&self, i: usize) -> i64 {
        match self.args[i] {
            Arg::Int(v) => v as i64,
            other => panic!("argument {i} is {other:?}, not an int"),
        }
    }
    fn float(&self, i: usize) -> f32 {
        match self.args[i] {
            Arg::Float(v) => v,
            other => panic!("argument {i} is {other:?}, not a float"),
        }
    }
}

fn elem_of(m: &Memory) -> Elem {
    match m {
        Memory::F32(_) => Elem::F32,
        Memory::I32(_) => Elem::I32,
        Memory::U16(_) => Elem::U16,
    }
}

fn out_f32(m: &mut Memory) -> &mut Vec<f32> {
    match m {
        Memory::F32(v) => v,
        other => panic!("the written buffer is not fp32: {:?}", elem_of(other)),
    }
}

fn out_u16(m: &mut Memory) -> &mut Vec<u16> {
    match m {
        Memory::U16(v) => v,
        other => panic!("the written buffer is not 16-bit: {:?}", elem_of(other)),
    }
}

/// `erff` (CUDA's libdevice agrees with it to within an ulp or two).
fn erf(x: f32) -> f32 {
    libm::erff(x)
}

/// Shared-memory block reduction, `block_reduce` of the encoder source: every thread's
/// value, the halving tree between barriers; every thread reads `red[0]`.
fn block_reduce(values: &[f32], max: bool) -> f32 {
    let mut red = values.to_vec();
    assert_eq!(red.len(), ROW_BLOCK as usize);
    let mut half = ROW_BLOCK as usize / 2;
    while half > 0 {
        for t in 0..half {
            red[t] = if max {
                red[t].max(red[t + half])
            } else {
                red[t] + red[t + half]
            };
        }
        half >>= 1;
    }
    red[0]
}

/// The strided loop `for (c = threadIdx.x; c < n; c += ROW_BLOCK)` of thread `t`.
fn strided(t: usize, n: usize) -> impl Iterator<Item = usize> {
    (t..n).step_by(ROW_BLOCK as usize)
}

fn run_kernel(kernel: Kernel, grid: Grid, a: &Args<'_>, written: &mut Memory) {
    let threads = ROW_BLOCK as usize;
    match kernel {
        Kernel::AddRow => {
            let (t, rows, cols) = (a.f32(1), a.int(2), a.int(3));
            let y = out_f32(written);
            grid.each(|i| {
                if i < rows * cols {
                    y[i as usize] += t[(i % cols) as usize];
                }
            });
        }
        Kernel::Activate => {
            let (n, act) = (a.int(1), a.int(2));
            let y = out_f32(written);
            grid.each(|i| {
                if i >= n {
                    return;
                }
                let v = y[i as usize];
                y[i as usize] = match act {
                    1 => v.max(0.0),
                    2 => 0.5 * v * (1.0 + erf(v * std::f32::consts::FRAC_1_SQRT_2)),
                    3 => 0.5 * v * (1.0 + (0.797_884_6 * (v + 0.044715 * v * v * v)).tanh()),
                    4 => 1.0 / (1.0 + (-v).exp()),
                    5 => v.tanh(),
                    _ => v,
                };
            });
        }
        Kernel::SoftmaxRows => {
            let (rows, cols) = (a.int(1), a.int(2) as usize);
            let y = out_f32(written);
            grid.each(|r| {
                if r >= rows {
                    return;
                }
                let row = &mut y[r as usize * cols..(r as usize + 1) * cols];
                let m = row[1..].iter().fold(row[0], |m, &v| m.max(v));
                let mut s = 0.0;
                for v in row.iter_mut() {
                    *v = (*v - m).exp();
                    s += *v;
                }
                row.iter_mut().for_each(|v| *v /= s);
            });
        }
        Kernel::ToBf16 => {
            let (x, n) = (a.f32(0), a.int(2));
            let y = out_u16(written);
            grid.each(|i| {
                if i >= n {
                    return;
                }
                let mut u = x[i as usize].to_bits();
                if u & 0x7fff_ffff > 0x7f80_0000 {
                    y[i as usize] = ((u >> 16) | 0x40) as u16;
                    return;
                }
                u = u.wrapping_add(0x7fff + ((u >> 16) & 1));
                y[i as usize] = (u >> 16) as u16;
            });
        }
        Kernel::ToFp16 => {
            let (x, n) = (a.f32(0), a.int(2));
            let y = out_u16(written);
            grid.each(|i| {
                if i < n {
                    y[i as usize] = half::f16::from_f32(x[i as usize]).to_bits();
                }
            });
        }
        Kernel::Embed => {
            let (word, position, ty) = (a.f32(1), a.f32(2), a.f32(3));
            let (ids, types, lengths) = (a.i32s(4), a.i32s(5), a.i32s(6));
            let (batch, seq, hidden) = (a.int(7), a.int(8), a.int(9));
            let x = out_f32(written);
            grid.each(|i| {
                if i >= batch * seq * hidden {
                    return;
                }
                let (token, j) = (i / hidden, i % hidden);
                let (b, p) = (token / seq, token % seq);
                if p >= lengths[b as usize] as i64 {
                    x[i as usize] = 0.0;
                    return;
                }
                let at = |table: &[f32], row: i64| table[(row * hidden + j) as usize];
                x[i as usize] =
                    at(word, ids[token as usize] as i64) + at(position, p) + at(ty, types[token as usize] as i64);
            });
        }
        Kernel::AddLayerNorm => {
            let (residual, gamma, beta) = (a.f32(1), a.f32(2), a.f32(3));
            let (rows, cols, eps, has_residual) = (a.int(4), a.int(5) as usize, a.float(6), a.int(7) != 0);
            let x = out_f32(written);
            for r in 0..grid.blocks {
                if r as i64 >= rows {
                    continue;
                }
                let row = &mut x[r * cols..(r + 1) * cols];
                let res = &residual[r * cols..(r + 1) * cols];
                let mut sums = vec![0.0f32; threads];
                for (t, s) in sums.iter_mut().enumerate() {
                    for c in strided(t, cols) {
                        let mut v = row[c];
                        if has_residual {
                            v += res[c];
                            row[c] = v;
                        }
                        *s += v;
                    }
                }
                let mean = block_reduce(&sums, false) / cols as f32;
                let q: Vec<f32> = (0..threads)
                    .map(|t| strided(t, cols).map(|c| (row[c] - mean) * (row[c] - mean)).sum())
                    .collect();
                let inv = 1.0 / (block_reduce(&q, false) / cols as f32 + eps).sqrt();
                for t in 0..threads {
                    for c in strided(t, cols) {
                        row[c] = (row[c] - mean) * inv * gamma[c] + beta[c];
                    }
                }
            }
        }
        Kernel::MaskedSoftmax => {
            let lengths = a.i32s(1);
            let (rows, heads, seq) = (a.int(2), a.int(3), a.int(4) as usize);
            let scores = out_f32(written);
            for r in 0..grid.blocks {
                if r as i64 >= rows {
                    continue;
                }
                let len = lengths[r / (heads as usize * seq)] as usize;
                let row = &mut scores[r * seq..(r + 1) * seq];
                let maxes: Vec<f32> = (0..threads)
                    .map(|t| strided(t, len).fold(-3.0e38f32, |m, c| m.max(row[c])))
                    .collect();
                let m = block_reduce(&maxes, true);
                let mut sums = vec![0.0f32; threads];
                for (t, s) in sums.iter_mut().enumerate() {
                    for c in strided(t, seq) {
                        let e = if c < len { (row[c] - m).exp() } else { 0.0 };
                        row[c] = e;
                        *s += e;
                    }
                }
                let inv = 1.0 / block_reduce(&sums, false);
                for t in 0..threads {
                    for c in strided(t, seq) {
                        row[c] *= inv;
                    }
                }
            }
        }
        Kernel::SplitHeads => unreachable!("split_heads writes three buffers: Mirror::split_heads runs it"),
        Kernel::MergeHeads => {
            let context = a.f32(0);
            let (batch, seq, heads, d) = (a.int(2), a.int(3), a.int(4), a.int(5));
            let hidden = heads * d;
            let out = out_f32(written);
            grid.each(|i| {
                if i >= batch * seq * hidden {
                    return;
                }
                let (token, hc) = (i / hidden, i % hidden);
                let (head, e) = (hc / d, hc % d);
                let (b, p) = (token / seq, token % seq);
                out[i as usize] = context[(((b * heads + head) * seq + p) * d + e) as usize];
            });
        }
        Kernel::Pool => {
            let (states, lengths) = (a.f32(0), a.i32s(2));
            let (batch, seq, hidden, mode) = (a.int(3), a.int(4), a.int(5), a.int(6));
            let out = out_f32(written);
            grid.each(|i| {
                if i >= batch * hidden {
                    return;
                }
                let (b, j) = (i / hidden, i % hidden);
                let len = lengths[b as usize] as i64;
                let s = |p: i64| states[(b * seq * hidden + j + p * hidden) as usize];
                out[i as usize] = match mode {
                    1 => s(0),
                    4 => s(len - 1),
                    2 => (1..len).fold(s(0), |m, p| m.max(s(p))),
                    _ => {
                        let acc: f32 = (0..len).fold(0.0, |acc, p| acc + s(p));
                        if mode == 0 {
                            acc / (len as f32).max(1e-9)
                        } else {
                            acc / (len as f32).sqrt()
                        }
                    }
                };
            });
        }
        Kernel::L2Normalize => {
            let (rows, cols) = (a.int(1), a.int(2) as usize);
            let x = out_f32(written);
            for r in 0..grid.blocks {
                if r as i64 >= rows {
                    continue;
                }
                let row = &mut x[r * cols..(r + 1) * cols];
                let q: Vec<f32> = (0..threads)
                    .map(|t| strided(t, cols).map(|c| row[c] * row[c]).sum())
                    .collect();
                let norm = block_reduce(&q, false).sqrt().max(1e-12);
                row.iter_mut().for_each(|v| *v /= norm);
            }
        }
    }
}

impl Mirror {
    /// `split_heads(qkv, q, k, v, batch, seq, heads, d, scale)`: the one kernel that writes
    /// three buffers.
    fn split_heads(&mut self, cfg: &LaunchConfig, args: &[Arg]) {
        let [Arg::Buf(qkv), Arg::Buf(q), Arg::Buf(k), Arg::Buf(v), ..] = *args else {
            panic!("split_heads takes qkv, q, k, v first")
        };
        let int = |i: usize| match args[i] {
            Arg::Int(n) => n as i64,
            other => panic!("argument {i} is {other:?}, not an int"),
        };
        let (batch, seq, heads, d) = (int(4), int(5), int(6), int(7));
        let Arg::Float(scale) = args[8] else {
            panic!("argument 8 is the scale")
        };
        let mut outs = [self.take(q), self.take(k), self.take(v)];
        let src = self.f32(qkv);
        let hidden = heads * d;
        let grid = Grid {
            blocks: cfg.grid_dim.0 as usize,
            threads: cfg.block_dim.0 as usize,
        };
        grid.each(|i| {
            if i >= batch * seq * 3 * hidden {
                return;
            }
            let (token, c) = (i / (3 * hidden), i % (3 * hidden));
            let (which, hc) = (c / hidden, c % hidden);
            let (head, e) = (hc / d, hc % d);
            let (b, p) = (token / seq, token % seq);
            let dst = (((b * heads + head) * seq + p) * d + e) as usize;
            let val = src[i as usize];
            out_f32(&mut outs[which as usize])[dst] = if which == 0 { val * scale } else { val };
        });
        let [mq, mk, mv] = outs;
        *self.slot(q) = Some(mq);
        *self.slot(k) = Some(mk);
        *self.slot(v) = Some(mv);
    }

    fn gemm(&mut self, g: &Gemm) {
        let mut c = self.take(g.c);
        {
            let value = |buf: Buf, i: usize| -> f32 {
                match (&self.buffers[buf.0], g.ty) {
                    (Some(Memory::F32(v)), GemmType::F32) => v[i],
                    (Some(Memory::U16(v)), GemmType::Bf16) => half::bf16::from_bits(v[i]).to_f32(),
                    (Some(Memory::U16(v)), GemmType::Fp16) => half::f16::from_bits(v[i]).to_f32(),
                    (other, ty) => panic!(
                        "a {ty:?} GEMM reads buffer {buf:?} of {:?}",
                        other.as_ref().map(elem_of)
                    ),
                }
            };
            let c = out_f32(&mut c);
            for p in 0..g.batch {
                let (oa, ob, oc) = (p * g.stride_a, p * g.stride_b, p * g.stride_c);
                for j in 0..g.n {
                    for i in 0..g.m {
                        let mut sum = 0.0f32;
                        for l in 0..g.k {
                            let av = if g.trans_a {
                                oa + i * g.lda + l
                            } else {
                                oa + l * g.lda + i
                            };
                            let bv = if g.trans_b {
                                ob + l * g.ldb + j
                            } else {
                                ob + j * g.ldb + l
                            };
                            sum += value(g.a, av) * value(g.b, bv);
                        }
                        let at = oc + j * g.ldc + i;
                        c[at] = g.alpha * sum + if g.beta == 0.0 { 0.0 } else { g.beta * c[at] };
                    }
                }
            }
        }
        *self.slot(g.c) = Some(c);
    }
}

impl Executor for Mirror {
    fn upload(&mut self, buf: Buf, data: Host<'_>) -> Result<(), GpuError> {
        *self.slot(buf) = Some(Memory::from_host(data));
        Ok(())
    }

    fn use_tf32(&mut self) -> Result<(), GpuError> {
        Ok(())
    }

    fn run(&mut self, plan: &Plan, inputs: &[Host<'_>]) -> Result<Vec<f32>, GpuError> {
        // Scratch holds exactly what this batch needs, so any read past it panics, and it
        // starts as poison (the card's would hold the previous batch's values): NaN floats
        // and half floats, ints that index nowhere. A plan that reads what it did not
        // write shows in its answer or panics.
        for &(buf, elem, len) in &plan.scratch {
            let m = match elem {
                Elem::F32 => Memory::F32(vec![f32::NAN; len]),
                // A NaN in bf16 and in fp16 alike.
                Elem::U16 => Memory::U16(vec![0x7fc0; len]),
                Elem::I32 => Memory::I32(vec![i32::MIN; len]),
            };
            *self.slot(buf) = Some(m);
        }
        assert_eq!(inputs.len(), plan.inputs.len(), "one input per plan input");
        for (&buf, data) in plan.inputs.iter().zip(inputs) {
            let Some(slot) = self.slot(buf).as_mut() else {
                panic!("input buffer {buf:?} is not scratch. This is a bug.")
            };
            match (slot, data) {
                (Memory::F32(d), Host::F32(s)) if d.len() >= s.len() => d[..s.len()].copy_from_slice(s),
                (Memory::I32(d), Host::I32(s)) if d.len() >= s.len() => d[..s.len()].copy_from_slice(s),
                (Memory::U16(d), Host::U16(s)) if d.len() >= s.len() => d[..s.len()].copy_from_slice(s),
                (m, s) => panic!("input {buf:?} of {:?} does not fit {:?}", s.elem(), elem_of(m)),
            }
        }
        for op in &plan.ops {
            match op {
                Op::Launch {
                    kernel: Kernel::SplitHeads,
                    cfg,
                    args,
                } => self.split_heads(cfg, args),
                Op::Launch { kernel, cfg, args } => self.launch(*kernel, cfg, args),
                Op::Gemm(g) => {
                    for (buf, extent) in g.extents() {
                        let len = match &self.buffers[buf.0] {
                            Some(Memory::F32(v)) => v.len(),
                            Some(Memory::U16(v)) => v.len(),
                            _ => 0,
                        };
                        assert!(
                            extent <= len,
                            "a GEMM reads {extent} elements of {buf:?}, which holds {len}"
                        );
                    }
                    self.gemm(g)
                }
            }
        }
        let (buf, len) = plan.output;
        Ok(self.f32(buf)[..len].to_vec())
    }
}
