"""The Inception FID / KID floor of a data set: its train split against its test split at several N.

    python experiments/fid_floor.py [--dataset=fashion_mnist] [--sizes=1000,2000,10000] [--resize=tf1]

Two samples of (nearly) one distribution: what a perfect model would score against the test split.
FID is biased upwards at small N (it falls as N grows); KID is unbiased, so its floor is 0 within
its standard error at every N. The features are those of the first N images of each split
(vdm.fid.reference_stats of the largest N, computed once and cached beside the data set).
KID is given twice: the conventional 100 random subsets of min(1000, N) (Bińkowski et al. 2018;
at N = 1000 every subset is the whole set, so its se is 0), and 10 disjoint subsets of N/10, whose
standard error is the sampling one. Prints a table; writes experiments/results/fid_floor.md.
"""

from __future__ import annotations

import argparse
import os
import time

from vdm import fid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def floor_rows(dataset: str, sizes: list[int], resize: str) -> list[str]:
    """Markdown rows 'N | FID | KID (100 x 1000) | KID (10 disjoint) ± se' of train vs test at each N."""
    net = fid.load_inception(resize)
    top = max(sizes)
    train = fid.reference_stats(f"{dataset}:train", num=top, net=net, progress=True)["features"]
    test = fid.reference_stats(f"{dataset}:test", num=top, net=net, progress=True)["features"]
    rows = []
    for n in sizes:
        a, b = train[:n], test[:n]
        t = time.perf_counter()
        score = fid.fid_from_features(a, b)
        kid, kid_se = fid.kid_from_features(a, b, num_subsets=100, subset_size=1000)
        kid10, kid10_se = fid.kid_from_features(a, b, num_subsets=10, subset_size=n // 10)
        rows.append(
            f"| {n} | {score:.3f} | {1e3 * kid:.3f} ± {1e3 * kid_se:.3f} | "
            f"{1e3 * kid10:.3f} ± {1e3 * kid10_se:.3f} | {time.perf_counter() - t:.0f} |"
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    """Parse the flags, measure, write the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--sizes", default="1000,2000,10000")
    p.add_argument("--resize", default="tf1", choices=fid.RESIZE_MODES)
    args = p.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    head = [
        "| N (train vs test) | FID | KID x 1e3, 100 subsets of min(1000, N) | "
        "KID x 1e3, 10 disjoint subsets of N/10 | metric seconds |",
        "|---|---|---|---|---|",
    ]
    rows = floor_rows(args.dataset, sizes, args.resize)
    path = os.path.join(ROOT, "experiments", "results", "fid_floor.md")
    with open(path, "w") as f:
        f.write(
            f"# Inception FID / KID floor: {args.dataset} train vs test\n\n"
            f"First N images of each split; Inception-v3 2015-12-05 pool features (vdm.fid), resize "
            f"{args.resize}; {time.strftime('%Y-%m-%d')}.\n\n" + "\n".join(head + rows) + "\n\n"
            f"Measured by `python experiments/fid_floor.py --dataset={args.dataset} --sizes={args.sizes} "
            f"--resize={args.resize}`.\n"
        )
    print(f"wrote {os.path.relpath(path, ROOT)}")


if __name__ == "__main__":
    main()
