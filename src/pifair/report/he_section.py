"""Report section of ``pifair he-infer``."""

from __future__ import annotations

from ..runs import Run
from .html import pct, register_section, table


@register_section("he-infer")
def he_section(run: Run) -> str:
    m = run.metrics
    if "encrypted_accuracy" not in m:
        return "<p>he-infer not finished.</p>"
    p, s = m["params"], m["seconds"]
    check = m.get("server_key_check", {})
    if check.get("server_holds_no_secret_key"):
        where = (
            "a separate process that loaded only "
            if check.get("server_separate_process")
            else "its key folder held only "
        )
        keys = (
            f"The server held no secret key (checked: {where}"
            f"{', '.join(check['files'])}, none of them the client's secret key)."
        )
    elif check:
        keys = (
            f"<b>Warning: the server's key folder held {', '.join(check['files'])}, not only "
            "the public files.</b>"
        )
    else:
        keys = "The server's keys were not checked by this (older) run."
    stages = [[name, f"{sec:.1f}"] for name, sec in s["stages"].items()]
    return "".join(
        [
            f"<p>{m['images']:,} test images of <code>{run.config.get('from')}</code> under CKKS "
            f"({m.get('engine', 'seal')} engine), "
            "one image per slot "
            f"({m['batches']} ciphertext batch(es) of {m['batch']:,}): N = "
            f"{p['poly_modulus_degree']:,}, "
            f"log Q = {p['log_q']} of {p['max_log_q']} allowed at 128-bit security, depth "
            f"{m['depth']}, scale 2^{p['scale_bits']}. "
            f"{keys}</p>",
            table(
                [
                    "encrypted accuracy",
                    "plaintext accuracy",
                    "argmax agreement",
                    "max logit error",
                    "server time",
                    "amortized per image",
                ],
                [
                    [
                        pct(m["encrypted_accuracy"]),
                        pct(m["plaintext_accuracy"]),
                        pct(m["argmax_agreement"]),
                        f"{m['max_logit_error']:.1e}",
                        f"{s['server']:.1f} s",
                        f"{m['amortized_ms_per_image']:.2f} ms",
                    ]
                ],
            ),
            "<p class='meta'>Encrypt "
            f"{s['encrypt']:.1f} s, decrypt {s['decrypt']:.1f} s, key generation {s['keygen']:.1f} "
            "s; input ciphertext "
            f"{m['input_ciphertext_bytes'] / 2**20:.2f} MiB x {m['input_ciphertexts']}, output "
            f"{m['output_ciphertext_bytes'] / 2**20:.2f} MiB.</p>",
            table(["server stage", "seconds"], stages),
            _comparison(m),
        ]
    )


def _comparison(m: dict) -> str:
    if "image_layout" not in m:
        return ""
    il, c = m["image_layout"], m["batch_vs_image_layout"]
    rows = [
        [
            "batch-oriented (one image per slot)",
            f"{m['batch']:,}",
            f"{c['amortized_ms_per_image']:.1f}",
            pct(m["argmax_agreement"]),
        ],
        [
            f"one image per ciphertext ({il['features_per_ciphertext']} features, "
            f"{il['rotation_keys']} rotation keys)",
            "1",
            f"{c['image_layout_ms_per_image']:.0f}",
            pct(il["argmax_agreement"]),
        ],
    ]
    return (
        "<h4>Against one image per ciphertext</h4>"
        + table(["layout", "images per ciphertext", "ms per image", "agreement"], rows)
        + f"<p>Batch packing takes {100 * c['time_reduction']:.1f}% less time per image; the "
        "latency of a single query is the other way round.</p>"
    )
