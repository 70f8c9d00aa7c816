"""Where a study's cells run: in this process (or ``--parallel`` local processes), or as jobs through submitit.

A study (a sweep, the demo, the downstream study) is a list of engine runs, each in its own run directory;
some start from another's weights (the arms from their baseline). A *launcher* only decides where they run:

- :class:`LocalLauncher` (``--launcher local``, the default): today's runner, in this process or in
  ``--parallel N`` spawned processes;
- :class:`SubmititLauncher` (``--launcher slurm`` or ``submitit-local``): every cell is a job submitted through
  `submitit <https://github.com/facebookincubator/submitit>`_; on Slurm the cells that share their prerequisites
  go out as one job array (throttled by ``--array-parallelism``) that starts ``afterok`` those prerequisites;
  ``submitit-local`` runs the same job objects as local processes (prerequisites first, then at most
  ``array_parallelism`` at a time).

**The filesystem is the truth.** A cell is done when its run directory holds its ``done.json``; submitting
again skips it, and resumes an interrupted cell from its ``last.pt`` (the engine's exact resume). The launcher's
own bookkeeping lives in ``OUT/launch/``: ``submission.json`` (the last submission's job ids),
``cells/<cell>.json`` (what each job reported: running on which node, requeued, failed and why) and ``logs/``
(submitit's pickles and each job's stdout/stderr). ``refconv sweep status OUT`` reads it back.

**Preemption and time limits.** Slurm sends ``SIGUSR2`` (submitit's ``--signal``) 90 s before the time limit or on
preemption. A :class:`CellJob` turns it into the engine's own stop request (the path Ctrl-C takes: stop at the
step boundary, save ``last.pt``), then hands over to submitit's handler, which calls :meth:`CellJob.checkpoint`
and requeues the job; the requeued job resumes bit-identically from that checkpoint. A cell requeued more than
``max_requeues`` times is marked failed with that reason.

**Dependencies** are inferred: a cell whose starting weights lie in another cell's run directory runs after it
(a sweep's arms after its baseline, or after their own seed's baseline), so no study declares them.

The package's rooms: :mod:`.options` (resources from a YAML block and flags), :mod:`.state` (the cells, their
order and their state files), :mod:`.job` (one cell's job and its preemption), :mod:`.submitit_launcher` and
:mod:`.launchers` (where the cells run), :mod:`.status` (what ``refconv sweep status`` shows). A cell is any object
with a ``key`` and a ``config``; :class:`LaunchCell` is the plain one.
"""

from .job import CellJob
from .launchers import Launcher, LocalLauncher, make_launcher, run_with_launcher
from .options import LAUNCHERS, RESOURCE_KEYS, LaunchOptions, launch_options, parse_launcher_block
from .state import (LAUNCH_DIR, SUBMISSION_FILE, CellLike, LaunchCell, LaunchError, cell_done, in_waves,
                    infer_dependencies, read_state, state_path, write_state)
from .status import cell_states, squeue, status_text
from .submitit_launcher import SubmititLauncher

__all__ = ["LAUNCHERS", "LaunchError", "LaunchCell", "LaunchOptions", "Launcher", "LocalLauncher",
           "SubmititLauncher", "CellJob", "make_launcher", "launch_options", "parse_launcher_block",
           "infer_dependencies", "in_waves", "cell_states", "LAUNCH_DIR", "run_with_launcher", "status_text", "squeue", "cell_done",
           "state_path", "read_state", "write_state", "SUBMISSION_FILE", "RESOURCE_KEYS", "CellLike"]
