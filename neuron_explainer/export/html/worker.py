"""A page-writing process: `python -m neuron_explainer.export.html.worker` reads one pickled `WorkerJob` on stdin
(sent by build_site, never by anyone else), writes its pages and reports one JSON line per finished chunk on
stdout; a user error is reported as {"error": message}."""

from __future__ import annotations

import json
import pickle
import sys

from neuron_explainer.core.errors import UserError
from neuron_explainer.export.html.site import WorkerJob, run_worker_job


def main() -> int:
    """Run the job on stdin; exit code 0 when every page was written or a user error was reported."""
    job = pickle.load(sys.stdin.buffer)
    if not isinstance(job, WorkerJob):
        raise TypeError(f"expected a WorkerJob on stdin, got {type(job).__name__}")
    try:
        for progress in run_worker_job(job):
            sys.stdout.write(json.dumps(progress) + "\n")
            sys.stdout.flush()
    except UserError as exc:
        sys.stdout.write(json.dumps({"error": str(exc)}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
