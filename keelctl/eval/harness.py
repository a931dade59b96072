"""Run lm-eval tasks on a KeelLM: task lookup (bundled first), clear errors, the results layout.

Indexing lm-eval's ~15k task YAMLs takes seconds, so a request for bundled tasks only uses an
index of keelctl/eval/tasks alone; each index is built once per process.
"""

from __future__ import annotations

from functools import lru_cache

from keelctl.errors import KeelError
from keelctl.eval.tasks import BUNDLED_TAG, BUNDLED_TASKS, TASKS_DIR

RESULT_KEYS = ("results", "groups", "versions", "n-shot", "higher_is_better", "n-samples")


def parse_tasks(spec: str | None) -> list[str]:
    names = [t.strip() for t in (spec or "").split(",") if t.strip()]
    if spec is not None and not names:
        raise KeelError(f"--tasks {spec!r} names no task; give comma-separated task names")
    return list(dict.fromkeys(names))


@lru_cache(maxsize=2)
def task_manager(bundled_only: bool):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS_DIR), include_defaults=not bundled_only)


def resolve_tasks(names: list[str]):
    """The TaskManager that knows every name in `names`, or a one-line KeelError."""
    bundled = task_manager(True)
    if all(name in bundled.all_tasks for name in names):
        return bundled
    manager = task_manager(False)
    unknown = [name for name in names if name not in manager.all_tasks]
    if unknown:
        raise KeelError(
            f"unknown task(s) {', '.join(unknown)}; bundled offline tasks: "
            f"{', '.join(BUNDLED_TASKS)} (tag {BUNDLED_TAG}); list the harness's tasks with "
            "`lm_eval ls tasks`"
        )
    return manager


def load_tasks(names: list[str], manager) -> list:
    """Task (or group) objects, one name at a time so a missing dataset names its task."""
    from datasets.exceptions import DatasetNotFoundError

    objects = []
    for name in names:
        try:
            loaded = manager.load(name)
        except (OSError, DatasetNotFoundError) as e:
            reason = " ".join(str(e).split("\n")[0].split())
            raise KeelError(
                f"task {name}: its dataset is not available here ({reason}); run once where "
                "the Hugging Face hub is reachable to cache it, or use the bundled offline "
                f"tasks ({', '.join(BUNDLED_TASKS)})"
            ) from None
        if name in loaded["groups"]:
            objects.append(loaded["groups"][name])
        else:  # a task, or a tag that expanded to tasks
            objects.extend(loaded["tasks"].values())
    return objects


def run_tasks(
    lm, names: list[str], *, num_fewshot: int | None = None, limit: float | None = None
) -> dict:
    """lm-eval's simple_evaluate on `lm`; returns its results layout (results[task][metric],
    versions, n-shot, higher_is_better, n-samples; groups when a group was asked for)."""
    from lm_eval import simple_evaluate

    manager = resolve_tasks(names)
    out = simple_evaluate(
        model=lm,
        tasks=load_tasks(names, manager),
        task_manager=manager,
        num_fewshot=num_fewshot,
        limit=limit,
        log_samples=False,
    )
    return {key: out[key] for key in RESULT_KEYS if key in out}
