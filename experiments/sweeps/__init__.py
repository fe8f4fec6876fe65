"""Sweep files for `python -m launch.sweep --sweep=experiments/sweeps/<name>.py --workdir=...`.

Each file defines `get_sweep() -> (base config, [launch.Member, ...])`; `launch` explains the
format and builds IsoFLOP designs (`launch.isoflop_members`).
"""
