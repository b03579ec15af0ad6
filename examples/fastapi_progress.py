"""A FastAPI page with a live progress bar for a task its endpoint enqueued. Serve it with
`uvicorn fastapi_progress:app`; run its tasks with `ferroq worker fastapi_progress:q`."""

import time

import ferroq
from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from ferroq.web import create_app

q = ferroq.Queue("reports.db")
app = FastAPI()
# Only the task streams and ferroq-progress.js. Task ids are sequential: a stream shows its
# task's result to whoever asks, so hide what is private (redact=) or guard the mount.
app.mount("/ferroq", create_app(q, streams_only=True))


@q.task(name="report")
def report(pages: int) -> str:
    for page in range(pages):
        time.sleep(0.05)
        ferroq.current_task().progress((page + 1) / pages, f"page {page + 1} of {pages}")
    return f"report-{pages}.pdf"


@app.post("/reports", status_code=202)
async def start_report(pages: int = 20) -> dict[str, int]:
    return {"id": (await report.aenqueue(pages)).id}


PAGE = """<!doctype html>
<progress id="bar" max="1" value="0"></progress> <span id="text">waiting for a worker</span>
<script src="/ferroq/static/ferroq-progress.js"></script>
<script>
  var text = document.getElementById("text");
  FerroqProgress.watchTask("/ferroq", TASK_ID, {
    onProgress: function (fraction, message) {
      document.getElementById("bar").value = fraction;
      text.textContent = message || "";                 // textContent: task data is never HTML
    },
    onDone: function (outcome) {
      text.textContent = outcome.status === "completed" ? "ready: " + outcome.result : outcome.status;
    },
    onError: function (err) { text.textContent = err.error; },              // e.g. no such task (404)
    onState: function (state, info) {                                      // live, reconnecting, offline
      if (state === "reconnecting") { text.textContent = "reconnecting in " + info.delay + "s"; }
    }
  });
</script>
"""


@app.get("/reports/{task_id}", response_class=HTMLResponse)
async def report_page(task_id: int) -> str:
    return PAGE.replace("TASK_ID", str(task_id))
