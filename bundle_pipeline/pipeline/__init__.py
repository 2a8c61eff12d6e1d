"""The only place that schedules: task DAGs (networkx) executed by dask, and build reports."""

from .build import BuildReport, build, build_many, status

__all__ = ["BuildReport", "build", "build_many", "status"]
