"""Compile time of the VDM UNet's forward+backward vs depth: unrolled blocks vs nn.scan.

    PYTHONPATH=. python experiments/bench_compile.py [--layers 2 8 32] [--repeats 1] [--timeout 600]

For each (num_layers, scan_blocks), a fresh subprocess builds configs/cifar10.py's model
(width 128, paper keys) and times jit(value_and_grad(loss)).lower(...) and .compile() of the
eps-MSE loss on a [2, 32, 32, 3] batch (trace+lower and XLA compile, seconds; medians over
--repeats fresh processes). A run past --timeout is reported as '> timeout'. Prints a markdown
table and writes experiments/results/bench_compile.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def measure(num_layers: int, scan: bool, remat: bool, batch: int) -> dict:
    """Trace+lower and compile seconds of one forward+backward of the loss (run in a fresh process)."""
    import jax
    import jax.numpy as jnp

    sys.path.insert(0, ROOT)
    from configs import cifar10
    from vdm.models import get_model

    m = cifar10.get_config().model
    m.num_layers, m.scan_blocks, m.remat = num_layers, scan, remat
    model = get_model(m)
    z = jnp.zeros((batch, 32, 32, 3))
    g = jnp.zeros((batch,))
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), z, g)['params'])

    def loss(p, z, g, eps, key):
        pred = model.apply({'params': p}, z, g, train=True, rngs={'dropout': key})
        return jnp.mean(jnp.square(pred - eps))

    step = jax.jit(jax.value_and_grad(loss))
    t0 = time.perf_counter()
    lowered = step.lower(params, z, g, z, jax.random.PRNGKey(0))
    t1 = time.perf_counter()
    lowered.compile()
    t2 = time.perf_counter()
    return {'lower_s': t1 - t0, 'compile_s': t2 - t1}


def run_one(num_layers: int, scan: bool, remat: bool, batch: int, timeout: float) -> dict | None:
    """measure() in a subprocess (no cache shared between runs); None on timeout."""
    cmd = [sys.executable, __file__, '--child', json.dumps([num_layers, scan, remat, batch])]
    env = {**os.environ, 'PYTHONPATH': ROOT, 'JAX_PLATFORMS': os.environ.get('JAX_PLATFORMS', 'cpu')}
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=True)
    except subprocess.TimeoutExpired:
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    """Run the grid, print and write the table."""
    ap = argparse.ArgumentParser()
    ap.add_argument('--layers', type=int, nargs='+', default=[2, 8, 32])
    ap.add_argument('--repeats', type=int, default=1)
    ap.add_argument('--batch', type=int, default=2)
    ap.add_argument('--timeout', type=float, default=600.0)
    ap.add_argument('--remat', action='store_true', help='also rematerialise each block')
    ap.add_argument('--child', default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(measure(*json.loads(a.child))))
        return
    rows = []
    for num_layers in a.layers:
        for scan in (False, True):
            runs = [run_one(num_layers, scan, a.remat, a.batch, a.timeout) for _ in range(a.repeats)]
            ok = [r for r in runs if r is not None]
            if len(ok) < len(runs):
                cell = (f'> {a.timeout:.0f} (timeout)', '', '')
            else:
                comp = [r['compile_s'] for r in ok]
                cell = (f"{statistics.median(r['lower_s'] for r in ok):.1f}",
                        f"{statistics.median(comp):.1f}", f"{min(comp):.1f}")
            row = f"| {num_layers} | {'scan' if scan else 'unrolled'} | {cell[0]} | {cell[1]} | {cell[2]} |"
            print(row, flush=True)
            rows.append(row)
    head = ['# Compile time of the VDM UNet forward+backward', '',
            f'Model: configs/cifar10.py (width 128, paper keys), remat={a.remat}, batch {a.batch} x 32x32x3, '
            f'jit(value_and_grad(eps-MSE)); median of {a.repeats} fresh process(es); '
            f'{platform.machine()} CPU, {os.cpu_count()} cores visible; '
            'seconds. Command: `PYTHONPATH=. python experiments/bench_compile.py '
            + ' '.join(sys.argv[1:]) + '`', '',
            'The 2 cores are shared with other jobs, so single runs are noisy; the minimum is the least '
            'disturbed one.', '',
            '| num_layers | blocks | trace+lower s (median) | XLA compile s (median) | XLA compile s (min) |',
            '|---|---|---|---|---|']
    text = '\n'.join(head + rows) + '\n'
    print(text)
    os.makedirs(os.path.join(HERE, 'results'), exist_ok=True)
    with open(os.path.join(HERE, 'results', 'bench_compile.md'), 'w') as f:
        f.write(text)


if __name__ == '__main__':
    main()
