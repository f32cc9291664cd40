import pytest

from pifair.errors import MissingExtraError
from pifair.extras import require


def test_missing_extra_names_the_install_command():
    with pytest.raises(MissingExtraError, match=r"pip install 'pifair\[he\]'"):
        require("surely_not_installed_pkg", extra="he", purpose="CKKS inference")


def test_present_module_is_returned():
    assert require("json", extra="none", purpose="test").dumps([1]) == "[1]"
