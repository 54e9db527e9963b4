"""The three tasks Recur trains: their data, model, loss and metrics."""

from trainer.tasks.autocomplete import AutocompleteTask
from trainer.tasks.base import Task, TaskData
from trainer.tasks.sentiment import SentimentTask
from trainer.tasks.translation import TranslationTask

TASKS: dict[str, type[Task]] = {
    "translation": TranslationTask,
    "sentiment": SentimentTask,
    "autocomplete": AutocompleteTask,
}


def get_task(name: str) -> Task:
    """The task called `name`."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {', '.join(TASKS)}")
    return TASKS[name]()


__all__ = ["TASKS", "Task", "TaskData", "get_task"]
