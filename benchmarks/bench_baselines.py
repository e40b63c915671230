"""Run `helix plan` with every baseline on Helix's four clusters; write plans, PNGs and a summary.

python benchmarks/bench_baselines.py  → benchmarks/results/baselines.json
                                        (plans and PNGs in benchmarks/results/baselines/)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from helix.reference import reference_dir

CLUSTERS = {
    "single24": "llama-2-70b",
    "3cluster24": "llama-2-70b",
    "cluster42": "llama-2-70b",
    "cluster10": "llama-1-30b",
}
METHODS = ("petals", "swarm", "homogeneous", "separate")


def main() -> None:
    ref = reference_dir()
    out_dir = Path(__file__).parent / "results" / "baselines"
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {}
    for cluster, model in CLUSTERS.items():
        for method in METHODS:
            for partial in (False, True):
                stem = f"{cluster}_{method}" + ("_partial" if partial else "")
                args = [
                    "plan",
                    "-c",
                    str(ref / "clusters" / f"{cluster}.ini"),
                    "-m",
                    model,
                    "--method",
                    method,
                    "--profiles",
                    str(ref / "profiles"),
                    "-o",
                    str(out_dir / f"{stem}.json"),
                    "--plot",
                    str(out_dir / f"{stem}.png"),
                    "-q",
                ]
                if partial:
                    args.append("--partial-overlap")
                done = subprocess.run(
                    [sys.executable, "-m", "helix.cli.main", *args],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                summary[stem] = json.loads(done.stdout)["max_flow_tokens_per_s"]
                print(f"{stem:32s} {summary[stem]:10.3f}")
    (out_dir.parent / "baselines.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
