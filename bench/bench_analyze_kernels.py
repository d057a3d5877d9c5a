"""Times analyze_kernels.py on T random kernel files of N images.

Writes, with kernel_files.write, the combined kernels of one run at T
epochs (0, 0.125, 0.25, 0.375, 0.5, 0.75, 1, 1.5, 2, 2.5, 3, 4, ...):
K_t = F_t F_tᵀ, F_t = X (I + log(1 + t)·D) for random features X (N + M,
64) of ten classes and one random drift D, each file with its cross
kernel of M test images, in {out}/run/kernels/{stem of checkpoint t}/,
as calculate_kernel.py --bonus_dir 'kernels/{name}' writes them. Then runs
`python analyze_kernels.py {out}/run/kernels --out_dir {out}/analysis`
(every measurement and figure) as a new process and reports its wall
time, start-up and imports included.

  .venv/bin/python bench/bench_analyze_kernels.py --kernels 30 --size 500
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from ntk import kernel_files  # noqa: E402
from store import layout  # noqa: E402

N_CLASSES = 10
FEATURES = 64
FRACTIONS = (0.125, 0.25, 0.375, 0.5, 0.75, 1.5, 2.5)


def epochs(count: int) -> list[float]:
    """The first `count` epochs run_exp.py --constant_save saves."""
    whole = range(count)
    return sorted({*FRACTIONS, *whole})[:count]


def write_kernels(folder: str, count: int, size: int, test_size: int) -> None:
    rng = np.random.default_rng(0)
    labels = np.arange(size) % N_CLASSES
    test_labels = np.arange(test_size) % N_CLASSES
    classes = np.concatenate([labels, test_labels])
    x = rng.normal(size=(size + test_size, FEATURES))
    x += 3 * np.eye(N_CLASSES, FEATURES)[classes]
    drift = 0.2 * rng.normal(size=(FEATURES, FEATURES))
    for epoch in epochs(count):
        f = x @ (np.eye(FEATURES) + np.log1p(epoch) * drift)
        kernel = (f @ f.T).astype(np.float32)
        name = layout.checkpoint_stem(epoch)
        out = os.path.join(folder, "kernels", name)
        os.makedirs(out, exist_ok=True)
        kernel_files.write(
            out,
            layout.KERNEL_SAVE_NAME,
            kernel_files.Kernels(
                kernel_files.COMBINED,
                kernel[:size, :size],
                labels,
                np.arange(size),
                test_kernel=kernel[size:, :size],
                test_labels=test_labels,
                test_indices=np.arange(test_size),
            ),
            n_logits=N_CLASSES,
            epoch=epoch,
            phase="standard",
            checkpoint_relpath=os.path.join(
                "..", "..", layout.checkpoint(epoch)
            ),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kernels", type=int, default=30)
    parser.add_argument("--size", type=int, default=500)
    parser.add_argument("--test_size", type=int, default=100)
    parser.add_argument("--out", default=None, help="default: a temp folder")
    args = parser.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="bench_analyze_")
    write_kernels(
        os.path.join(out, "run"), args.kernels, args.size, args.test_size
    )
    command = [
        sys.executable,
        os.path.join(ROOT, "analyze_kernels.py"),
        os.path.join(out, "run", "kernels"),
        "--out_dir",
        os.path.join(out, "analysis"),
        "--no_progress",
    ]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode:
        sys.exit(result.stderr)
    print(result.stdout.strip())
    print(
        f"{args.kernels} kernels of N = {args.size} (M = {args.test_size} "
        f"test images): {seconds:.1f} s; load average "
        f"{os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
