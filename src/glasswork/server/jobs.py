"""Long work started from a page (attribution of a new prompt) runs in a background thread; the page polls the job's
progress, read from the progress bars the work already opens (`glasswork.progress.watch`)."""
from __future__ import annotations

import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field

from ..io import GlassworkError
from ..progress import watch


@dataclass
class Job:
    id: str
    kind: str
    state: str = "queued"  # queued | running | done | failed
    description: str = ""
    completed: float = 0
    total: float | None = None
    result: dict = field(default_factory=dict)
    error: str = ""
    started: float = field(default_factory=time.time)
    finished: float | None = None

    def public(self) -> dict:
        elapsed = (self.finished or time.time()) - self.started
        return {"id": self.id, "kind": self.kind, "state": self.state, "description": self.description,
                "completed": self.completed, "total": self.total, "seconds": round(elapsed, 2),
                "result": self.result, "error": self.error}


class Jobs:
    """One worker thread at a time (the CPU is the limit); others wait in line."""

    def __init__(self, keep: int = 50):
        self._jobs: dict[str, Job] = {}
        self.lock = threading.Lock()
        self._run_lock = threading.Lock()
        self.keep = keep

    def start(self, kind: str, fn) -> Job:
        """Run fn() -> dict in a thread; its progress bars update the job."""
        job = Job(uuid.uuid4().hex[:12], kind)
        with self.lock:
            self._jobs[job.id] = job
            for old in list(self._jobs)[:-self.keep]:
                if self._jobs[old].state in ("done", "failed"):
                    del self._jobs[old]

        def tell(description, completed, total):
            job.description, job.completed, job.total = description, completed, total

        def run():
            with self._run_lock:
                job.state, job.started = "running", time.time()
                try:
                    with watch(tell):
                        job.result = fn()
                    job.state = "done"
                except GlassworkError as e:
                    job.state, job.error = "failed", str(e)
                except Exception as e:  # a bug, not bad input: keep the server up and show what happened
                    job.state, job.error = "failed", f"{type(e).__name__}: {e}"
                    traceback.print_exc()
                job.finished = time.time()
        threading.Thread(target=run, name=f"glasswork-{kind}-{job.id}", daemon=True).start()
        return job

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)
