"""Log formats and the rate limit on lines that clients can cause."""

from __future__ import annotations

import json
import logging

import grpc
import pytest

from banditd.decision.v1 import decision_pb2 as pb
from banditd.server.logs import JsonFormatter, RateLimited, TextFormatter


def _record(message: str, **fields) -> logging.LogRecord:
    record = logging.LogRecord("banditd.audit", logging.INFO, __file__, 1, message, (), None)
    record.fields = fields
    return record


def test_json_and_text_formats_carry_the_fields():
    record = _record("DeleteExperiment by ops", audit={"rpc": "DeleteExperiment", "ids": ["x"]})
    line = json.loads(JsonFormatter("[1]").format(record))
    assert line["message"] == "DeleteExperiment by ops" and line["level"] == "INFO"
    assert line["logger"] == "banditd.audit" and line["process"] == "[1]"
    assert line["audit"] == {"rpc": "DeleteExperiment", "ids": ["x"]}
    assert line["time"].endswith("Z")
    text = TextFormatter().format(record)
    assert text.endswith('DeleteExperiment by ops audit={"rpc": "DeleteExperiment", "ids": ["x"]}')


def test_client_errors_are_logged_at_debug_at_most_n_per_second(caplog, monkeypatch):
    clock = iter([100.0] * 25 + [101.0] * 2)
    monkeypatch.setattr("banditd.server.logs.time.monotonic", lambda: next(clock))
    logger = logging.getLogger("banditd.test-rate")
    limited = RateLimited(logger, per_second=10)
    with caplog.at_level(logging.DEBUG, logger="banditd.test-rate"):
        for i in range(25):
            limited.debug("bad request %d", i, rpc="SelectArm")
        limited.debug("next second")
    messages = [r.getMessage() for r in caplog.records]
    assert messages[:10] == [f"bad request {i}" for i in range(10)]
    assert messages[10:] == ["15 similar lines dropped (rate limit 10/s)", "next second"]
    assert caplog.records[0].fields == {"rpc": "SelectArm"}


def test_a_bad_request_is_logged_at_debug_without_changing_the_answer(stub, caplog):
    with caplog.at_level(logging.DEBUG, logger="banditd.requests"), \
            pytest.raises(grpc.RpcError) as err:
        stub.SelectArm(pb.SelectArmRequest(experiment_id="no-such-experiment"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    lines = [r for r in caplog.records if r.name == "banditd.requests"]
    assert any(r.levelno == logging.DEBUG and "NOT_FOUND" in r.getMessage() for r in lines)
