import sys

import pytest

from pifair.errors import MissingExtraError
from pifair.extras import require


def test_missing_extra_names_the_install_command():
    with pytest.raises(MissingExtraError, match=r"pip install 'pifair\[he\]'"):
        require("surely_not_installed_pkg", extra="he", purpose="CKKS inference")


def test_present_module_is_the_installed_module():
    import tenseal

    assert require("tenseal", extra="he", purpose="CKKS inference") is tenseal


def test_mpc_without_spu_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "spu", None)  # as if the mpc extra were not installed
    from pifair.secure.mpc.engine import MPCSettings, run_party

    with pytest.raises(MissingExtraError, match=r"'spu'.*pip install 'pifair\[mpc\]'"):
        run_party(0, None, MPCSettings())
