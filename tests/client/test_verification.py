"""Verification of results, fast: the reply check, tolerances, reports, routing by measured speed,
and 1000 honest steps on an in-process swarm of replicas (the real ServerRPC over real spans)
without a false alarm. Liars on real processes: test_verification_swarm.py."""
import pytest
import torch

from zswarm.client.verification import check_reply, relative_errors, tolerance
from zswarm.reports import LieReport, ReportLog, read_reports
from zswarm.defaults import SPOT_CHECK_RATE
from zswarm.errors import ImplausibleReplyError, ServerUnavailable
from zswarm.routing import candidates, find_inference_route
from zswarm.swarm_info import ServerRecord

PROMPT = torch.tensor([[1, 5, 9, 33, 7]])


@pytest.mark.parametrize("make_reply, why", [
    (lambda x: torch.zeros_like(x), "RMS"),
    (lambda x: x * 1e-5, "RMS"),
    (lambda x: x * 1e6, "RMS"),
    (lambda x: torch.full_like(x, float("nan")), "NaN"),
    (lambda x: torch.where(torch.arange(x.shape[-1]) == 3, float("inf"), x), "NaN"),
    (lambda x: x[:, :1], "shape"),
    (lambda x: x.double(), "float64"),
])
def test_reply_check_refuses_junk_with_a_typed_error_naming_the_server(make_reply, why):
    inputs = torch.randn(2, 3, 64, dtype=torch.float16).float()
    with pytest.raises(ImplausibleReplyError, match=why) as caught:
        check_reply(inputs, make_reply(inputs), peer_id="p1", start=2, end=4)
    assert caught.value.peer_id == "p1" and caught.value.blocks == (2, 4)
    assert isinstance(caught.value, ServerUnavailable)  # a server fault: failover replays around it


def test_reply_check_passes_what_blocks_compute():
    inputs = torch.randn(1, 4, 64)
    check_reply(inputs, inputs + 0.5 * torch.randn(1, 4, 64), peer_id="p", start=0, end=1)
    check_reply(inputs, inputs * 300, peer_id="p", start=0, end=1)  # early blocks grow the residual a lot


def test_tolerance_is_that_of_the_least_precise_dtype_involved():
    assert tolerance([torch.float32, "float32"]) < tolerance([torch.float32, "float16"]) < tolerance(["bfloat16"])
    assert tolerance(["float32"], ["none", "nf4"]) > tolerance(["bfloat16"])
    a = torch.randn(2, 5, 64)
    assert relative_errors(a, a).tolist() == [0.0] * 5
    b = a.clone()
    b[1, 3] *= 1.1
    assert relative_errors(b, a).argmax() == 3 and float(relative_errors(b, a)[3]) == pytest.approx(0.1, rel=1e-3)


def test_reports_round_trip_through_the_report_file_and_junk_lines_are_skipped(tmp_path):
    path = tmp_path / "reports.jsonl"
    log = ReportLog(str(path))
    report = LieReport(peer_id="liar", model_id="m", start=3, end=6, verdict="outvoted", detail="d", position=7,
                       relative_error=0.2, tolerance=1e-3, witnesses=["b", "c"])
    log.add(report)
    with open(path, "a") as out:
        out.write("not json\n{\"version\": 99}\n")
    assert read_reports(str(path)) == ([report], 2)


def test_an_inflated_record_buys_nothing_once_the_client_has_measured_the_server():
    def record(peer, rps):
        return ServerRecord(peer_id=peer, address=f"tcp://{peer}:1", model_id="m", start=0, end=2, inference_rps=rps)

    blocks = [{"liar": record("liar", 1e12), "honest": record("honest", 100.0)}] * 2
    rtts = {"liar": 0.001, "honest": 0.001}
    announced = candidates(blocks, 0, 2, rtts=rtts)
    assert [s.peer_id for s in find_inference_route(announced, 0, 2)] == ["liar"]
    # measured: the liar computes like anyone else, a bit slower
    measured = candidates(blocks, 0, 2, rtts=rtts, measured_rps={"liar": 90.0, "honest": 100.0})
    assert [s.peer_id for s in find_inference_route(measured, 0, 2)] == ["honest"]


def test_sequence_manager_measures_seconds_per_block_without_the_round_trip(swarm, connect):
    swarm.add(0, 6)
    model = connect()
    manager = model.swarm.manager
    manager.rtts["p"] = 0.010
    manager.on_step_time("p", 2, 0.030)
    assert manager.block_seconds["p"] == pytest.approx(0.010)
    manager.on_step_time("p", 2, 0.050)
    assert manager.block_seconds["p"] == pytest.approx(0.7 * 0.010 + 0.3 * 0.020)
    assert manager.measured_rps()["p"] == pytest.approx(1 / manager.block_seconds["p"])


@pytest.mark.parametrize("server_dtype, wire_dtype", [(torch.float32, "float32"), (torch.float16, "float16")])
def test_honest_replicas_raise_no_false_alarm_over_1000_steps(swarm, connect, server_dtype, wire_dtype):
    for start, end in ((0, 3), (0, 3), (3, 6), (3, 6)):
        swarm.add(start, end, dtype=server_dtype)
    model = connect(wire_dtype=wire_dtype)
    steps, checks, compared, worst = 0, 0, 0, 0.0
    for i in range(5):
        prompt = PROMPT + i
        with model.inference_session(max_length=len(prompt[0]) + 200) as session:
            model.generate(prompt, max_new_tokens=200, min_new_tokens=200, session=session)
            checks, compared = checks + session.checks.checks, compared + session.checks.compared
            worst = max(worst, session.checks.max_agreeing_error)
            steps += session.position - len(prompt[0]) + 1  # the prefill is one step
    print(f"\n{server_dtype} servers, {wire_dtype} wire: {steps} steps, {checks} spot checks, {compared} positions "
          f"compared, worst honest relative error {worst:.3g}")
    assert model.swarm.manager.distrusted == {} and model.swarm.manager.reports.reports == []
    # each span is checked once in every window of 1 / rate of its steps, and each check audits every
    # position since the last one: only those after a session's last check (< 2 windows a span) are not
    window = round(1 / SPOT_CHECK_RATE)
    assert steps == 1000 and checks == 2 * steps * SPOT_CHECK_RATE and compared > 2 * (steps - 5 * 2 * window)
