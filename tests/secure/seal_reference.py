"""SEAL used directly (TenSEAL's sealapi), as the tests' reference for what the engines
compute: its own multiply-accumulate, its own coefficient accessor, a small polynomial CNN."""

from __future__ import annotations

import numpy as np
import tenseal.sealapi as seal
import torch
from torch import nn

from pifair.models import create_model
from pifair.relu import count_relus, replace_activations
from pifair.relu.polynomial import PolyAct


def poly_cnn(granularity: str = "element") -> nn.Module:
    torch.manual_seed(0)
    model = create_model(
        "he_cnn", num_classes=10, input_shape=(1, 8, 8), channels=2, hidden=6
    ).eval()
    count_relus(model, (1, 8, 8))
    replace_activations(model, lambda n, s: PolyAct(2, granularity, s.feature_shape))
    for m in model.modules():
        if isinstance(m, PolyAct):
            m.coefficients.data.normal_(0, 0.3)
    return model


def ckks(bits=(60, 40, 40, 60), n: int = 8192):
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
    context, encoder, encryptor, evaluator = ckks(bits)
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


def coefficients_by_at(ct) -> np.ndarray:
    """A ciphertext's coefficients (size, limbs, N) read one at a time through sealapi's own
    accessor: slow, and independent of :mod:`pifair.secure.he.seal_memory`."""
    shape = (ct.size(), ct.coeff_modulus_size(), ct.poly_modulus_degree())
    data = ct.dyn_array()
    return np.array([data.at(i) for i in range(int(np.prod(shape)))], dtype=np.uint64).reshape(
        shape
    )
