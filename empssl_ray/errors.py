"""The one base class of errors a user causes and can fix (config, data, divergence, storage).

Job entrypoints print such an error as one line and exit with code 2; the Ray adapters end a run
at once on one instead of retrying it, since a rerun would meet it again. Anything else is a bug
or a machine failure and keeps its traceback.
"""

from __future__ import annotations

import re
from typing import Any


class UserError(Exception):
    """An error whose message says what is wrong and how to fix it, in one line."""


class StorageError(UserError, OSError):
    """A location (local folder or s3:// / gs:// URI) that cannot be read or written."""


def _nested(exc: BaseException | None) -> list[Any]:
    """`exc` and every exception inside it: causes, contexts, and the ones Ray wraps (a remote
    error's `cause`, Train's per-rank `worker_failures` and their `_base_exc`)."""
    seen: set[int] = set()
    found, todo = [], [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        found.append(e)
        todo += [
            e.__cause__,
            e.__context__,
            getattr(e, "cause", None),
            getattr(e, "_base_exc", None),
            *getattr(e, "worker_failures", {}).values(),
        ]
    return found


def find_user_error(exc: BaseException | None) -> UserError | None:
    """Our user-caused error inside `exc`, also when Ray wrapped it (a worker's error arrives as
    a RayTaskError that is an instance of the original class, inside Train's WorkerGroupError)."""
    for e in _nested(exc):
        # A RayTaskError is an instance of the class it wraps: its `cause` has the clean message.
        if isinstance(e, UserError) and not isinstance(getattr(e, "cause", None), UserError):
            return e
    return None


def _user_error_names() -> list[str]:
    names, todo = [], [UserError]
    while todo:
        cls = todo.pop()
        names.append(cls.__name__)
        todo += cls.__subclasses__()
    return names


def user_error_line(exc: BaseException) -> str | None:
    """The one-line message of a user-caused error, or None for anything else (a bug)."""
    found = find_user_error(exc)
    if type(found) is UserError:  # a line found in a remote error's text, re-raised as is
        return str(found)
    if found is not None:
        message = str(found).splitlines()[0] if str(found) else ""
        # A RayTaskError subclass carries the original's name beside its own.
        name = next(
            (c.__name__ for c in type(found).__mro__ if c.__name__ in _user_error_names()),
            type(found).__name__,
        )
        return f"{name}: {message}"
    # Ray ships some remote errors as text only (Ray Data's, inside a worker's traceback text,
    # which the outer message may cut short): find our error's line in any of them.
    names = "|".join(_user_error_names())
    lines = [line for e in _nested(exc) for line in re.findall(rf"\b((?:{names}): .+)", str(e))]
    return lines[-1].strip() if lines else None
