"""FinSecure Nexus: cyber, fraud and geo signals correlated on one entity graph, explained."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("finsecure")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
