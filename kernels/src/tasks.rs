//! Stateless ops over tensors of any rank: what `POST /v2/tasks/{op}` and pipeline steps
//! run. Element-wise binary ops broadcast as numpy does; `matmul` takes two matrices.
//!
//! [`TaskOp::output_shape`] checks the arguments' shapes before anything runs, so a bad
//! call is refused with the reason instead of reaching a kernel.

use std::fmt;
use std::str::FromStr;

use ndarray::{ArrayD, ArrayViewD, Ix2, IxDyn};

use crate::device::CpuDevice;
use crate::ops;

/// A task op, by its name in the URL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TaskOp {
    Matmul,
    Add,
    Sub,
    Mul,
    Div,
    Sum,
    Mean,
    Square,
    Neg,
    Relu,
    Sigmoid,
    Tanh,
    Softmax,
    Transpose,
}

impl TaskOp {
    pub const ALL: [TaskOp; 14] = [
        TaskOp::Matmul,
        TaskOp::Add,
        TaskOp::Sub,
        TaskOp::Mul,
        TaskOp::Div,
        TaskOp::Sum,
        TaskOp::Mean,
        TaskOp::Square,
        TaskOp::Neg,
        TaskOp::Relu,
        TaskOp::Sigmoid,
        TaskOp::Tanh,
        TaskOp::Softmax,
        TaskOp::Transpose,
    ];

    pub fn name(self) -> &'static str {
        match self {
            TaskOp::Matmul => "matmul",
            TaskOp::Add => "add",
            TaskOp::Sub => "sub",
            TaskOp::Mul => "mul",
            TaskOp::Div => "div",
            TaskOp::Sum => "sum",
            TaskOp::Mean => "mean",
            TaskOp::Square => "square",
            TaskOp::Neg => "neg",
            TaskOp::Relu => "relu",
            TaskOp::Sigmoid => "sigmoid",
            TaskOp::Tanh => "tanh",
            TaskOp::Softmax => "softmax",
            TaskOp::Transpose => "transpose",
        }
    }

    /// How many arguments the op takes.
    pub fn arity(self) -> usize {
        match self {
            TaskOp::Matmul | TaskOp::Add | TaskOp::Sub | TaskOp::Mul | TaskOp::Div => 2,
            _ => 1,
        }
    }

    /// Whether `n` arguments are what the op takes.
    pub fn check_arity(self, n: usize) -> Result<(), String> {
        if n == self.arity() {
            return Ok(());
        }
        let s = if self.arity() == 1 { "" } else { "s" };
        Err(format!("{} takes {} argument{s}, got {n}", self.name(), self.arity()))
    }

    /// The shape of the result for arguments of `shapes`, or why they do not fit.
    pub fn output_shape(self, shapes: &[&[usize]]) -> Result<Vec<usize>, String> {
        self.check_arity(shapes.len())?;
        match self {
            TaskOp::Matmul => match (shapes[0], shapes[1]) {
                ([m, k], [k2, n]) if k == k2 => Ok(vec![*m, *n]),
                ([_, k], [k2, _]) => Err(format!(
                    "matmul: the first argument has {k} columns, the second {k2} rows; they must agree"
                )),
                (a, b) => Err(format!(
                    "matmul takes two matrices (rank 2), got shapes {a:?} and {b:?}"
                )),
            },
            TaskOp::Add | TaskOp::Sub | TaskOp::Mul | TaskOp::Div => broadcast(shapes[0], shapes[1]).ok_or_else(|| {
                format!(
                    "{}: shapes {:?} and {:?} cannot be broadcast together",
                    self.name(),
                    shapes[0],
                    shapes[1]
                )
            }),
            TaskOp::Sum | TaskOp::Mean => Ok(Vec::new()),
            TaskOp::Softmax if shapes[0].is_empty() => {
                Err("softmax needs at least one axis (it normalises the last one); got a scalar".into())
            }
            TaskOp::Transpose => Ok(shapes[0].iter().rev().copied().collect()),
            _ => Ok(shapes[0].to_vec()),
        }
    }

    /// Runs the op. The shapes must have passed [`TaskOp::output_shape`].
    pub fn run(self, device: &CpuDevice, args: &[ArrayViewD<'_, f32>]) -> Result<ArrayD<f32>, String> {
        let shapes: Vec<&[usize]> = args.iter().map(|a| a.shape()).collect();
        self.output_shape(&shapes)?;
        let unary = |f: fn(f32) -> f32| args[0].mapv(f);
        Ok(match self {
            TaskOp::Matmul => {
                let x = args[0].view().into_dimensionality::<Ix2>().map_err(|e| e.to_string())?;
                let w = args[1].as_standard_layout();
                let n = w.shape()[1];
                let w = w.as_slice().expect("standard layout is contiguous");
                ops::matmul(device, x, w, n, None)
                    .map_err(|e| e.to_string())?
                    .into_dyn()
            }
            TaskOp::Add => &args[0] + &args[1],
            TaskOp::Sub => &args[0] - &args[1],
            TaskOp::Mul => &args[0] * &args[1],
            TaskOp::Div => &args[0] / &args[1],
            // Summed in f64: a long tensor of f32 loses digits otherwise.
            TaskOp::Sum => scalar(args[0].iter().map(|&v| f64::from(v)).sum::<f64>() as f32),
            // The mean of nothing is NaN, as numpy's.
            TaskOp::Mean => scalar((args[0].iter().map(|&v| f64::from(v)).sum::<f64>() / args[0].len() as f64) as f32),
            TaskOp::Square => unary(|v| v * v),
            TaskOp::Neg => unary(|v| -v),
            TaskOp::Relu => in_place(&args[0], ops::relu),
            TaskOp::Sigmoid => in_place(&args[0], ops::sigmoid),
            TaskOp::Tanh => in_place(&args[0], ops::tanh),
            TaskOp::Softmax => in_place(&args[0], ops::softmax),
            TaskOp::Transpose => args[0].t().as_standard_layout().into_owned(),
        })
    }
}

/// A copy of `x` with `op` applied, the layer ops reused over any rank.
fn in_place(x: &ArrayViewD<'_, f32>, op: fn(&mut ArrayD<f32>)) -> ArrayD<f32> {
    let mut y = x.to_owned();
    op(&mut y);
    y
}

fn scalar(v: f32) -> ArrayD<f32> {
    ArrayD::from_elem(IxDyn(&[]), v)
}

/// numpy's broadcasting of two shapes.
fn broadcast(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let n = a.len().max(b.len());
    let at = |s: &[usize], i: usize| if i < n - s.len() { 1 } else { s[i - (n - s.len())] };
    (0..n)
        .map(|i| match (at(a, i), at(b, i)) {
            (x, y) if x == y => Some(x),
            (1, y) => Some(y),
            (x, 1) => Some(x),
            _ => None,
        })
        .collect()
}

impl fmt::Display for TaskOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for TaskOp {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskOp::ALL.into_iter().find(|op| op.name() == s).ok_or_else(|| {
            let names: Vec<&str> = TaskOp::ALL.iter().map(|o| o.name()).collect();
            format!("unknown op `{s}`; the ops are: {}", names.join(", "))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{ArrayD, array};

    fn run(op: TaskOp, args: &[ArrayD<f32>]) -> Result<ArrayD<f32>, String> {
        let device = CpuDevice::new(1).unwrap();
        let views: Vec<_> = args.iter().map(|a| a.view()).collect();
        op.run(&device, &views)
    }

    #[test]
    fn elementwise_ops_broadcast_like_numpy() {
        let m = array![[1.0f32, 2.0], [3.0, 4.0]].into_dyn();
        let row = array![10.0f32, 20.0].into_dyn();
        let s = scalar(2.0);
        assert_eq!(
            run(TaskOp::Add, &[m.clone(), row]).unwrap(),
            array![[11.0f32, 22.0], [13.0, 24.0]].into_dyn()
        );
        assert_eq!(
            run(TaskOp::Mul, &[m.clone(), s]).unwrap(),
            array![[2.0f32, 4.0], [6.0, 8.0]].into_dyn()
        );
        let col = array![[1.0f32], [2.0], [3.0]].into_dyn();
        let err = run(TaskOp::Sub, &[m, col]).unwrap_err();
        assert!(err.contains("cannot be broadcast"), "{err}");
    }

    #[test]
    fn matmul_checks_inner_dimensions_and_matches_the_definition() {
        let a = array![[1.0f32, 2.0, 3.0], [4.0, 5.0, 6.0]].into_dyn();
        let b = array![[1.0f32, 0.0], [0.0, 1.0], [1.0, 1.0]].into_dyn();
        assert_eq!(
            run(TaskOp::Matmul, &[a.clone(), b]).unwrap(),
            array![[4.0f32, 5.0], [10.0, 11.0]].into_dyn()
        );
        let err = run(TaskOp::Matmul, &[a.clone(), a]).unwrap_err();
        assert!(err.contains("3 columns, the second 2 rows"), "{err}");
    }

    #[test]
    fn reductions_unary_ops_and_arity() {
        let v = array![1.0f32, -2.0, 3.0].into_dyn();
        assert_eq!(run(TaskOp::Sum, std::slice::from_ref(&v)).unwrap(), scalar(2.0));
        assert_eq!(
            run(TaskOp::Square, std::slice::from_ref(&v)).unwrap(),
            array![1.0f32, 4.0, 9.0].into_dyn()
        );
        assert_eq!(
            run(TaskOp::Relu, std::slice::from_ref(&v)).unwrap(),
            array![1.0f32, 0.0, 3.0].into_dyn()
        );
        let p = run(TaskOp::Softmax, std::slice::from_ref(&v)).unwrap();
        assert!((p.sum() - 1.0).abs() < 1e-6);
        assert!(run(TaskOp::Add, &[v]).unwrap_err().contains("takes 2 arguments, got 1"));
        assert!("nope".parse::<TaskOp>().unwrap_err().contains("matmul"));
        let t = run(TaskOp::Transpose, &[array![[1.0f32, 2.0, 3.0]].into_dyn()]).unwrap();
        assert_eq!(t, array![[1.0f32], [2.0], [3.0]].into_dyn());
    }
}
