"""The size of the environment `pip install fedstack` makes, against `pip install 'fedstack[all]'`.

    python benchmarks/env_size.py [--only core|full] [--keep DIR] [--no-constraints]

Two throwaway virtual environments in a temporary folder: `core`, fedstack with its core dependencies
(`pip install .`: what a deployed client with a NumPy model needs), and `full`, every extra
(`pip install '.[all]'`: torch, dp-accounting, opacus, tenseal, Ray, scikit-learn, matplotlib, the export
libraries, pandas). Each is checked (core: `import fedstack.transport.client` and `fedstack --help` work, and
none of the extras' packages is installed), then measured: the disk usage of its site-packages folder (as `du`
counts it: allocated blocks) in MB (10^6 bytes), pip's own few MB included in both, and its largest packages.
The versions are pinned by the lock files where they list a package (`-c requirements.lock -c
requirements-ray.lock`, without their hashes), so the figures are those of `make setup`'s versions; pip's
configuration decides where packages come from (torch: the CPU build). Takes minutes: the full environment
downloads and unpacks about 2 GB.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXTRA_PACKAGES = ("torch", "tenseal", "opacus", "dp_accounting", "ray", "matplotlib", "sklearn", "scipy", "pandas",
                  "safetensors", "onnx", "onnxruntime", "keras")
ENVIRONMENTS = {"core": "", "full": "[all]"}


def disk_usage(path: Path) -> int:
    """Bytes allocated to the files under `path`, each inode once (as `du -s` counts)."""
    seen, total = set(), 0
    for folder, _, files in os.walk(path):
        for name in files:
            st = os.lstat(os.path.join(folder, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def constraints(workdir: Path) -> list[str]:
    """`-c FILE` for each lock file, its hashes left out (pip takes no hashes in a constraints file)."""
    args = []
    for lock in ("requirements.lock", "requirements-ray.lock"):
        source = ROOT / lock
        if not source.is_file():
            continue
        pins = [line.split()[0] for line in source.read_text().splitlines()
                if re.match(r"^[A-Za-z0-9][\w.\-]*==\S+", line)]
        target = workdir / f"{lock}.constraints"
        target.write_text("\n".join(pins) + "\n")
        args += ["-c", str(target)]
    return args


def site_packages(venv: Path) -> Path:
    (found,) = venv.glob("lib/python*/site-packages")
    return found


def build(name: str, workdir: Path, pins: list[str]) -> tuple[Path, float]:
    """A fresh venv `workdir/name` with fedstack`ENVIRONMENTS[name]` installed: (its site-packages, seconds)."""
    venv = workdir / name
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    pip = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *pins,
                          f"{ROOT}{ENVIRONMENTS[name]}"], capture_output=True, text=True)
    if pip.returncode:  # its warnings (a configured index without some package) only when it fails
        sys.exit(f"pip install '.{ENVIRONMENTS[name]}' failed:\n{pip.stdout}{pip.stderr}")
    return site_packages(venv), time.perf_counter() - started


def check_core(venv: Path) -> None:
    """The core environment has none of the extras' packages, imports the client and runs the CLI."""
    python, cli = venv / "bin" / "python", venv / "bin" / "fedstack"
    probe = ("import importlib.util; print(' '.join(m for m in %r if importlib.util.find_spec(m)))"
             % (EXTRA_PACKAGES,))
    present = subprocess.run([str(python), "-c", probe], check=True, capture_output=True, text=True).stdout.split()
    if present:
        sys.exit(f"the core environment has extras' packages: {present}")
    subprocess.run([str(python), "-c", "import fedstack, fedstack.transport.client"], check=True)
    subprocess.run([str(cli), "--help"], check=True, capture_output=True)


def largest(path: Path, count: int = 6) -> list[tuple[str, int]]:
    """The `count` largest top-level entries of a site-packages folder (the packages' own folders)."""
    sizes = []
    for entry in path.iterdir():
        if entry.name.endswith((".dist-info", ".pth")) or entry.name == "__pycache__":
            continue
        sizes.append((entry.name, disk_usage(entry) if entry.is_dir() else os.lstat(entry).st_blocks * 512))
    return sorted(sizes, key=lambda item: -item[1])[:count]


def mb(n: int) -> str:
    return f"{n / 1e6:,.0f} MB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=sorted(ENVIRONMENTS), help="build and measure one environment")
    parser.add_argument("--keep", help="build in this folder and leave the environments there")
    parser.add_argument("--no-constraints", action="store_true", help="let pip choose the newest versions")
    args = parser.parse_args()
    names = [args.only] if args.only else list(ENVIRONMENTS)
    with tempfile.TemporaryDirectory(prefix="fedstack-env-") as tmp:
        workdir = Path(args.keep) if args.keep else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        pins = [] if args.no_constraints else constraints(workdir)
        sizes = {}
        for name in names:
            packages, seconds = build(name, workdir, pins)
            if name == "core":
                check_core(packages.parent.parent.parent)
            sizes[name] = disk_usage(packages)
            top = ", ".join(f"{entry} {mb(size)}" for entry, size in largest(packages))
            print(f"{name:4}  pip install '.{ENVIRONMENTS[name]}'  site-packages {mb(sizes[name]):>9}  "
                  f"(built in {seconds:.0f} s; largest: {top})", flush=True)
        if len(sizes) == 2:
            added = mb(sizes["full"] - sizes["core"])
            print(f"full / core = {sizes['full'] / sizes['core']:.1f}×; the extras add {added}")


if __name__ == "__main__":
    main()
