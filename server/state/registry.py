"""All experiments held by this server, with their limits and lifecycle."""

from __future__ import annotations

import secrets

from banditd.decision.v1 import decision_pb2 as pb
from banditd.kernels.rng import jump_state
from banditd.server.errors import AlreadyExists, InvalidArgument, NotFound, ResourceExhausted, shown
from banditd.server.ids import check_experiment_id, check_new_arm_ids
from banditd.server.settings import Settings
from banditd.server.state.experiment import Experiment
from banditd.server.state.footprint import experiment_bytes, store_bytes
from banditd.server.state.policies import PolicySpec, resolve_policy
from banditd.storage.v1 import storage_pb2 as st


class ExperimentRegistry:
    """experiment_id -> Experiment, enforcing the configured limits."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._experiments: dict[str, Experiment] = {}
        self.next_uid = 1
        # Goes up on every change of which experiments exist or of their arms (and resets):
        # what was validated against the registry before is checked again after it.
        self.generation = 0
        # Which random stream of each experiment's seed this process draws from: worker i of
        # several draws from the seed's stream jumped i x 2**128 draws ahead, so no two
        # workers make the same draws.
        self.stream = 0

    def _uid(self) -> int:
        uid = self.next_uid
        self.next_uid += 1
        return uid

    def __len__(self) -> int:
        return len(self._experiments)

    def experiments(self) -> list[Experiment]:
        return list(self._experiments.values())

    def clear(self) -> None:
        self._experiments.clear()
        self.generation += 1

    def adopt(self, other: ExperimentRegistry) -> None:
        """Take over ``other``'s experiments (see :meth:`StateMachine.adopt`)."""
        self._experiments = other._experiments
        self.next_uid = max(self.next_uid, other.next_uid)
        self.generation = max(self.generation, other.generation) + 1

    def restore(self, config: pb.Experiment, uid: int) -> Experiment:
        """Re-create an experiment as it was, with incarnation ``uid`` (snapshots, and
        :meth:`apply_create`). No limit checks: it was accepted once, and lowering a limit must
        not lose data on restart."""
        copy = pb.Experiment()
        copy.CopyFrom(config)
        spec = resolve_policy(copy.policy, copy.reward_type, copy.context_dim)
        experiment = Experiment(copy, spec, uid, self.settings.propensity_draws,
                                self.settings.max_abs_value)
        self._measure(experiment)
        self.own_stream(experiment)
        self._experiments[copy.experiment_id] = experiment
        self.generation += 1
        self.next_uid = max(self.next_uid, uid + 1)
        return experiment

    def own_stream(self, experiment: Experiment) -> None:
        """Move ``experiment``'s random state to this process's stream (see ``stream``)."""
        if self.stream:
            experiment.rng = jump_state(experiment.rng, self.stream)

    def find(self, experiment_id: str) -> Experiment | None:
        """The experiment, or None."""
        return self._experiments.get(experiment_id)

    def get(self, experiment_id: str) -> Experiment:
        experiment = self._experiments.get(experiment_id)
        if experiment is None:
            check_experiment_id(experiment_id)  # a malformed id is INVALID_ARGUMENT
            raise NotFound(f"experiment '{experiment_id}' not found")
        return experiment

    def check_create(self, request: pb.Experiment) -> pb.Experiment:
        """Validate a new experiment; its record: the configuration with defaults filled in
        (a random seed when none is given). Changes nothing."""
        config = pb.Experiment()
        config.CopyFrom(request)
        check_experiment_id(config.experiment_id, "experiment.experiment_id")
        if config.experiment_id in self._experiments:
            raise AlreadyExists(f"experiment '{config.experiment_id}' already exists")
        if len(self._experiments) >= self.settings.max_experiments:
            raise ResourceExhausted(
                f"server holds its maximum of {self.settings.max_experiments} experiments"
            )
        arm_ids = [arm.arm_id for arm in config.arms]
        if not arm_ids:
            raise InvalidArgument("experiment.arms is empty: give at least one arm",
                                  field="experiment.arms")
        if len(arm_ids) > self.settings.max_arms:
            raise ResourceExhausted(
                f"experiment.arms has {len(arm_ids)} arms, the limit is {self.settings.max_arms}"
            )
        check_new_arm_ids(arm_ids, "experiment.arms")
        if config.reward_type not in (
            pb.REWARD_TYPE_BINARY,
            pb.REWARD_TYPE_VALUE,
            pb.REWARD_TYPE_CONTINUOUS,
        ):
            raise InvalidArgument(
                "experiment.reward_type must be REWARD_TYPE_BINARY, REWARD_TYPE_VALUE or "
                f"REWARD_TYPE_CONTINUOUS, got {config.reward_type}", field="experiment.reward_type"
            )
        if config.context_dim > self.settings.max_context_dim:
            raise InvalidArgument(
                f"experiment.context_dim is {config.context_dim}, the limit is "
                f"{self.settings.max_context_dim}", field="experiment.context_dim"
            )
        spec = resolve_policy(config.policy, config.reward_type, config.context_dim)  # fills in
        self._check_floor(config.exploration_floor, len(arm_ids), "experiment.exploration_floor")
        if config.HasField("discount"):
            d = config.discount
            if not (0.0 < d <= 1.0):
                raise InvalidArgument(f"experiment.discount must be in (0, 1], got {d}",
                                      field="experiment.discount")
            if spec.contextual and d != 1.0:
                raise InvalidArgument(
                    "experiment.discount is supported for non-contextual policies only",
                    field="experiment.discount"
                )
        else:
            config.discount = 1.0
        if not config.HasField("seed"):
            config.seed = secrets.randbits(63)
        self._check_memory(
            self._footprint(spec, len(arm_ids), config.context_dim, sum(map(len, arm_ids))),
            config.context_dim, f"experiment '{config.experiment_id}' with {len(arm_ids)} arms")
        return config

    def apply_create(self, config: pb.Experiment) -> Experiment:
        """Apply a ``create_experiment`` record (a configuration from :meth:`check_create`)."""
        return self.restore(config, self._uid())

    @staticmethod
    def _check_floor(floor: float, num_arms: int, field: str) -> None:
        if not (floor >= 0.0) or floor * num_arms > 1.0 + 1e-12:
            raise InvalidArgument(
                f"{field} is {floor}: it must be >= 0 and floor x arms ({num_arms}) <= 1",
                field=field
            )

    def apply_delete(self, record: st.DeleteExperiment) -> None:
        """Apply a ``delete_experiment`` record (the experiment exists: checked by the caller
        with :meth:`get`)."""
        del self._experiments[record.experiment_id]
        self.generation += 1

    def apply_ingest(self, record: pb.IngestMetricsRequest) -> tuple[int, int]:
        """Apply an ``ingest_metrics`` record (checked by :func:`analytics.check_ingest` when it
        was made): replace the period's aggregates of its arms. (replaced, new) arm counts."""
        experiment = self.get(record.experiment_id)
        index = experiment.arm_index
        return experiment.ingest(record.period, [
            (index[m.arm_id], m.trials, m.successes, m.value) for m in record.metrics])

    def apply_reset(self, record: st.ResetExperiment) -> Experiment:
        """Apply a ``reset_experiment`` record: a new incarnation with fresh statistics."""
        experiment = self.get(record.experiment_id)
        experiment.reset(self._uid())
        self.own_stream(experiment)
        self.generation += 1
        return experiment

    def list_page(self, page_size: int, page_token: str) -> tuple[list[Experiment], str]:
        size = min(page_size or 1000, 1000)
        ids = sorted(i for i in self._experiments if i > page_token)
        page = ids[:size]
        next_token = page[-1] if len(ids) > size else ""
        return [self._experiments[i] for i in page], next_token

    def check_update_arms(self, request: pb.UpdateArmsRequest) -> None:
        """Validate an arm change (its record is the request itself). Changes nothing."""
        experiment_id = request.experiment_id
        add, remove = list(request.add_arm_ids), list(request.remove_arm_ids)
        experiment = self.get(experiment_id)
        if not add and not remove:
            raise InvalidArgument("add_arm_ids and remove_arm_ids are both empty",
                                  field="add_arm_ids")
        check_new_arm_ids(add, "add_arm_ids")
        check_new_arm_ids(remove, "remove_arm_ids")
        for i, arm_id in enumerate(remove):
            if arm_id not in experiment.arm_index:
                raise NotFound(
                    f"remove_arm_ids[{i}]: arm {shown(arm_id)} not found in experiment "
                    f"'{experiment_id}'"
                )
        removing = set(remove)
        for i, arm_id in enumerate(add):
            if arm_id in experiment.arm_index and arm_id not in removing:
                raise AlreadyExists(
                    f"add_arm_ids[{i}]: arm '{arm_id}' already exists in experiment "
                    f"'{experiment_id}'"
                )
        remaining = experiment.num_arms - len(remove) + len(add)
        if remaining < 1:
            raise InvalidArgument("an experiment must keep at least one arm",
                                  field="remove_arm_ids")
        if remaining > self.settings.max_arms:
            raise ResourceExhausted(
                f"experiment would have {remaining} arms, the limit is {self.settings.max_arms}"
            )
        self._check_floor(experiment.floor, remaining, "experiment.exploration_floor")
        added = self._footprint(experiment.spec, remaining, experiment.context_dim,
                                sum(map(len, experiment.arm_ids)) + sum(map(len, add))) \
            - self._footprint(experiment.spec, experiment.num_arms, experiment.context_dim,
                              sum(map(len, experiment.arm_ids)))
        if added > 0:
            self._check_memory(added, experiment.context_dim,
                               f"{len(add)} more arms for experiment '{experiment_id}'")

    def _footprint(self, spec: PolicySpec, num_arms: int, context_dim: int,
                   arm_id_chars: int) -> int:
        return experiment_bytes(spec.kernel, spec.params, num_arms, context_dim,
                                self.settings.propensity_draws, arm_id_chars)

    def footprint(self, context_dim: int = 0) -> int:
        """Estimated bytes of every experiment and of a full decision store whose largest
        context has at least ``context_dim`` values."""
        held = sum(e.footprint for e in self._experiments.values())
        widest = max((e.context_dim for e in self._experiments.values()), default=0)
        return held + store_bytes(self.settings.decision_capacity, max(widest, context_dim))

    def _check_memory(self, added: int, context_dim: int, what: str) -> None:
        """RESOURCE_EXHAUSTED if ``added`` more bytes would take the state past the budget."""
        budget = self.settings.memory_budget_bytes
        now = self.footprint()
        after = self.footprint(context_dim) + added
        if after > budget:
            raise ResourceExhausted(
                f"{what} would take the server's state to about {after / 1e6:,.0f} MB "
                f"(now {now / 1e6:,.0f} MB); the memory budget is {budget / 1e6:,.0f} MB "
                "(memory_budget_bytes)")

    def apply_update_arms(self, record: pb.UpdateArmsRequest) -> Experiment:
        """Apply an ``update_arms`` record (checked by :meth:`check_update_arms` when it was
        made; no limit checks here: a lowered limit must not lose data on restart)."""
        experiment = self.get(record.experiment_id)
        experiment.update_arms(list(record.add_arm_ids), list(record.remove_arm_ids))
        self._measure(experiment)
        self.generation += 1
        return experiment

    def _measure(self, e: Experiment) -> None:
        """Keep ``e.footprint``, its estimated bytes, current."""
        e.footprint = self._footprint(e.spec, e.num_arms, e.context_dim,
                                      sum(map(len, e.arm_ids)))
