"""Experiments: CreateExperiment, GetExperiment, ListExperiments, DeleteExperiment,
UpdateArms, ResetExperiment."""

from __future__ import annotations

from banditd.decision.v1 import decision_pb2 as pb
from banditd.server.api.core import Core
from banditd.server.api.warmup import kernel_of
from banditd.server.errors import InvalidArgument
from banditd.storage.v1 import storage_pb2 as st


class ExperimentHandlers:
    RPCS = ("CreateExperiment", "GetExperiment", "ListExperiments", "DeleteExperiment",
            "UpdateArms", "ResetExperiment")

    def __init__(self, core: Core) -> None:
        self.core = core
        self.experiments = core.state.experiments

    async def CreateExperiment(self, request: pb.CreateExperimentRequest, context
                               ) -> pb.Experiment:
        if not request.HasField("experiment"):
            raise InvalidArgument("experiment is required", field="experiment")
        # A policy no experiment has used yet is compiled first, off the event loop; the
        # checks below then run with the state as it is after that wait.
        await self.core.kernels.ensure(kernel_of(request.experiment))
        config = self.experiments.check_create(request.experiment)
        experiment = await self.core.write_audited(
            st.WalRecord(create_experiment=config), context, "CreateExperiment",
            [config.experiment_id, *(arm.arm_id for arm in config.arms)])
        return experiment.config  # type: ignore[attr-defined]

    async def GetExperiment(self, request: pb.GetExperimentRequest, context) -> pb.Experiment:
        return self.experiments.get(request.experiment_id).config

    async def ListExperiments(self, request: pb.ListExperimentsRequest, context
                              ) -> pb.ListExperimentsResponse:
        experiments, token = self.experiments.list_page(request.page_size, request.page_token)
        return pb.ListExperimentsResponse(experiments=[e.config for e in experiments],
                                          next_page_token=token)

    async def DeleteExperiment(self, request: pb.DeleteExperimentRequest, context
                               ) -> pb.DeleteExperimentResponse:
        self.experiments.get(request.experiment_id)
        await self.core.write_audited(st.WalRecord(
            delete_experiment=st.DeleteExperiment(experiment_id=request.experiment_id)),
            context, "DeleteExperiment", [request.experiment_id])
        return pb.DeleteExperimentResponse()

    async def UpdateArms(self, request: pb.UpdateArmsRequest, context) -> pb.UpdateArmsResponse:
        self.experiments.check_update_arms(request)
        experiment = await self.core.write_audited(
            st.WalRecord(update_arms=request), context, "UpdateArms",
            [request.experiment_id, *request.add_arm_ids, *request.remove_arm_ids])
        return pb.UpdateArmsResponse(experiment=experiment.config)  # type: ignore[attr-defined]

    async def ResetExperiment(self, request: pb.ResetExperimentRequest, context
                              ) -> pb.ResetExperimentResponse:
        self.experiments.get(request.experiment_id)
        experiment = await self.core.write_audited(st.WalRecord(
            reset_experiment=st.ResetExperiment(experiment_id=request.experiment_id)),
            context, "ResetExperiment", [request.experiment_id])
        return pb.ResetExperimentResponse(experiment=experiment.config)  # type: ignore[attr-defined]
