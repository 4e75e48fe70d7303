"""The native kernel cache (kernels/native_build.py) loads only what it built: a planted or
modified library, or one in a folder or file others can write, is refused (its code never
runs) and the XLA path is used; the cache folder is private; the compile is announced."""

import hashlib
import json
import os
import stat
import subprocess

import pytest

from grn_jax.graphs import resolve_impl
from grn_jax.kernels import native_build

PLANT_C = r"""
#include <stdio.h>
#include <stdlib.h>
__attribute__((constructor)) static void planted(void) {
  const char* p = getenv("GRN_JAX_TEST_MARKER");
  if (p) { FILE* f = fopen(p, "w"); if (f) { fputs("ran", f); fclose(f); } }
}
"""

CXX = native_build._compiler()
pytestmark = pytest.mark.skipif(CXX is None or os.name != "posix", reason="needs a C compiler on POSIX")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty GRN_JAX_CACHE_DIR, a fresh loader state, and a marker the planted library writes."""
    monkeypatch.setenv("GRN_JAX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("GRN_JAX_TEST_MARKER", str(tmp_path / "ran"))
    monkeypatch.setattr(native_build, "_state", {})
    return tmp_path


def _plant(tmp_path, record_sha=None, name="planted"):
    """A shared library with a constructor, at the cache's library name, with a build record."""
    d = tmp_path / "cache" / "native"
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    src = tmp_path / "plant.c"
    src.write_text(PLANT_C)
    lib = d / f"libgrn_cpu_{name}.so"
    subprocess.run([CXX, "-x", "c", "-shared", "-fPIC", str(src), "-o", str(lib)], check=True, timeout=120)
    os.chmod(lib, 0o700)
    digest = hashlib.sha256(lib.read_bytes()).hexdigest()
    record = native_build.record_path(CXX)
    record.write_text(json.dumps({"library": lib.name, "sha256": record_sha or digest}))
    os.chmod(record, 0o600)
    return lib, record


def _refused(tmp_path, match):
    assert native_build.load() is None
    reason = native_build.unavailable_reason()
    assert "native CPU kernel not loaded, using XLA: refusing" in reason and match in reason, reason
    assert not (tmp_path / "ran").exists(), "the refused library's code ran"
    with pytest.raises(ValueError, match="impl='native' cannot run here: native CPU kernel not loaded"):
        resolve_impl("native")


def test_replaced_library_is_refused_and_never_runs(cache, caplog):
    _plant(cache, record_sha="0" * 64)  # the record holds the hash of what was built, not of this file
    with caplog.at_level("WARNING", logger=native_build.log.name):
        _refused(cache, "differs from the 0000000000000000... recorded when it was built")
    assert any("refusing" in r.getMessage() for r in caplog.records)  # the reason is logged


def test_modified_library_is_refused(cache):
    lib, _ = _plant(cache)
    with open(lib, "ab") as f:  # one byte appended after the build record was written
        f.write(b"\0")
    _refused(cache, f"refusing {lib}: its SHA-256")


def test_writable_or_foreign_files_are_refused(cache, monkeypatch):
    lib, record = _plant(cache)
    os.chmod(lib, 0o770)
    _refused(cache, "is group- or world-writable (mode 770)")
    os.chmod(lib, 0o700)
    os.chmod(record, 0o606)
    monkeypatch.setattr(native_build, "_state", {})
    _refused(cache, f"refusing build record {record}: it is group- or world-writable")
    os.chmod(record, 0o600)
    # a folder that belongs to someone else (as seen by a process running as another uid)
    monkeypatch.setattr(native_build, "_state", {})
    real_geteuid = os.geteuid
    real = real_geteuid()
    monkeypatch.setattr(native_build.os, "geteuid", lambda: real + 1)
    _refused(cache, f"refusing cache folder {record.parent}: owned by uid {real}, not by you")
    monkeypatch.setattr(native_build.os, "geteuid", real_geteuid)
    if real == 0:  # root can hand the file to another user: the owner check on the file itself
        monkeypatch.setattr(native_build, "_state", {})
        os.chown(lib, 12345, -1)
        _refused(cache, f"refusing cached library {lib}: owned by uid 12345")
        os.chown(lib, 0, -1)
    # positive control: the same file, yours, private and matching its record, IS loaded (its
    # constructor runs; it then lacks the FFI symbols) -- so the refusals above are the checks' doing
    monkeypatch.setattr(native_build, "_state", {})
    assert native_build.load() is None
    assert "build/load failed" in native_build.unavailable_reason()
    assert (cache / "ran").read_text() == "ran"


def test_cache_folder_is_created_private_and_the_compile_is_announced(cache, monkeypatch, caplog):
    calls = []

    def fake_compile(cmd, **kwargs):  # no real 15-60 s build: record the order, then fail
        calls.append(["compile", any("compiling native CPU diffusion kernel (first use" in r.getMessage()
                                     for r in caplog.records)])
        return subprocess.CompletedProcess(cmd, 1, "", "simulated compiler error")

    monkeypatch.setattr(native_build.subprocess, "run", fake_compile)
    with caplog.at_level("WARNING", logger=native_build.log.name):
        assert native_build.load() is None
    assert calls == [["compile", True]]  # the line came before the compiler ran
    assert "simulated compiler error" in native_build.unavailable_reason()
    d = cache / "cache" / "native"
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700 and stat.S_IMODE(os.stat(d.parent).st_mode) == 0o700
    assert [p.name for p in d.iterdir()] == []  # the failed build left no temporary file
    # an existing, looser folder of yours is tightened
    os.chmod(d, 0o755)
    monkeypatch.setattr(native_build, "_state", {})
    native_build.load()
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700


def test_real_build_records_the_hash_of_its_library():
    """The default cache (shared with the other kernel tests): the record names a private file
    whose SHA-256, computed here independently, is the recorded one."""
    if native_build.load() is None:
        pytest.skip(native_build.unavailable_reason())
    record = native_build.record_path(CXX)
    info = json.loads(record.read_text())
    lib = record.parent / info["library"]
    assert hashlib.sha256(lib.read_bytes()).hexdigest() == info["sha256"]
    for p in (record, lib, record.parent):
        st = os.stat(p)
        assert st.st_uid == os.geteuid() and not st.st_mode & 0o022, p
    assert stat.S_IMODE(os.stat(record.parent).st_mode) == 0o700
