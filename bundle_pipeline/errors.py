"""BundleError: every failure a user can cause, with a status code and the place it names."""

from __future__ import annotations

STATUSES = (
    "PARAM_INVALID",
    "GRAPH_INVALID",
    "UNSUPPORTED_OP",
    "VARIABLE_CONFLICT",
    "OPTION_INVALID",
    "IO_ERROR",
    "BUNDLE_CORRUPT",
    "RUNTIME_ERROR",
)
MAX_MESSAGE_CHARS = 2000  # a message quoting a hostile value (a huge option, a long name) stays one short line


class BundleError(Exception):
    """A user-facing failure: ``status`` is one of STATUSES, ``where`` names the file/graph/node/option.

    ``str(err)`` is one line: ``STATUS: where: message``.
    """

    status = "PARAM_INVALID"

    def __init__(self, message: str, where: str | None = None, status: str | None = None):
        if status is not None:
            self.status = status
        if self.status not in STATUSES:
            raise ValueError(f"unknown BundleError status {self.status!r}")
        self.message = _clip(" ".join(str(message)[: 4 * MAX_MESSAGE_CHARS].split()))
        # a place is a path or a name: kept as is, but a newline in a hostile file name must not break the line
        self.where = None if where is None else _clip("".join(c if c.isprintable() else "?" for c in str(where)))
        super().__init__(self.one_line())

    def __reduce__(self):
        # keep status and place when a worker process sends the error back (dask pickles exceptions)
        return (_rebuild_error, (type(self), self.message, self.where, self.status))

    def one_line(self) -> str:
        place = f"{self.where}: " if self.where else ""
        return f"{self.status}: {place}{self.message}"


def _clip(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 5] + " ..."


def _rebuild_error(cls: type, message: str, where: str | None, status: str) -> BundleError:
    return cls(message, where, status)


class ParamInvalid(BundleError):
    status = "PARAM_INVALID"


class GraphInvalid(BundleError):
    status = "GRAPH_INVALID"


class UnsupportedOp(BundleError):
    status = "UNSUPPORTED_OP"


class VariableConflict(BundleError):
    status = "VARIABLE_CONFLICT"


class OptionInvalid(BundleError):
    status = "OPTION_INVALID"


class BundleIOError(BundleError):
    status = "IO_ERROR"


class BundleCorrupt(BundleError):
    status = "BUNDLE_CORRUPT"


class RuntimeFailure(BundleError):
    """Bad feeds or unset variables at run time, and kernel failures (``while executing <node>``)."""

    status = "RUNTIME_ERROR"
