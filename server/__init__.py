"""The banditd server (``banditd.server``).

Packages by architecture: ``api`` (gRPC handlers, ``create_server``), ``state`` (experiments,
decisions, the state machine that applies records), ``storage`` (log, snapshots, recovery),
``ads`` (pacing, budget allocation) and ``cluster`` (several processes). ``settings`` is the one
settings object, ``cli`` the ``banditd`` command.
"""
