"""Private inference for real: CKKS (``he``, TenSEAL) and 2PC/3PC (``mpc``, SPU)."""
