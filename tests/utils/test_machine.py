"""The machine reader: CPU model and flags from /proc/cpuinfo, unknown where it is missing."""

from __future__ import annotations

import pytest

from resdet.engine import amp
from resdet.utils import machine

AMX_XEON = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile
processor\t: 1
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile
"""
AVX2_EPYC = """processor\t: 0
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse2 avx2 avx512_bf16x
"""


@pytest.fixture
def cpuinfo(tmp_path, monkeypatch):
    """Point the reader at a file written by the test (None: a missing file)."""

    def use(text: str | None) -> None:
        path = tmp_path / "cpuinfo"
        if text is not None:
            path.write_text(text)
        monkeypatch.setattr(machine, "CPUINFO", str(path))
        machine._read_cpuinfo.cache_clear()

    yield use
    machine._read_cpuinfo.cache_clear()


def test_amx_xeon(cpuinfo):
    cpuinfo(AMX_XEON)
    assert machine.cpu_model() == "Intel(R) Xeon(R) Processor"
    assert {"avx2", "avx512f", "amx_tile"} <= machine.cpu_flags()
    assert machine.cpu_has_native_bf16() and amp.cpu_has_native_bf16()
    info = machine.machine_info(threads=3)
    assert info["isa"] == ["avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"]
    assert info["cpu"] == "Intel(R) Xeon(R) Processor" and info["threads"] == 3
    assert info["vendor"] == "intel"  # vendor_id GenuineIntel


def test_avx2_only_flags_are_whole_words(cpuinfo):
    cpuinfo(AVX2_EPYC)
    assert machine.cpu_model() == "AMD EPYC 7B13"
    # 'avx512_bf16x' is not 'avx512_bf16': flags are matched as words, not substrings.
    assert not machine.cpu_has_flag("avx512_bf16") and machine.cpu_has_flag("avx2")
    assert not machine.cpu_has_native_bf16()
    assert machine.machine_info()["isa"] == ["avx2"]
    assert machine.cpu_vendor() == "amd"  # no vendor_id: from the model name


def test_vendor_id_names_a_cpu_whose_model_name_does_not(cpuinfo):
    cpuinfo("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: Common KVM processor\n")
    assert machine.cpu_vendor() == "amd"
    assert machine.cpu_vendor("Intel(R) Xeon(R) Processor") == "intel"  # a name given: its own


def test_unknown_machine(cpuinfo):
    cpuinfo(None)  # not Linux: no /proc/cpuinfo
    assert machine.cpu_flags() is None
    assert not machine.cpu_has_flag("avx2")
    assert machine.cpu_has_native_bf16()  # assume a modern CPU rather than warn wrongly
    info = machine.machine_info()
    assert info["isa"] == [] and info["cpu"]  # platform's name, never empty
    assert info["vendor"] in ("amd", "intel", "")  # from platform's name, if it says
    assert set(info) == {"cpu", "vendor", "isa", "cores", "threads", "torch", "python", "cuda",
                         "loadavg"}  # fmt: skip
