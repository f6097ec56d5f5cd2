"""atriggers: run work when a combination of events has happened.

Fire named triggers into per-session state; a configuration decides which tasks
run when; runners execute them in-process, on Celery or on AWS Lambda.
"""

from .config import TaskConfig, parse_configuration, validate_configuration
from .context import Retry, Skip, TaskContext
from .errors import (
    ConcurrencyError,
    ConfigurationError,
    DispatchError,
    IdempotencyConflict,
    InstanceLost,
    InstanceNotFound,
    InvalidInput,
    InvalidStatus,
    MaxRetriesExceeded,
    Problem,
    SessionChanged,
    StorageError,
    TriggerError,
    UnknownManager,
    UnknownRunner,
    UnknownStorage,
    UnknownTask,
    with_context,
)
from .explain import Explanation
from .instance import Status, TaskInstance
from .manager import TriggerManager, get_manager_class, register_manager
from .preview import FirePreview
from .registry import Registry
from .state import SessionState
from .sweeper import Sweeper
from .tasks import TaskDefinition, TaskRegistry, task

__version__ = "0.1.0"

__all__ = [
    "ConcurrencyError",
    "ConfigurationError",
    "DispatchError",
    "Explanation",
    "FirePreview",
    "IdempotencyConflict",
    "InstanceLost",
    "InstanceNotFound",
    "InvalidInput",
    "InvalidStatus",
    "MaxRetriesExceeded",
    "Problem",
    "Registry",
    "Retry",
    "SessionChanged",
    "SessionState",
    "Skip",
    "Status",
    "StorageError",
    "Sweeper",
    "TaskConfig",
    "TaskContext",
    "TaskDefinition",
    "TaskInstance",
    "TaskRegistry",
    "TriggerError",
    "TriggerManager",
    "UnknownManager",
    "UnknownRunner",
    "UnknownStorage",
    "UnknownTask",
    "get_manager_class",
    "parse_configuration",
    "register_manager",
    "task",
    "validate_configuration",
    "with_context",
]
