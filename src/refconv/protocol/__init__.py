"""The paper's comparison protocol as code: cells of engine runs from one baseline, over seeds.

A *study* is a baseline run plus arms (RefConv settings and the controls ``continue`` / ``finetune``),
each run for several seeds from the same baseline checkpoint with the same budget. Every cell is a normal
engine run in its own directory, so a study is cached, resumable and skipped cell by cell. ``refconv demo``
and ``refconv sweep`` are both studies.
"""

from .cells import Arm, Cell, cell_config, run_cell, run_cells
from .demo import PROFILES, DemoProfile, DemoResult, profile, run_demo
from .sweep import SweepResult, SweepSpec, load_sweep, parse_sweep, run_sweep
from .tables import arm_table

__all__ = ["Arm", "Cell", "cell_config", "run_cell", "run_cells", "arm_table", "PROFILES", "DemoProfile",
           "DemoResult", "profile", "run_demo", "SweepSpec", "SweepResult", "load_sweep", "parse_sweep", "run_sweep"]
