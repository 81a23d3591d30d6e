"""banditd's benchmarks and load tests. Run each from the repository root as a module,
e.g. ``python -m benchmarks.kernel_bench``; ``make bench`` and ``make load`` run them all."""
