"""What ``refconv sweep status`` shows of a study's cells: the filesystem's answer (finished or not), each job's
own report, and what Slurm still has queued or running (:func:`squeue`)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...runlayout import METRICS_FILE
from .state import LAUNCH_DIR, SUBMISSION_FILE, CellLike, cell_done, read_state, state_path

__all__ = ["squeue", "cell_states", "status_text"]


def squeue(job_ids: Sequence[str]) -> dict[str, dict[str, str]]:
    """``{job id: {"state", "node", "reason"}}`` of the jobs Slurm still knows as queued or running (array
    tasks one by one, ``123_4``)."""
    if not job_ids or shutil.which("squeue") is None:
        return {}
    base = sorted({j.split("_")[0] for j in job_ids})
    try:
        proc = subprocess.run(["squeue", "-h", "-r", "-j", ",".join(base), "-o", "%i|%T|%N|%r"],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    out = {}
    for line in proc.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 4:
            out[parts[0]] = {"state": parts[1], "node": parts[2], "reason": parts[3]}
    return out


def cell_states(cells: Sequence[CellLike], study_out: Path) -> list[dict[str, Any]]:
    """Each cell as ``refconv sweep status`` shows it: done / running (job, node, epoch) / queued / requeued /
    failed (reason, last log line) / interrupted / not submitted."""
    sub = read_state(study_out / LAUNCH_DIR / SUBMISSION_FILE)
    jobs = sub.get("jobs", {})
    live = squeue(list(jobs.values())) if sub.get("launcher") == "slurm" else {}
    rows = []
    for c in cells:
        st = read_state(state_path(study_out, c.key))
        job_id = st.get("job_id") or jobs.get(c.key)
        run_dir = c.config.run_dir()
        epochs = _epochs_done(run_dir)
        row = {"cell": c.key, "run_dir": str(run_dir), "job_id": job_id, "node": st.get("node"),
               "epoch": epochs, "epochs": c.config.epochs, "requeues": st.get("requeues", 0), "reason": None}
        if cell_done(c.config):
            row["status"] = "done"
        elif job_id and job_id in live:
            q = live[job_id]
            row["status"] = "running" if q["state"] in ("RUNNING", "COMPLETING") else "queued"
            row["node"] = q["node"] or row["node"]
            if row["status"] == "queued":
                row["reason"] = q["reason"]
        elif st.get("status") in ("failed", "interrupted"):
            row["status"] = st["status"]
            row["reason"] = st.get("reason")
        elif st.get("status") == "running" and sub.get("launcher") != "slurm":
            row["status"] = "running"
        elif st:
            row["status"] = "failed" if sub.get("launcher") == "slurm" else st.get("status", "unknown")
            row["reason"] = st.get("reason") or "its job ended without finishing the cell"
        else:
            row["status"] = "not submitted"
        if row["status"] in ("failed", "interrupted"):
            row["last_log_line"] = _last_line(st.get("log")) or _last_line(run_dir / "log.txt")
        rows.append(row)
    return rows


def _epochs_done(run_dir: Path) -> int:
    try:
        return sum(1 for line in (run_dir / METRICS_FILE).read_text().splitlines() if line.strip())
    except OSError:
        return 0


def _last_line(path: Any) -> str | None:
    if not path:
        return None
    try:
        lines = [ln for ln in Path(path).read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return None
    return lines[-1].strip()[:200] if lines else None


def status_text(rows: Sequence[dict[str, Any]], resubmit: str) -> str:
    """The status table as text, with a count per status and how to resubmit failed cells."""
    lines = []
    for r in rows:
        s = r["status"]
        detail = ""
        if s == "running":
            detail = f"job {r['job_id']} on {r['node'] or '?'}, epoch {r['epoch']}/{r['epochs']}"
        elif s == "queued":
            detail = f"job {r['job_id']}" + (f" ({r['reason']})" if r.get("reason") else "")
        elif s in ("failed", "interrupted"):
            detail = f"job {r['job_id']}: {r['reason']}" + (f" | log: {r['last_log_line']}" if r.get("last_log_line")
                                                            else "")
        if r.get("requeues"):
            detail += f" [requeued {r['requeues']}x]"
        lines.append(f"{r['cell']:<40} {s:<13} {detail}".rstrip())
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()))
    if counts.get("failed") or counts.get("interrupted") or counts.get("not submitted"):
        lines.append(f"resubmit (finished cells are kept, interrupted ones resume): {resubmit}")
    return "\n".join(lines)
