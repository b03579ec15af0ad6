"""A FastAPI app that enqueues tasks and reports them without blocking its event loop.
Serve it with `uvicorn fastapi_app:app`; run its tasks with `ferroq worker fastapi_app:q`."""

import ferroq
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

q = ferroq.Queue("app.db")
app = FastAPI()


@q.task(name="resize")
def resize(url: str, width: int) -> dict[str, object]:
    return {"url": url, "width": width, "bytes": 1234}


class ResizeRequest(BaseModel):
    url: str
    width: int


@app.post("/resize", status_code=202)
async def enqueue_resize(request: ResizeRequest) -> dict[str, int]:
    handle = await resize.aenqueue(request.url, request.width)  # durable when it returns
    return {"id": handle.id}


@app.get("/tasks/{task_id}")
async def task_status(task_id: int, wait: float = 0.0) -> dict[str, object]:
    """The task's status and result; with ?wait=S, first waits up to S seconds for it to finish."""
    handle = q.handle(task_id)
    try:
        if wait > 0:
            try:
                await handle.aresult(timeout=min(wait, 30.0))
            except (ferroq.ResultTimeout, ferroq.TaskFailed, ferroq.TaskCancelled):
                pass  # the status says which
        info = await handle.ainfo()
    except ferroq.UnknownTask:
        raise HTTPException(404, f"no task {task_id}") from None
    except ferroq.InvalidArgument as e:
        raise HTTPException(422, str(e)) from None
    error = info.last_error.message if info.last_error else None
    return {"id": info.id, "status": info.status, "result": info.result, "error": error}
