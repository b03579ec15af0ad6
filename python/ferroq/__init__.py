"""ferroq: a durable, embedded task queue for Python with a Rust engine.

q = ferroq.Queue("app.db")

@q.task(max_attempts=5)
def resize(path: str, width: int) -> dict: ...

resize.enqueue("a.png", width=200)
ferroq.Worker(q).run(until_idle=True)
"""

from . import _core
from .context import TaskContext, current_task
from .errors import (
    CorruptDatabase,
    CorruptTask,
    DatabasePathError,
    DiskFull,
    Fail,
    FerroqError,
    ForeignDatabase,
    InfrastructureError,
    InvalidArgument,
    InvalidTransition,
    LeaseLost,
    PayloadError,
    PayloadTooLarge,
    ProcessCrashed,
    RateLimited,
    ResultTimeout,
    Retry,
    SchemaTooNew,
    StorageError,
    TaskCancelled,
    TaskFailed,
    TaskNotImportable,
    TransientError,
    UnknownTask,
    UnknownTaskName,
    ValidationError,
)
from .groups import Circuit, Event, GroupState, ResourceGroup
from .forecast import Forecast, ForecastPoint
from .observe import (
    GroupMetrics,
    Health,
    HealthCheck,
    MissingProcessor,
    Observability,
    Percentiles,
    Subscription,
    WorkerState,
)
from .info import STATUSES, TaskError, TaskInfo, Transition
from .policies import Cache, CircuitBreaker, PriorityAging, Retention, RetryPolicy, Throttle
from .queue import Queue
from .serializers import JsonSerializer, Serializer
from .task import AsyncTask, BatchTask, BoundTask, Task, TaskBase, TaskCall, TaskHandle, TaskOptions
from .worker import Autoscale, RunOutcome, Worker, WorkerStats

__version__: str = _core.__version__

#: Lowest and highest accepted priority; higher runs first.
PRIORITY_MIN: int = _core.PRIORITY_MIN
PRIORITY_MAX: int = _core.PRIORITY_MAX

__all__ = [
    "Autoscale",
    "AsyncTask",
    "BatchTask",
    "BoundTask",
    "Cache",
    "Circuit",
    "CircuitBreaker",
    "CorruptDatabase",
    "CorruptTask",
    "Forecast",
    "ForecastPoint",
    "ForeignDatabase",
    "DatabasePathError",
    "DiskFull",
    "Event",
    "Fail",
    "FerroqError",
    "GroupMetrics",
    "GroupState",
    "Health",
    "HealthCheck",
    "InfrastructureError",
    "InvalidArgument",
    "InvalidTransition",
    "JsonSerializer",
    "LeaseLost",
    "Observability",
    "PRIORITY_MAX",
    "PRIORITY_MIN",
    "PayloadError",
    "PayloadTooLarge",
    "Percentiles",
    "PriorityAging",
    "ProcessCrashed",
    "Queue",
    "RateLimited",
    "ResourceGroup",
    "ResultTimeout",
    "Retention",
    "Retry",
    "RetryPolicy",
    "STATUSES",
    "SchemaTooNew",
    "Serializer",
    "StorageError",
    "Subscription",
    "Task",
    "TaskBase",
    "TaskCall",
    "TaskCancelled",
    "TaskContext",
    "TaskError",
    "TaskFailed",
    "TaskHandle",
    "TaskInfo",
    "TaskNotImportable",
    "TaskOptions",
    "Throttle",
    "TransientError",
    "Transition",
    "UnknownTask",
    "UnknownTaskName",
    "ValidationError",
    "RunOutcome",
    "Worker",
    "WorkerState",
    "MissingProcessor",
    "WorkerStats",
    "current_task",
    "__version__",
]
