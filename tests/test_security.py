"""TLS, mutual TLS and bearer tokens with roles, with certificates made by the test.

Every DecisionService RPC is called with every kind of caller (each role, no token, an unknown
token) over TLS; a server requiring client certificates refuses a client without one; the
tokens file and the certificates are re-read by a real ``banditd serve`` on a real SIGHUP.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from banditd.clients import AsyncBanditClient, BanditClient
from banditd.decision.v1 import decision_pb2 as pb
from banditd.decision.v1 import decision_pb2_grpc as pb_grpc
from banditd.server.api.auth import RPC_ROLES, Authenticator, TokensFileError, token_digest
from banditd.server.api.handlers import SERVICE
from banditd.server.settings import Settings, is_loopback, unknown_variables
from helpers import Pki, Served, bearer, make_experiment, running_server, until, write_tokens

BIN = Path(sys.executable).parent
TOKENS = {"bidder": ("t-decide-1f0c", "decide"), "analyst": ("t-read-77aa", "read"),
          "ops": ("t-admin-93be", "admin")}

# The roles as the issue states them: decide calls the hot path, read the reads, admin all.
DECIDE_RPCS = {"SelectArm", "BatchSelectArms", "RecordReward", "BatchRecordRewards", "PaceBid",
               "RecordSpend"}
READ_RPCS = {"GetAllocation", "AllocateBudget", "GetPacingStatus", "ExportDecisions",
             "EvaluatePolicy"}


def _reads(name: str) -> bool:
    return name.startswith(("Get", "List")) or name in READ_RPCS


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory, pki):
    directory = tmp_path_factory.mktemp("tls-server")
    cert, key = pki.issue("server", server=True)
    tokens = write_tokens(directory / "tokens", TOKENS)
    with running_server(directory / "data", tls_cert_file=cert, tls_key_file=key,
                        auth_tokens_file=tokens) as server:
        yield server


def _tls_channel(port: int, ca: Path, cert_key: tuple[Path, Path] | None = None) -> grpc.Channel:
    pair = (cert_key[1].read_bytes(), cert_key[0].read_bytes()) if cert_key else (None, None)
    return grpc.secure_channel(f"localhost:{port}",
                               grpc.ssl_channel_credentials(ca.read_bytes(), *pair))


def _code(call, metadata) -> grpc.StatusCode:
    try:
        call(b"", metadata=metadata, timeout=10)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def test_every_rpc_against_every_role_over_tls(tls_server, pki):
    callers = {role: bearer(token) for _name, (token, role) in TOKENS.items()}
    callers["no token"] = None
    callers["unknown token"] = bearer("t-not-issued")
    callers["malformed"] = (("authorization", TOKENS["ops"][0]),)  # no "Bearer " scheme
    served = [m.name for m in SERVICE.methods]
    assert len(served) >= 19 and set(served) <= set(RPC_ROLES)
    seen: dict[tuple[str, str], grpc.StatusCode] = {}
    with _tls_channel(tls_server.port, pki.ca) as channel:
        for name in served:
            call = channel.unary_unary(f"/{SERVICE.full_name}/{name}")
            for caller, metadata in callers.items():
                seen[(name, caller)] = _code(call, metadata)
    denied = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
    for name in served:
        expected_role = "decide" if name in DECIDE_RPCS else "read" if _reads(name) else "admin"
        for caller in ("no token", "unknown token", "malformed"):
            assert seen[(name, caller)] == grpc.StatusCode.UNAUTHENTICATED, (name, caller)
        assert seen[(name, "admin")] not in denied, name
        for role in ("decide", "read"):
            if role == expected_role:
                assert seen[(name, role)] not in denied, (name, role)
            else:
                assert seen[(name, role)] == grpc.StatusCode.PERMISSION_DENIED, (name, role)
    # the admin-only RPCs are exactly the experiment, arm, campaign and metrics changes
    admin_only = {n for n in served if seen[(n, "decide")] == seen[(n, "read")] ==
                  grpc.StatusCode.PERMISSION_DENIED}
    assert admin_only == {"CreateExperiment", "DeleteExperiment", "UpdateArms", "ResetExperiment",
                          "IngestMetrics", "CreateCampaign", "UpdateCampaign"}


def test_allowed_calls_work_and_denials_say_what_is_needed(tls_server, pki):
    with _tls_channel(tls_server.port, pki.ca) as channel:
        stub = pb_grpc.DecisionServiceStub(channel)
        admin, decide, read = (bearer(TOKENS[n][0]) for n in ("ops", "bidder", "analyst"))
        stub.CreateExperiment(pb.CreateExperimentRequest(
            experiment=make_experiment("sec-1", arms=("a", "b"))), metadata=admin)
        picked = stub.SelectArm(pb.SelectArmRequest(experiment_id="sec-1"), metadata=decide)
        assert picked.arm_id in ("a", "b")
        stub.RecordReward(pb.RecordRewardRequest(experiment_id="sec-1", reward=1.0,
                                                 decision_id=picked.decision_id), metadata=decide)
        stats = stub.GetArmStats(pb.GetArmStatsRequest(experiment_id="sec-1"), metadata=read)
        assert sum(a.rewards for a in stats.arms) == 1 and sum(a.selections for a in stats.arms) == 1
        with pytest.raises(grpc.RpcError) as denied:
            stub.DeleteExperiment(pb.DeleteExperimentRequest(experiment_id="sec-1"),
                                  metadata=read)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "needs role admin" in denied.value.details()
        assert "analyst" in denied.value.details()
        assert TOKENS["analyst"][0] not in denied.value.details()
        # refused calls changed nothing
        assert stub.GetExperiment(pb.GetExperimentRequest(experiment_id="sec-1"),
                                  metadata=read).experiment_id == "sec-1"


def test_health_needs_no_token_and_plaintext_is_refused_on_a_tls_port(tls_server, pki):
    with _tls_channel(tls_server.port, pki.ca) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                          timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(f"127.0.0.1:{tls_server.port}") as plain:
        with pytest.raises(grpc.RpcError) as refused:
            health_pb2_grpc.HealthStub(plain).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_python_clients_take_a_token_and_tls_options(tls_server, pki):
    target = f"127.0.0.1:{tls_server.port}"
    with BanditClient(target, token=TOKENS["ops"][0], root_certificates=pki.ca,
                      server_name="localhost") as ops:
        ops.create_experiment("sec-client", ["x", "y"], "thompson", seed=3)
    with BanditClient(target, token=TOKENS["bidder"][0], root_certificates=pki.ca.read_bytes(),
                      server_name="localhost") as bidder:
        assert bidder.select_arm("sec-client").arm_id in ("x", "y")
        with pytest.raises(grpc.RpcError) as denied:
            bidder.delete_experiment("sec-client")
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED

    async def main() -> tuple[int, grpc.StatusCode]:
        async with AsyncBanditClient(target, token=TOKENS["analyst"][0],
                                     root_certificates=pki.ca, server_name="localhost") as read:
            listed = await read.list_experiments()
        async with AsyncBanditClient(target, root_certificates=pki.ca,
                                     server_name="localhost") as anonymous:
            try:
                await anonymous.list_experiments()
            except grpc.aio.AioRpcError as exc:
                return len(listed.experiments), exc.code()
        raise AssertionError("a call without a token was served")

    count, code = asyncio.run(main())
    assert count >= 1 and code == grpc.StatusCode.UNAUTHENTICATED


def test_mutual_tls_refuses_a_client_without_a_certificate_of_its_ca(tmp_path, pki):
    server_cert = pki.issue("mtls-server", server=True)
    client = pki.issue("mtls-client", server=False)
    stranger_ca = Pki(tmp_path / "other", "stranger-ca")
    stranger = stranger_ca.issue("stranger", server=False)
    with running_server(tmp_path / "data", tls_cert_file=server_cert[0],
                        tls_key_file=server_cert[1], tls_client_ca_file=pki.ca) as server:
        def health(cert_key) -> grpc.StatusCode:
            with _tls_channel(server.port, pki.ca, cert_key) as channel:
                try:
                    health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                              timeout=5)
                except grpc.RpcError as exc:
                    return exc.code()
                return grpc.StatusCode.OK

        assert health(None) == grpc.StatusCode.UNAVAILABLE  # no client certificate
        assert health(stranger) == grpc.StatusCode.UNAVAILABLE  # one of another CA
        assert health(client) == grpc.StatusCode.OK
        with BanditClient(f"127.0.0.1:{server.port}", root_certificates=pki.ca,
                          client_certificate=client[0], client_key=client[1],
                          server_name="localhost") as bandit:
            assert bandit.list_experiments().experiments == []


# -- a real process, real signals ------------------------------------------------------------


def test_sighup_reloads_the_tokens_file_and_the_certificates(tmp_path, pki):
    cert = tmp_path / "server.pem"
    key = tmp_path / "server.key"
    first = pki.issue("reload-1", server=True)
    cert.write_bytes(first[0].read_bytes())
    key.write_bytes(first[1].read_bytes())
    tokens = write_tokens(tmp_path / "tokens", {"old": ("t-old", "read")})
    server = Served(tmp_path, "--tls-cert-file", str(cert), "--tls-key-file", str(key),
                    "--auth-tokens-file", str(tokens))
    try:
        with _tls_channel(server.port, pki.ca) as channel:
            server.wait_serving(channel)
        list_request = pb.ListExperimentsRequest().SerializeToString()

        def code(token: str, ca: Path) -> grpc.StatusCode:
            with _tls_channel(server.port, ca) as channel:  # a new connection: a handshake
                try:
                    channel.unary_unary(f"/{SERVICE.full_name}/ListExperiments")(
                        list_request, metadata=bearer(token), timeout=5)
                except grpc.RpcError as exc:
                    return exc.code()
                return grpc.StatusCode.OK

        assert code("t-old", pki.ca) == grpc.StatusCode.OK
        assert code("t-new", pki.ca) == grpc.StatusCode.UNAUTHENTICATED

        # new tokens
        write_tokens(tokens, {"new": ("t-new", "read")})
        server.proc.send_signal(signal.SIGHUP)
        until(lambda: code("t-new", pki.ca) == grpc.StatusCode.OK, "new token not accepted")
        assert code("t-old", pki.ca) == grpc.StatusCode.UNAUTHENTICATED

        # a broken file is refused on reload; the tokens in force stay
        tokens.write_text("not a token line\n")
        server.proc.send_signal(signal.SIGHUP)
        until(lambda: "tokens file not reloaded" in server.log.read_text(),
               "a broken tokens file was not reported")
        assert code("t-new", pki.ca) == grpc.StatusCode.OK

        # a certificate of another CA
        other = Pki(tmp_path / "other", "next-ca")
        second = other.issue("reload-2", server=True)
        cert.write_bytes(second[0].read_bytes())
        key.write_bytes(second[1].read_bytes())
        assert code("t-new", other.ca) == grpc.StatusCode.UNAVAILABLE  # not reloaded yet
        server.proc.send_signal(signal.SIGHUP)
        until(lambda: code("t-new", other.ca) == grpc.StatusCode.OK, "new certificate not served")
        assert code("t-new", pki.ca) == grpc.StatusCode.UNAVAILABLE
        assert server.proc.poll() is None
        log = server.log.read_text()
        for token in ("t-old", "t-new"):
            assert token not in log  # tokens are never logged
    finally:
        assert server.stop() == 0


def test_check_health_over_tls(tmp_path, pki):
    cert, key = pki.issue("health", server=True)
    server = Served(tmp_path, "--tls-cert-file", str(cert), "--tls-key-file", str(key))
    try:
        with _tls_channel(server.port, pki.ca) as channel:
            server.wait_serving(channel)
        env = dict(os.environ, BANDITD_PORT=str(server.port), BANDITD_TLS_CERT_FILE=str(cert),
                   BANDITD_TLS_KEY_FILE=str(key))
        check = subprocess.run([str(BIN / "banditd"), "check-health", "--ca-file", str(pki.ca)],
                               env=env, capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stderr
        assert check.stdout.strip() == "SERVING"
    finally:
        assert server.stop() == 0


# -- settings ----------------------------------------------------------------------------------


def test_plaintext_beyond_loopback_needs_allow_insecure(tmp_path):
    refused = subprocess.run([str(BIN / "banditd"), "serve", "--host", "0.0.0.0", "--port", "0",
                              "--data-dir", str(tmp_path)], capture_output=True, text=True,
                             timeout=60)
    assert refused.returncode == 2
    assert "BANDITD_ALLOW_INSECURE" in refused.stderr and "TLS_CERT_FILE" in refused.stderr
    assert not (tmp_path / "LOCK").exists() and not list(tmp_path.iterdir())  # nothing started
    Settings(host="0.0.0.0", allow_insecure=True).check_listen()  # allowed when asked for
    Settings(host="127.0.0.1").check_listen()
    assert is_loopback("::1") and is_loopback("localhost") and is_loopback("127.0.0.2")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")


def test_tls_settings_are_checked_at_start(tmp_path, pki):
    cert, key = pki.issue("checked", server=True)
    with pytest.raises(ValueError, match="set both or neither"):
        Settings(tls_cert_file=cert)
    with pytest.raises(ValueError, match="needs tls_cert_file"):
        Settings(tls_client_ca_file=pki.ca)
    with pytest.raises(ValueError, match="not a readable file"):
        Settings(tls_cert_file=cert, tls_key_file=tmp_path / "missing.key")
    other_key = pki.issue("other", server=True)[1]
    proc = subprocess.run([str(BIN / "banditd"), "serve", "--port", "0", "--data-dir",
                           str(tmp_path / "d"), "--tls-cert-file", str(cert), "--tls-key-file",
                           str(other_key)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "tls_key_file" in proc.stderr and "private key" in proc.stderr


def test_an_unknown_banditd_variable_is_an_error_naming_the_closest_setting(tmp_path):
    proc = subprocess.run([str(BIN / "banditd"), "check-health"],
                          env=dict(os.environ, BANDITD_PROT="50051"),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "BANDITD_PROT is not a setting; did you mean BANDITD_PORT?" in proc.stderr
    assert unknown_variables({"BANDITD_TLS_CERT_FILE": "x", "HOME": "/"}) == []
    assert unknown_variables({"BANDITD_ZZZ": "1"}) == ["BANDITD_ZZZ is not a setting"]


def test_version():
    from importlib.metadata import version

    proc = subprocess.run([str(BIN / "banditd"), "--version"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"banditd {version('banditd')}"


# -- the tokens file ---------------------------------------------------------------------------


def test_tokens_file_formats_and_errors(tmp_path):
    lines = write_tokens(tmp_path / "tokens", TOKENS)
    toml = tmp_path / "tokens.toml"
    toml.write_text("".join(f'[[token]]\nsha256 = "{token_digest(t)}"\nrole = "{r}"\n'
                            f'name = "{n}"\n' for n, (t, r) in TOKENS.items()))
    for path in (lines, toml):
        auth = Authenticator(path)
        assert len(auth) == 3
        for name, (token, role) in TOKENS.items():
            caller = auth.identify(bearer(token))
            assert caller is not None and (caller.name, caller.role) == (name, role)
        assert auth.identify(bearer("t-admin-93bf")) is None
        assert auth.identify(None) is None
    bad = tmp_path / "bad"
    for text, message in (("abc read x\n", "64 hex digits"),
                          (f"{token_digest('a')} root x\n", "role 'root'"),
                          (f"{token_digest('a')} read\n", "expected"),
                          (f"{token_digest('a')} read x\n{token_digest('a')} admin y\n",
                           "already listed")):
        bad.write_text(text)
        with pytest.raises(TokensFileError, match=message):
            Authenticator(bad)
