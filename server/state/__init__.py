"""Learned and configured state in memory: experiments (registry, policies, arrays), the
decision store, analyst computations over them, and the one function that applies every log
record (:mod:`banditd.server.state.machine`)."""
