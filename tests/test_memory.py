"""The malloc settings minunet applies on import, and the ways to keep it from doing so."""

import os
import subprocess
import sys

import pytest

PROBE = "import minunet.kernels.memory as m; print(m.applied)"


def applied(**env_changes: str | None) -> str:
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith("MALLOC_") or k in ("MINUNET_MALLOC", "GLIBC_TUNABLES"))}
    for key, value in env_changes.items():
        if value is not None:
            env[key] = value
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                         text=True, check=True)
    return out.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_applied_on_import_with_glibc():
    import ctypes
    try:
        ctypes.CDLL(None).gnu_get_libc_version  # noqa: B018
    except AttributeError:
        pytest.skip("not glibc")
    assert applied() == "True"


def test_user_opt_out_is_respected():
    assert applied(MINUNET_MALLOC="default") == "False"


@pytest.mark.parametrize("name, value", [("MALLOC_TOP_PAD_", "0"),
                                         ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0")])
def test_users_own_malloc_settings_win(name, value):
    assert applied(**{name: value}) == "False"
