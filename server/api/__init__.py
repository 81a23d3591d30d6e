"""The gRPC face of banditd: ``create_server``, the DecisionService handlers by resource
(experiments, decisions, analytics, pacing), the generic handler that maps errors to status
codes, metrics and the hand-written wire encoding of SelectArm's responses."""
