"""Launcher flags shared by ``refconv sweep``, ``refconv downstream-study`` and ``refconv demo``
(:mod:`refconv.protocol.launch`; docs/cluster.md)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any


def add_launcher_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("where the cells run (docs/cluster.md)")
    g.add_argument("--launcher", choices=("local", "submitit-local", "slurm"), default="local",
                   help="local: this machine (default); slurm: every cell a Slurm job through submitit (pip install "
                        "'refconv[cluster]'); submitit-local: the same jobs as local processes")
    g.add_argument("--array-parallelism", type=int, default=None, metavar="N",
                   help="at most N cells of a job array run at once (default 64)")
    g.add_argument("--partition", default=None, help="Slurm partition")
    g.add_argument("--account", default=None, help="Slurm account")
    g.add_argument("--qos", default=None, help="Slurm quality of service")
    g.add_argument("--time", type=int, default=None, metavar="MINUTES",
                   help="time limit per job in minutes (default 1440); a cell that reaches it checkpoints and "
                        "requeues itself")
    g.add_argument("--cpus-per-task", type=int, default=None, help="CPUs per process (default 8)")
    g.add_argument("--gpus-per-node", type=int, default=None,
                   help="GPUs per node and cell (default 1; more runs the cell under DDP, one process per GPU)")
    g.add_argument("--nodes", type=int, default=None, help="nodes per cell (default 1)")
    g.add_argument("--mem-gb", type=float, default=None, help="memory per node in GB (default 32)")
    g.add_argument("--slurm-extra", action="append", default=None, metavar="KEY=VALUE",
                   help="another sbatch option, e.g. constraint=a100 (repeatable)")
    g.add_argument("--max-requeues", type=int, default=None,
                   help="a cell preempted or timed out more often than this is marked failed (default 3)")
    g.add_argument("--no-wait", action="store_true",
                   help="with --launcher slurm: return once submitted (then `refconv sweep status/report OUT`)")


def options_from_args(args: argparse.Namespace, block: Mapping[str, Any] | None = None) -> Any:
    """:class:`~refconv.protocol.launch.LaunchOptions` from the flags laid over a YAML ``launcher:`` block."""
    from ..protocol.launch import launch_options

    return launch_options(args.launcher, block, partition=args.partition, account=args.account, qos=args.qos,
                          time_min=args.time, cpus_per_task=args.cpus_per_task, gpus_per_node=args.gpus_per_node,
                          nodes=args.nodes, mem_gb=args.mem_gb, extra=args.slurm_extra,
                          array_parallelism=args.array_parallelism, max_requeues=args.max_requeues,
                          wait=False if args.no_wait else None)
