"""CKKS engine: encrypted logits equal the plaintext model's, parameters within the 128-bit
limits, a server without the secret key, and clear refusals of layers CKKS cannot run."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("tenseal")

import tenseal.sealapi as seal  # noqa: E402
from tests.secure.seal_reference import poly_cnn  # noqa: E402

from pifair.errors import UnsupportedLayerError  # noqa: E402
from pifair.models import create_model  # noqa: E402
from pifair.relu.polynomial import PolyAct  # noqa: E402
from pifair.secure.he.compile import compile_model  # noqa: E402
from pifair.secure.he.engine import HEClient, HEServer  # noqa: E402
from pifair.secure.he.params import MAX_LOG_Q, HEDepthError, choose_parameters  # noqa: E402

pytestmark = pytest.mark.he


@pytest.mark.parametrize("granularity", ["layer", "element"])
def test_encrypted_logits_equal_the_plaintext_model(digits, granularity):
    model = poly_cnn(granularity)
    program = compile_model(model, (1, 8, 8))
    client = HEClient(choose_parameters(program.depth))
    server = HEServer(client.server_keys())
    x = digits.normalize(digits.test.x[:12]).double()
    logits = client.decrypt(server.run(program, client.encrypt(x.numpy())), batch=12)
    with torch.no_grad():
        expected = model.double()(x).numpy()
    assert np.abs(logits - expected).max() <= 1e-4 * max(1.0, np.abs(expected).max())
    assert (logits.argmax(1) == expected.argmax(1)).all()


def test_parameter_chooser_respects_the_128_bit_limits():
    for depth in range(1, 20):
        p = choose_parameters(depth)
        n = p.poly_modulus_degree
        assert (
            p.log_q <= MAX_LOG_Q[n] == seal.CoeffModulus.MaxBitCount(n, seal.SEC_LEVEL_TYPE.TC128)
        )
        assert len(p.coeff_bits) == depth + 2 and p.slots == n // 2
        smaller = [m for m in MAX_LOG_Q if 8192 <= m < n]
        assert all(p.log_q > MAX_LOG_Q[m] for m in smaller)  # the smallest ring that fits
    with pytest.raises(HEDepthError, match=r"depth 25\b.*at most 881 bits.*depth 19"):
        choose_parameters(25)


def test_the_server_key_check_sees_a_leaked_secret_key():
    client = HEClient(choose_parameters(2))
    keys = client.server_keys()
    assert keys.files() == ["parms.seal", "public.seal", "relin.seal"]
    assert client.check_server_keys(keys)["server_holds_no_secret_key"] is True
    client.keys.secret.save(str(keys.folder / "public.seal"))  # a leak under a public name
    leaked = client.check_server_keys(keys)
    assert leaked["secret_key_in_folder"] and not leaked["server_holds_no_secret_key"]
    assert leaked["only_public_files"]  # the names alone would not have caught it


def test_forked_workers_compute_what_one_process_computes(digits, tmp_path):
    program = compile_model(poly_cnn("element"), (1, 8, 8))
    client = HEClient(choose_parameters(program.depth))
    x = digits.normalize(digits.test.x[:4]).double().numpy()
    one = HEServer(client.server_keys(tmp_path / "one"), workers=1)
    two = HEServer(client.server_keys(tmp_path / "two"), workers=2)
    cts = client.encrypt(x)
    out_one = client.decrypt(one.run(program, cts), batch=4)
    out_two = client.decrypt(two.run(program, cts), batch=4)
    np.testing.assert_array_equal(out_one, out_two)  # the same SEAL operations, bit for bit


def test_layers_ckks_cannot_run_are_named():
    relu = create_model("he_cnn", num_classes=10, input_shape=(1, 8, 8))
    with pytest.raises(UnsupportedLayerError, match="layer act1 is a ReLU .* pifair polyfit"):
        compile_model(relu, (1, 8, 8))
    maxpool = nn.Sequential(nn.Conv2d(1, 2, 3), PolyAct(2, "layer", (2, 6, 6)), nn.MaxPool2d(2))
    with pytest.raises(UnsupportedLayerError, match="layer 2 is max pooling"):
        compile_model(maxpool, (1, 8, 8))
    tanh = nn.Sequential(nn.Flatten(), nn.Linear(64, 4), nn.Tanh())
    with pytest.raises(UnsupportedLayerError, match=r"layer 2 \(Tanh\) cannot run under CKKS"):
        compile_model(tanh, (1, 8, 8))


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(4, 4), PolyAct(2, "layer", (4,)), nn.Linear(4, 4)
        self.act.coefficients.data = torch.tensor([0.1, 0.5, 0.3])

    def forward(self, x):
        h = self.fc1(x)
        return self.fc2(self.act(h)) + h  # a skip connection around the site


def test_branching_models_are_refused():
    with pytest.raises(UnsupportedLayerError, match="sequential models only"):
        compile_model(_Residual(), (4,))


def test_forked_work_fills_shared_memory_and_a_failing_child_is_raised(capfd):
    from pifair.secure.he.cipher_batch import shared_array
    from pifair.secure.he.seal import run_forked

    out = shared_array((10,))

    def square(i: int) -> None:
        out[i] = i * i

    run_forked(square, 10, 3)
    assert out.tolist() == [i * i for i in range(10)]

    def fails(i: int) -> None:
        if i == 7:
            raise ValueError("seven")

    with pytest.raises(RuntimeError, match="1 of 2 forked workers failed"):
        run_forked(fails, 10, 2)
    assert "ValueError: seven" in capfd.readouterr().err


def test_forked_children_die_of_sigterm_even_under_a_raising_handler(tmp_path):
    """The CLI's SIGTERM handler raises an exception; a child inherits it but must die of the
    signal, not run the exception through whatever it is in (a pool's lock hung the server)."""
    import signal
    import time

    from pifair.secure.he.seal import run_forked

    pids = tmp_path / "pids"
    pids.mkdir()

    def sleeps(i: int) -> None:
        (pids / str(os.getpid())).touch()
        time.sleep(60)

    class Stop(Exception):
        pass

    def raising(signum, frame):
        raise Stop

    previous = signal.signal(signal.SIGTERM, raising)
    try:
        child = os.fork()
        if child == 0:  # a parent of workers, killed: its workers must go with it
            try:
                run_forked(sleeps, 2, 2)
            finally:
                os._exit(3)
        deadline = time.monotonic() + 30
        while len(list(pids.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        workers = [int(p.name) for p in pids.iterdir()]
        assert len(workers) == 2
        os.kill(child, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while (done := os.waitpid(child, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        if done[0] == 0:
            os.kill(child, signal.SIGKILL)
            os.waitpid(child, 0)
            pytest.fail("the parent of forked workers hung after SIGTERM")
        assert os.waitstatus_to_exitcode(done[1]) == 3  # Stop raised in the parent: cleaned up
        for pid in workers:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)  # no worker left behind
    finally:
        signal.signal(signal.SIGTERM, previous)
