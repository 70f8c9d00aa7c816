"""The paper's comparison protocol as code: cells of engine runs from one baseline, over seeds.

A *study* is a baseline run plus arms (RefConv settings and the controls ``continue`` / ``finetune``),
each run for several seeds from the same baseline checkpoint with the same budget. Every cell is a normal
engine run in its own directory, so a study is cached, resumable and skipped cell by cell. ``refconv demo``
and ``refconv sweep`` are both studies, as is the downstream study: each is a YAML file (:mod:`.spec`), plans its
cells once and runs them through :func:`.runner.execute` (here, in parallel processes, or on a cluster).
"""

from .cells import Arm, Cell, cell_config, run_cell, run_cells
from .demo import PROFILES, DemoProfile, DemoResult, load_profile, profile, run_demo
from .runner import StudyModels, execute
from .sweep import SweepResult, SweepSpec, load_sweep, parse_sweep, run_sweep
from .tables import arm_table

__all__ = ["Arm", "Cell", "cell_config", "run_cell", "run_cells", "execute", "StudyModels", "arm_table", "PROFILES",
           "DemoProfile", "DemoResult", "load_profile", "profile", "run_demo", "SweepSpec", "SweepResult", "load_sweep", "parse_sweep", "run_sweep"]
