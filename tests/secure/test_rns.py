"""The RNS linear layer: an exact modular matrix product (checked against Python integers) that
equals SEAL's own multiply-accumulate bit for bit, and a CKKS program run through it that
decrypts to the same logits as SEAL's path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import sparse

pytest.importorskip("tenseal")
pytest.importorskip("zstandard")

import tenseal.sealapi as seal  # noqa: E402
from tests.secure.test_he import _poly_cnn  # noqa: E402

from pifair.secure.he import rns  # noqa: E402
from pifair.secure.he.compile import compile_model  # noqa: E402
from pifair.secure.he.engine import HEClient, HEServer  # noqa: E402
from pifair.secure.he.params import choose_parameters  # noqa: E402

pytestmark = pytest.mark.he

PRIMES = [1152921504606748673, 1099511480321, 2**31 - 1]  # a 60-bit, a 40-bit, a 31-bit prime


@pytest.mark.parametrize("q", PRIMES)
@pytest.mark.parametrize("as_sparse", [False, True])
def test_mod_matmul_is_exact(q, as_sparse):
    rng = np.random.default_rng(q % 1000)
    x = rng.integers(0, q, size=(37, 21), dtype=np.uint64)
    x[0, :3] = [0, q - 1, q // 2]  # the edges of the centered digits
    w = rng.integers(-(2**45), 2**45, size=(5, 37))
    w[1, 4:] = 0
    got = rns.mod_matmul(sparse.csr_matrix(w) if as_sparse else w, x, q)
    want = [[sum(int(a) * int(b) for a, b in zip(row, col)) % q for col in x.T] for row in w]
    assert got.dtype == np.uint64 and got.tolist() == want


def test_scalar_weights_round_half_away_from_zero_like_seal():
    got = rns.scalar_weights(np.array([0.5, -0.5, 1.5, -2.5, 0.25]), np.ones(5))
    assert got.tolist() == [1, -1, 2, -3, 0]


def _ckks(bits=(60, 40, 40, 60), n: int = 8192):
    parms = seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS)
    parms.set_poly_modulus_degree(n)
    parms.set_coeff_modulus(seal.CoeffModulus.Create(n, list(bits)))
    context = seal.SEALContext(parms, True, seal.SEC_LEVEL_TYPE.TC128)
    keygen = seal.KeyGenerator(context)
    public = seal.PublicKey()
    keygen.create_public_key(public)
    encoder = seal.CKKSEncoder(context)
    return context, encoder, seal.Encryptor(context, public), seal.Evaluator(context)


def seal_products(bits, scale_bits: int, seed: int):
    """Six encrypted columns, 3 x 6 weights (one zero) and SEAL's own multiply_plain + add of
    each output, every plaintext at Delta q / s as the engines encode it: the reference of the
    matrix-product layers. Returns (evaluator, moduli, inputs, weights, scales, outputs)."""
    context, encoder, encryptor, evaluator = _ckks(bits)
    rng = np.random.default_rng(seed)
    cts = []
    for column in rng.normal(size=(6, 40)):
        pt, ct = seal.Plaintext(), seal.Ciphertext()
        encoder.encode(column.tolist(), 2.0**scale_bits, pt)
        encryptor.encrypt(pt, ct)
        cts.append(ct)
    weights = rng.normal(size=(3, 6))
    weights[0, 2] = 0.0
    moduli = [m.value() for m in context.first_context_data().parms().coeff_modulus()]
    scales = np.array([2.0**scale_bits * moduli[-1] / ct.scale for ct in cts])
    outputs = []
    for o in range(3):  # SEAL: one multiply_plain per weight, then additions
        acc = None
        for j, ct in enumerate(cts):
            if weights[o, j] == 0.0:
                continue
            pt, term = seal.Plaintext(), seal.Ciphertext()
            encoder.encode(float(weights[o, j]), ct.parms_id(), float(scales[j]), pt)
            evaluator.multiply_plain(ct, pt, term)
            if acc is None:
                acc = term
            else:
                term.scale = acc.scale
                evaluator.add_inplace(acc, term)
        outputs.append(acc)
    return evaluator, moduli, cts, weights, scales, outputs


def test_matrix_product_equals_seals_multiply_accumulate_bit_for_bit(tmp_path):
    evaluator, moduli, cts, weights, scales, outputs = seal_products((60, 40, 40, 60), 40, 0)
    scratch = tmp_path / "ct"
    expected = [rns.read_coefficients(acc, scratch) for acc in outputs]
    coefficients = np.stack([rns.read_coefficients(ct, scratch) for ct in cts])
    integer = sparse.csr_matrix(rns.scalar_weights(weights, scales[None, :]))
    for limb, q in enumerate(moduli):
        flat = coefficients[:, :, limb, :].reshape(len(cts), -1)
        got = rns.mod_matmul(integer, flat, q).reshape(3, 2, -1)
        for o in range(3):
            np.testing.assert_array_equal(got[o], expected[o][:, limb, :])
    # and the coefficients go back into a ciphertext unchanged
    copy = seal.Ciphertext()
    evaluator.negate(cts[1], copy)
    rns.write_coefficients(copy, coefficients[1], scratch)
    np.testing.assert_array_equal(rns.read_coefficients(copy, scratch), coefficients[1])


def test_a_program_through_the_rns_layers_decrypts_like_seals(digits):
    model = _poly_cnn("element")
    program = compile_model(model, (1, 8, 8))
    client = HEClient(choose_parameters(program.depth))
    keys = client.server_keys()
    x = digits.normalize(digits.test.x[:10]).double()
    results = {}
    for linear in ("seal", "rns"):
        server = HEServer(keys, linear=linear)
        results[linear] = client.decrypt(server.run(program, client.encrypt(x.numpy())), batch=10)
    with torch.no_grad():
        expected = model.double()(x).numpy()
    scale = max(1.0, np.abs(expected).max())
    assert np.abs(results["rns"] - expected).max() <= 1e-4 * scale
    assert np.abs(results["rns"] - results["seal"]).max() <= 1e-5 * scale
    assert (results["rns"].argmax(1) == expected.argmax(1)).all()


def test_forked_readers_read_what_one_process_reads(tmp_path):
    context, encoder, encryptor, _ = _ckks()
    cts = []
    for value in range(9):
        pt, ct = seal.Plaintext(), seal.Ciphertext()
        encoder.encode([float(value)] * 4, 2.0**40, pt)
        encryptor.encrypt(pt, ct)
        cts.append(ct)
    client = HEClient(choose_parameters(1))
    one = HEServer(client.server_keys(tmp_path / "keys"), workers=1)
    two = HEServer(client.server_keys(tmp_path / "keys2"), workers=2)
    np.testing.assert_array_equal(
        one._read_coefficients(cts, str(tmp_path)), two._read_coefficients(cts, str(tmp_path))
    )
