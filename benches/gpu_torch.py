"""PyTorch running the same 784 -> 256 (ReLU) -> 10 (softmax) MLP on the same GPU, fp32 and
bf16, at batch 1, 32, 256, 1024, host-to-device copy and answer back included (as Prism's
GpuModel::forward does). Prints one line per (dtype, batch)."""
import time

import torch

dev = torch.device("cuda:0")
torch.backends.cuda.matmul.allow_tf32 = False
for dtype in (torch.float32, torch.bfloat16):
    mlp = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10), torch.nn.Softmax(dim=1))
    mlp = mlp.to(dev, dtype).eval()
    for rows in (1, 32, 256, 1024):
        x = torch.rand(rows, 784).pin_memory()
        with torch.inference_mode():
            for _ in range(20):
                mlp(x.to(dev, dtype, non_blocking=True)).float().cpu()
            torch.cuda.synchronize()
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < 1.0:
                mlp(x.to(dev, dtype, non_blocking=True)).float().cpu()
                n += 1
            secs = time.perf_counter() - start
        print(f"torch {str(dtype).split('.')[-1]:<9}{rows:<8}{n * rows / secs:>14.0f}{secs * 1e3 / n:>14.3f}")
