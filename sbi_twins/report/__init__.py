"""Layer 7, reports: figures drawn from the computing layers' results."""

from .figures import plot_demo

__all__ = ["plot_demo"]
