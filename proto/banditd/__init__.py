"""banditd: a gRPC decision server for advertising (bandit policies, late rewards, pacing).

Installed packages: ``banditd.server`` (the service), ``banditd.kernels`` (Numba kernels),
``banditd.clients`` (Python clients), ``banditd.decision.v1`` (the public contract's
generated code) and ``banditd.storage.v1`` / ``banditd.replication.v1`` (internal formats).
"""

from importlib import metadata

try:
    __version__ = metadata.version("banditd")
except metadata.PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0+unknown"
