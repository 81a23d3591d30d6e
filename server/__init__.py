"""banditd server: grpc.aio service, experiment registry, decision store, settings, CLI."""
