"""The batched CKKS engine: grouped modular products exact (Python integers) and bit for bit
SEAL's multiply-accumulate, zero-copy ciphertext memory, folding (same function, one level per
activation), a full batch of N/2 images through it, and the server apart from the secret key."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import sparse

pytest.importorskip("tenseal")
pytest.importorskip("numba")

import tenseal.sealapi as seal  # noqa: E402
from tests.secure.seal_reference import (  # noqa: E402
    ckks,
    coefficients_by_at,
    poly_cnn,
    seal_products,
)

from pifair.errors import ConfigError  # noqa: E402
from pifair.models import create_model  # noqa: E402
from pifair.relu import count_relus, replace_activations  # noqa: E402
from pifair.relu.polynomial import PolyAct  # noqa: E402
from pifair.secure.he import batched as batched_module  # noqa: E402
from pifair.secure.he import rns, seal_memory  # noqa: E402
from pifair.secure.he.batched import (  # noqa: E402
    BatchedClient,
    BatchedServer,
    CipherBatch,
    restrict_to_sources,
)
from pifair.secure.he.compile import (  # noqa: E402
    HEProgram,
    LinearStage,
    PolyStage,
    compile_model,
)
from pifair.secure.he.exchange import read_program, serve, write_program  # noqa: E402
from pifair.secure.he.fold import (  # noqa: E402
    SquareStage,
    estimated_cost,
    fold_for_batching,
    fold_program,
)
from pifair.secure.he.params import folded_parameters  # noqa: E402

pytestmark = pytest.mark.he

# a 28-bit and a 38-bit prime of the batched engine's shapes, and 31- and 40-bit ones
PRIMES = [268369921, 274877382657, 2**31 - 1, 1099511480321]


def _ckks():
    """SEAL at the batched engine's kind of parameters: small primes, N = 8192."""
    return ckks((38, 28, 28, 38))


def _conv_weights(rng) -> np.ndarray:
    conv = torch.nn.Conv2d(2, 3, 3, stride=2, padding=1)
    with torch.no_grad():
        eye = torch.eye(2 * 9 * 9).view(-1, 2, 9, 9)
        w = (conv(eye) - conv.bias.view(1, 3, 1, 1)).reshape(len(eye), -1).T.numpy()
    integer = np.round(w * 2**26).astype(np.int64)
    integer[integer == 0] = 0
    return integer


@pytest.mark.parametrize("q", PRIMES)
@pytest.mark.parametrize("shape", ["dense", "conv", "conv-blas"])
def test_grouped_mod_matmul_is_exact(q, shape):
    rng = np.random.default_rng(q % 997)
    if shape == "dense":
        w = rng.integers(-(2**30), 2**30, size=(7, 300))
        w[2, :40] = 0
    else:
        w = _conv_weights(rng)
    grouped = rns.GroupedWeights.from_matrix(sparse.csr_matrix(w))
    if shape == "dense":
        assert len(grouped.buckets) == 1  # one dense product
    x = rng.integers(0, q, size=(w.shape[1], 19), dtype=np.uint64)
    x[0, :3] = [0, q - 1, q // 2]
    # a convolution's small groups take the direct kernel unless told otherwise
    got = rns.ModularProduct(grouped, q, small_group=0 if shape == "conv-blas" else 256)(x)
    want = [[sum(int(a) * int(b) for a, b in zip(row, col)) % q for col in x.T] for row in w]
    assert got.dtype == np.uint64 and got.tolist() == want


def test_direct_kernel_writes_in_place_over_many_column_calls_as_blas_does():
    q = PRIMES[1]
    rng = np.random.default_rng(5)
    w = _conv_weights(rng)
    grouped = rns.GroupedWeights.from_matrix(sparse.csr_matrix(w))
    columns = 2 * rns._DIRECT_COLUMNS + 77  # three kernel calls, the last one short
    x = rng.integers(0, q, size=(w.shape[1], columns), dtype=np.uint64)
    direct = rns.ModularProduct(grouped, q)
    assert direct.direct and not rns.ModularProduct(grouped, q, small_group=0).direct
    space = np.full((w.shape[0] + 2, columns + 5), 7, dtype=np.uint64)
    view = space[1:-1, 2:-3]  # a strided view of a larger array
    direct(x, view)
    np.testing.assert_array_equal(view, rns.ModularProduct(grouped, q, small_group=0)(x))
    assert (space[0] == 7).all() and (space[-1] == 7).all() and (space[:, :2] == 7).all()
    sample = [0, rns._DIRECT_COLUMNS - 1, rns._DIRECT_COLUMNS, columns - 1]
    want = [[sum(int(a) * int(b) for a, b in zip(row, x[:, j])) % q for j in sample] for row in w]
    assert view[:, sample].tolist() == want


def test_scalar_weights_round_half_away_from_zero_like_seal():
    got = rns.scalar_weights(np.array([0.5, -0.5, 1.5, -2.5, 0.25]), np.ones(5))
    assert got.tolist() == [1, -1, 2, -3, 0]


def test_a_convolution_groups_its_rows_by_output_position():
    w = _conv_weights(np.random.default_rng(0))
    grouped = rns.GroupedWeights.from_matrix(sparse.csr_matrix(w))
    positions = sum(b.inputs.shape[0] for b in grouped.buckets)
    assert positions == 5 * 5  # one group of 3 channels per output position
    assert all(b.rows.shape[1] == 3 for b in grouped.buckets)


def test_grouped_product_equals_seals_multiply_accumulate_bit_for_bit():
    _, moduli, cts, weights, scales, outputs = seal_products((38, 28, 28, 38), 28, 1)
    assert [q.bit_length() for q in moduli] == [38, 28, 28]
    expected = [seal_memory.coefficients(acc).copy() for acc in outputs]
    coefficients = np.stack([seal_memory.coefficients(ct) for ct in cts])
    grouped = rns.GroupedWeights.from_matrix(
        sparse.csr_matrix(rns.scalar_weights(weights, scales[None, :]))
    )
    for limb, q in enumerate(moduli):
        flat = coefficients[:, :, limb, :].reshape(len(cts), -1)
        got = rns.grouped_mod_matmul(grouped, flat, q).reshape(3, 2, -1)
        for o in range(3):
            np.testing.assert_array_equal(got[o], expected[o][:, limb, :])


def test_seal_memory_views_are_the_ciphertexts_own_coefficients(tmp_path):
    context, encoder, encryptor, evaluator = _ckks()
    pt, ct = seal.Plaintext(), seal.Ciphertext()
    encoder.encode([1.0, -2.0], 2.0**28, pt)
    encryptor.encrypt(pt, ct)
    view = seal_memory.coefficients(ct)
    np.testing.assert_array_equal(view, coefficients_by_at(ct))
    other = seal.Ciphertext()
    evaluator.negate(ct, other)
    assert not np.array_equal(seal_memory.coefficients(other), view)
    seal_memory.write_coefficients(other, view)  # written back: the same ciphertext again
    np.testing.assert_array_equal(seal_memory.coefficients(other), view)
    with pytest.raises(ValueError, match="shape"):
        seal_memory.write_coefficients(other, view[:1])


@pytest.mark.parametrize("granularity", ["layer", "element"])
def test_folding_keeps_the_function_and_saves_a_level_per_activation(granularity):
    program = compile_model(poly_cnn(granularity), (1, 8, 8))
    folded = fold_program(program)
    activations = sum(isinstance(s, SquareStage) for s in folded.stages)
    assert activations == 2 and folded.depth == program.depth - activations
    x = np.random.default_rng(0).normal(size=(16, 64))
    np.testing.assert_allclose(folded.run_plain(x), program.run_plain(x), rtol=1e-9, atol=1e-9)


def test_a_large_shift_keeps_x_instead_of_completing_the_square():
    w = sparse.csr_matrix(np.eye(2))
    program = HEProgram(
        (2,),
        [
            LinearStage(w, np.zeros(2)),
            PolyStage(np.array([[0.1, 0.1], [0.5, 0.5], [0.25, 1e-4]])),  # h = 1, h = 2500
            LinearStage(w, np.zeros(2)),
        ],
    )
    folded = fold_program(program)
    square = folded.stages[1]
    assert isinstance(square, SquareStage) and square.kept.tolist() == [1]
    x = np.array([[0.3, -0.7], [1.0, 2.0]])
    np.testing.assert_allclose(folded.run_plain(x), program.run_plain(x), rtol=1e-12)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """A client and a server of the folded poly CNN (N = 8192, 4,096 slots)."""
    model = poly_cnn("element")
    folded = fold_program(compile_model(model, (1, 8, 8)))
    params = folded_parameters(folded.depth)
    client = BatchedClient(params)
    keys = tmp_path_factory.mktemp("keys")
    client.write_server_keys(keys)
    return model, folded, params, client, BatchedServer(keys, params.scale_bits, workers=2)


def test_a_full_batch_of_n_over_2_images_round_trips(engine):
    model, folded, params, client, server = engine
    assert params.poly_modulus_degree == 8192 and params.slots == 4096
    x = np.random.default_rng(0).normal(size=(params.slots, 64))
    out = server.run(folded, client.encrypt(x))
    logits = client.decrypt(out)
    with torch.no_grad():
        expected = model.double()(torch.from_numpy(x).view(-1, 1, 8, 8)).numpy()
    assert logits.shape == (4096, 10) and out.images == 4096
    assert np.abs(logits - expected).max() <= 1e-3 * max(1.0, np.abs(expected).max())
    assert (logits.argmax(1) == expected.argmax(1)).mean() >= 0.999
    names = [t.stage for t in server.timings]
    assert len(names) == len(set(names)) == 8  # every step named once: 3 linear, 3 rescale, 2 sq


def test_a_stage_made_in_blocks_of_rows_equals_one_pass_bit_for_bit(engine, tmp_path):
    """Outputs made and rescaled a few rows at a time, squares made limb by limb: the same
    ciphertexts as the stage made at once."""
    model, folded, params, client, server = engine
    batch = client.encrypt(np.random.default_rng(2).normal(size=(64, 64)))
    whole = server.run(folded, batch)
    per_row = 8 * 3 * params.poly_modulus_degree * len(params.coeff_bits)
    streamed = BatchedServer(server.keys, params.scale_bits, workers=2, block_bytes=3 * per_row)
    out = streamed.run(folded, batch)
    assert np.array_equal(out.data, whole.data) and np.array_equal(out.scales, whole.scales)
    assert [t.stage for t in streamed.timings] == [t.stage for t in server.timings]
    spill = tmp_path / "spill"
    spill.mkdir()
    spilled = BatchedServer(
        server.keys,
        params.scale_bits,
        workers=2,
        block_bytes=3 * per_row,
        spill_dir=spill,
        spill_bytes=0,
    ).run(folded, batch)
    assert np.array_equal(spilled.data, whole.data)  # blocks written to (unlinked) files
    assert list(spill.iterdir()) == []


def test_blocks_bound_the_memory_of_a_stage_that_exceeds_it_in_one_pass(tmp_path):
    """A first stage of 432 outputs: its products (340 MB) made at once exceed 250 MB; in
    blocks of 8 rows, the next stage's squares made a few coefficients at a time, the
    engine's own arrays (traced by numpy's allocation hooks; the stage outputs are shared
    memory, the same in both) stay under it, same bits."""
    import tracemalloc

    torch.manual_seed(0)
    model = create_model("he_cnn", num_classes=10, input_shape=(1, 8, 8), channels=48, hidden=6)
    count_relus(model.eval(), (1, 8, 8))
    replace_activations(model, lambda n, s: PolyAct(2, "element", s.feature_shape))
    folded = fold_program(compile_model(model, (1, 8, 8)))
    params = folded_parameters(folded.depth)
    client = BatchedClient(params)
    client.write_server_keys(tmp_path)
    batch = client.encrypt(np.random.default_rng(3).normal(size=(16, 64)))
    per_row = (len(params.coeff_bits) - 1) * 2 * params.poly_modulus_degree * 8
    bound = 250e6
    peaks, outputs = [], []
    for block_bytes in (None, 8 * per_row):
        server = BatchedServer(tmp_path, params.scale_bits, workers=2, block_bytes=block_bytes)
        tracemalloc.start()
        outputs.append(server.run(folded, batch).data)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[0] > bound > peaks[1]
    assert np.array_equal(outputs[0], outputs[1])


def test_a_short_batch_pads_its_slots_and_decrypts_its_images_only(engine):
    model, folded, params, client, server = engine
    x = np.random.default_rng(1).normal(size=(5, 64))
    logits = client.decrypt(server.run(folded, client.encrypt(x)))
    np.testing.assert_allclose(logits, folded.run_plain(x), atol=1e-3)
    with pytest.raises(ConfigError, match="slots"):
        client.encrypt(np.zeros((params.slots + 1, 64)))


def _exchange(engine, folder, images: int = 64):
    model, folded, params, client, server = engine
    client.write_server_keys(folder / "keys")
    write_program(folded, folder / "program.npz")
    (folder / "request.json").write_text(json.dumps({"scale_bits": params.scale_bits}))
    client.encrypt(np.random.default_rng(2).normal(size=(images, 64))).save(folder / "batch-0000")
    return folder


def test_the_program_file_round_trips(engine, tmp_path):
    folded = engine[1]
    write_program(folded, tmp_path / "p.npz")
    again = read_program(tmp_path / "p.npz")
    x = np.random.default_rng(3).normal(size=(4, 64))
    np.testing.assert_array_equal(again.run_plain(x), folded.run_plain(x))


def test_the_server_refuses_a_secret_key_among_its_keys(engine, tmp_path):
    exchange = _exchange(engine, tmp_path)
    client = engine[3]
    client.keys.save_secret_key(exchange / "keys" / "secret.seal")
    with pytest.raises(ConfigError, match="never a secret key"):
        serve(exchange)
    (exchange / "keys" / "secret.seal").unlink()
    shutil.copy(exchange / "keys" / "public.seal", exchange / "keys" / "extra.seal")
    with pytest.raises(ConfigError, match="exactly"):
        serve(exchange)


def _wait_for_forked_workers(process: subprocess.Popen, timeout: float = 120.0) -> None:
    """Return once ``process`` has forked its workers, i.e. is mid-run (a fixed sleep raced: a fast
    machine had finished the whole batch before it)."""
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the server ended before it forked its workers"
        if children.exists() and children.read_text().strip():
            return
        time.sleep(0.005)
    raise AssertionError(f"the server forked no workers within {timeout:.0f} s")


def test_the_spawned_server_loads_only_public_files_and_leaves_nothing_in_dev_shm(engine, tmp_path):
    exchange = _exchange(engine, tmp_path)
    shm_before = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    command = [sys.executable, "-m", "pifair", "he-serve", str(exchange), "--workers", "2"]
    killed = subprocess.Popen(command)  # killed mid-run: nothing may stay behind
    _wait_for_forked_workers(killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (exchange / "server.json").exists()  # it was killed before it answered
    shm_after = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    assert shm_after <= shm_before
    assert not list(exchange.glob("pifair-stage-*"))  # spilled stage outputs are unlinked
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    report = json.loads((exchange / "server.json").read_text())
    assert sorted(report["key_files_loaded"]) == ["parms.seal", "public.seal", "relin.seal"]
    assert report["pid"] != os.getpid()
    assert 0 < report["peak_rss_bytes"] < report["memory_available_bytes"]
    client = engine[3]
    secret = hashlib.sha256(client.keys.secret_key_bytes()).hexdigest()
    assert secret not in report["key_files_loaded"].values()
    result = CipherBatch.load(exchange / "batch-0000" / "result")
    assert result.images == 64 and client.decrypt(result).shape == (64, 10)


def test_an_answered_exchange_is_refused_and_left_as_it_is(engine, tmp_path):
    exchange = _exchange(engine, tmp_path, images=8)
    serve(exchange)
    report = (exchange / "server.json").read_text()
    with pytest.raises(ConfigError, match="no batch waiting"):
        serve(exchange)
    assert (exchange / "server.json").read_text() == report


def test_a_secret_key_under_a_public_name_is_refused_by_the_server(engine, tmp_path):
    exchange = _exchange(engine, tmp_path, images=8)
    engine[3].keys.save_secret_key(exchange / "keys" / "relin.seal")
    with pytest.raises(ConfigError, match="relin.seal is not the relin key"):
        serve(exchange)


def _squaring_model(name: str, input_shape: tuple[int, ...]) -> torch.nn.Module:
    """A registered model with element-wise degree-2 polynomials whose square terms complete
    (0.1 to 0.3), seeded."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, input_shape=input_shape).eval()
    count_relus(model, input_shape)
    replace_activations(model, lambda n, s: PolyAct(2, "element", s.feature_shape))
    for m in model.modules():
        if isinstance(m, PolyAct):
            m.coefficients.data[2].uniform_(0.1, 0.3)
    return model


def test_lenet5_folds_to_the_stages_counted_by_hand():
    """LeNet-5 with polynomial activations: C1's 4,704 outputs, C3's 1,600 (pooling folded in),
    120, 84, 10; one level per activation, so depth 9 and N = 16384 at 128-bit security."""
    model = _squaring_model("lenet5", (1, 28, 28))
    folded = fold_program(compile_model(model, (1, 28, 28)))
    linear = [s["out"] for s in folded.summary() if s["stage"] == "linear"]
    assert linear == [6 * 28 * 28, 16 * 10 * 10, 120, 84, 10]
    assert folded.depth == 9 and folded_parameters(9).poly_modulus_degree == 16384
    # cut at the poolings, both stay stages of their own: S2 (6x14x14 = 1,176 outputs, 4 terms
    # each: 1,176 key switches instead of C3's 1,600, and C3 reads 6x5x5 = 150 inputs per
    # output, not 600); S4 (400 key switches instead of F5's 120, but F5 reads 400 size-2
    # inputs instead of 1,600 size-3 ones)
    program = compile_model(model, (1, 28, 28), cut_at_pooling=True)
    apart = fold_program(program)
    linear = [(s["out"], s["terms"]) for s in apart.summary() if s["stage"] == "linear"]
    assert linear[1:5] == [(1176, 1176 * 4), (1600, 1600 * 150), (400, 400 * 4), (120, 120 * 400)]
    assert [o for o, _ in linear] == [4704, 1176, 1600, 400, 120, 84, 10] and apart.depth == 11
    assert estimated_cost(apart) < estimated_cost(folded) / 2
    merged = fold_program(program, pooling_stages=False)
    assert [s["out"] for s in merged.summary() if s["stage"] == "linear"] == [
        4704,
        1600,
        120,
        84,
        10,
    ]
    x = np.random.default_rng(0).normal(size=(4, 784))
    np.testing.assert_allclose(apart.run_plain(x), folded.run_plain(x), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(merged.run_plain(x), folded.run_plain(x), rtol=1e-9, atol=1e-9)
    # the two levels they add keep N = 16384 (at a 32-bit scale): the batched engine keeps both
    chosen, params = fold_for_batching(program)
    assert chosen.depth == 11 and (params.poly_modulus_degree, params.scale_bits) == (16384, 32)
    # the SEAL engine runs the program with its cut stages joined again: as compiled uncut
    joined, uncut = program.joined(), compile_model(model, (1, 28, 28))
    assert joined.summary() == uncut.summary()
    np.testing.assert_allclose(joined.run_plain(x), uncut.run_plain(x), rtol=1e-9, atol=1e-9)


def _pooling_program(sites_before: int, linear_feature: int | None = None) -> HEProgram:
    """``sites_before`` dense square sites, then a square, a 4-to-1 pooling (its own stage), a
    dense stage marked ``after_pooling``, a square and the logits. ``linear_feature``: that
    feature of the square before the pooling has no x^2 term (folding keeps x beside it)."""
    rng = np.random.default_rng(0)

    def dense(rows: int, cols: int, **kwargs) -> LinearStage:
        return LinearStage(
            sparse.csr_matrix(rng.normal(size=(rows, cols))), np.zeros(rows), **kwargs
        )

    square = np.array([[0.0], [0.1], [0.2]]) * np.ones((1, 8))  # 0.2 x^2 + 0.1 x: completes
    stages: list = [dense(8, 4)]
    for _ in range(sites_before):
        stages += [PolyStage(square), dense(8, 8)]
    pooling = sparse.kron(sparse.eye(2), np.full((1, 4), 0.25)).tocsr()
    before_pooling = square.copy()
    if linear_feature is not None:
        before_pooling[:, linear_feature] = [0.05, 0.5, 0.0]
    stages += [
        PolyStage(before_pooling),
        LinearStage(pooling, np.zeros(2)),
        dense(6, 2, after_pooling=True),
    ]
    stages += [PolyStage(square[:, :6]), dense(3, 6)]
    return HEProgram((4,), stages)


def test_a_pooling_is_kept_apart_only_where_n_stays_the_same():
    """Kept apart, the pooling saves key switches (2 outputs relinearized, not 6) and products,
    at one level more: taken only where that level fits the same N."""
    program = _pooling_program(0)
    apart, composed = fold_program(program), fold_program(program, pooling_stages=False)
    assert [s["out"] for s in apart.summary() if s["stage"] == "linear"] == [8, 2, 6, 3]
    assert [s["out"] for s in composed.summary() if s["stage"] == "linear"] == [8, 6, 3]
    x = np.random.default_rng(1).normal(size=(5, 4))
    np.testing.assert_allclose(apart.run_plain(x), program.run_plain(x), rtol=1e-9)
    assert (composed.depth, apart.depth) == (5, 6)
    chosen, params = fold_for_batching(program)  # depth 5 fits N = 8192 (28-bit scale), 6 not
    assert chosen.depth == 5 and params.poly_modulus_degree == 8192
    deeper = _pooling_program(1)  # depth 7 and 8 both need N = 16384: apart
    chosen, params = fold_for_batching(deeper)
    assert chosen.depth == 8 and params.poly_modulus_degree == 16384


def test_he_cifar_folds_with_its_first_pooling_apart():
    """he_cifar: 4,096 conv1 outputs, P1 apart (1,024 key switches instead of conv2's 4,096),
    conv2 4,096, P2 apart (1,024 key switches instead of 256, but the dense layer reads 1,024
    size-2 inputs, not 4,096 size-3 ones), 256, 10: depth 9, N = 16384."""
    model = _squaring_model("he_cifar", (3, 32, 32))
    folded, params = fold_for_batching(compile_model(model, (3, 32, 32), cut_at_pooling=True))
    linear = [s["out"] for s in folded.summary() if s["stage"] == "linear"]
    assert linear == [16 * 16 * 16, 16 * 8 * 8, 64 * 8 * 8, 64 * 4 * 4, 256, 10]
    assert folded.depth == 9 and params.poly_modulus_degree == 16384


def test_of_two_poolings_the_one_that_saves_more_is_kept_apart_when_one_level_is_left():
    """At a 24-bit scale N = 8192 holds depth 6: the composed program (5) and one pooling
    apart (6) fit, both apart (7) do not; the one kept apart is the one whose composition
    would relinearize 64 outputs, not 3."""
    rng = np.random.default_rng(0)

    def dense(rows: int, cols: int, **kwargs) -> LinearStage:
        return LinearStage(
            sparse.csr_matrix(rng.normal(size=(rows, cols))), np.zeros(rows), **kwargs
        )

    def square(features: int) -> PolyStage:
        return PolyStage(np.array([[0.0], [0.1], [0.2]]) * np.ones((1, features)))

    def pooling(features: int) -> LinearStage:
        return LinearStage(
            sparse.kron(sparse.eye(2), np.full((1, features // 2), 2 / features)).tocsr(),
            np.zeros(2),
        )

    stages = [dense(8, 4), square(8), pooling(8), dense(64, 2, after_pooling=True)]
    stages += [square(64), pooling(64), dense(3, 2, after_pooling=True)]
    program = HEProgram((4,), stages)
    assert fold_program(program).poolings_apart == (3, 6)  # each pays on its own
    chosen, params = fold_for_batching(program, scale_bits=24)
    assert chosen.poolings_apart == (3,) and chosen.depth == 6
    assert params.poly_modulus_degree == 8192
    x = np.random.default_rng(1).normal(size=(5, 4))
    np.testing.assert_allclose(chosen.run_plain(x), program.run_plain(x), rtol=1e-9)


def test_a_pooling_kept_apart_runs_encrypted_as_in_plaintext(tmp_path):
    """The pooling stage reads the size-3 squares (its outputs relinearized, two rescales), the
    stage after it size-2 ciphertexts (one rescale): the decrypted logits match the program."""
    program = _pooling_program(0)
    folded = fold_program(program)
    assert folded.poolings_apart and folded.depth == 6
    params = folded_parameters(folded.depth)
    client = BatchedClient(params)
    client.write_server_keys(tmp_path / "keys")
    server = BatchedServer(tmp_path / "keys", params.scale_bits, workers=2)
    x = np.random.default_rng(3).normal(size=(64, 4))
    logits = client.decrypt(server.run(folded, client.encrypt(x)))
    expected = program.run_plain(x)
    assert np.abs(logits - expected).max() <= 1e-4 * max(1.0, np.abs(expected).max())
    rescales = [
        (t.stage.split(". ")[1], t.operations) for t in server.timings if "rescale" in t.stage
    ]
    assert rescales == [("rescale x8", 8), ("rescale x2", 4), ("rescale x6", 6), ("rescale x3", 6)]


def test_restricted_rows_read_the_square_of_their_sources_only():
    rng = np.random.default_rng(0)
    features, kept = 10, np.array([2, 7])
    weights = sparse.random(4, features + len(kept), density=0.3, random_state=1, format="csr")
    weights[3, features + 1] = 1.5  # reads x[7] as kept
    source, restricted, kept_sub = restrict_to_sources(weights, features, kept)
    x = rng.normal(size=(5, features))
    full = np.concatenate([x**2, x[:, kept]], axis=1)
    sub = x[:, source]
    np.testing.assert_allclose(
        (restricted @ np.concatenate([sub**2, sub[:, kept_sub]], axis=1).T).T,
        (weights @ full.T).T,
        rtol=1e-12,
    )
    assert set(source) <= set(range(features)) and 7 in source


def test_a_stage_fused_with_the_pooling_after_its_square_equals_both_bit_for_bit(
    tmp_path, monkeypatch
):
    """Over fuse_bytes, the stage before a square and the pooling after it run a block of
    pooling rows at a time: only the outputs a block reads are made, and the ciphertexts are
    the same bits as the stages run one after the other (a feature kept beside its square
    included)."""
    folded = fold_program(_pooling_program(0, linear_feature=5))
    assert folded.poolings_apart and len(folded.stages[1].kept) == 1
    params = folded_parameters(folded.depth)
    client = BatchedClient(params)
    client.write_server_keys(tmp_path / "keys")
    batch = client.encrypt(np.random.default_rng(3).normal(size=(64, 4)))
    whole = BatchedServer(tmp_path / "keys", params.scale_bits, workers=2)
    expected = whole.run(folded, batch)
    made = []
    real = batched_module.StageOutput

    def recording(shape, spill, **kwargs):
        made.append(shape[1])
        return real(shape, spill, **kwargs)

    monkeypatch.setattr(batched_module, "StageOutput", recording)
    fused = BatchedServer(tmp_path / "keys", params.scale_bits, workers=2, fuse_bytes=1)
    got = fused.run(folded, batch)
    np.testing.assert_array_equal(got.data, expected.data)
    assert made[:3] == [2, 4, 4]  # the pooling's 2 rows, then the 4 first-stage rows each reads
    assert [t.stage.replace(" (fused)", "") for t in fused.timings] == [
        t.stage for t in whole.timings
    ]
