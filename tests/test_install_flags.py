"""scripts/llama_cmake_args.sh: the x86 feature flags install.sh builds llama.cpp with (never AMX, see install.sh)."""

import platform
import re
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "llama_cmake_args.sh"

# /proc/cpuinfo "flags" lines as the kernel prints them. This 2-core AMD EPYC (Zen 4) test machine's own:
ZEN4 = (
    "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht syscall nx "
    "mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology nonstop_tsc cpuid extd_apicid "
    "tsc_known_freq pni pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt tsc_deadline_timer aes xsave "
    "avx f16c rdrand hypervisor lahf_lm cmp_legacy cr8_legacy abm sse4a misalignsse 3dnowprefetch osvw topoext "
    "vmmcall fsgsbase tsc_adjust bmi1 avx2 smep bmi2 erms invpcid avx512f avx512dq rdseed adx smap avx512ifma "
    "clflushopt clwb avx512cd sha_ni avx512bw avx512vl xsaveopt xsavec xgetbv1 xsaves avx512_bf16 clzero "
    "xsaveerptr arat avx512vbmi umip avx512_vbmi2 gfni vaes vpclmulqdq avx512_vnni avx512_bitalg avx512_vpopcntdq "
    "rdpid fsrm"
)
# A Sapphire Rapids Xeon (KVM guest), the kind of AMX machine where -march=native builds crashed:
SPR = (
    "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ss ht syscall "
    "nx pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology nonstop_tsc cpuid pni pclmulqdq monitor ssse3 fma cx16 "
    "pcid sse4_1 sse4_2 x2apic movbe popcnt tsc_deadline_timer aes xsave avx f16c rdrand hypervisor lahf_lm abm "
    "3dnowprefetch cpuid_fault invpcid_single ssbd ibrs ibpb stibp ibrs_enhanced fsgsbase tsc_adjust bmi1 avx2 smep "
    "bmi2 erms invpcid avx512f avx512dq rdseed adx smap avx512ifma clflushopt clwb avx512cd sha_ni avx512bw avx512vl "
    "xsaveopt xsavec xgetbv1 xsaves avx_vnni avx512_bf16 wbnoinvd arat avx512vbmi umip pku ospke waitpkg "
    "avx512_vbmi2 gfni vaes vpclmulqdq avx512_vnni avx512_bitalg avx512_vpopcntdq rdpid cldemote movdiri movdir64b "
    "fsrm md_clear serialize tsxldtrk arch_lbr amx_bf16 avx512_fp16 amx_tile amx_int8 arch_capabilities"
)
# A Skylake desktop (i7-6700): AVX2, no AVX512:
SKYLAKE = (
    "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush dts acpi mmx fxsr sse sse2 ss ht "
    "tm pbe syscall nx pdpe1gb rdtscp lm constant_tsc art arch_perfmon pebs bts rep_good nopl xtopology nonstop_tsc "
    "cpuid aperfmperf pni pclmulqdq dtes64 monitor ds_cpl vmx smx est tm2 ssse3 sdbg fma cx16 xtpr pdcm pcid sse4_1 "
    "sse4_2 x2apic movbe popcnt tsc_deadline_timer aes xsave avx f16c rdrand lahf_lm abm 3dnowprefetch cpuid_fault "
    "epb invpcid_single pti ssbd ibrs ibpb stibp tpr_shadow vnmi flexpriority ept vpid ept_ad fsgsbase tsc_adjust "
    "bmi1 hle avx2 smep bmi2 erms invpcid rtm mpx rdseed adx smap clflushopt intel_pt xsaveopt xsavec xgetbv1 xsaves "
    "dtherm ida arat pln pts hwp hwp_notify hwp_act_window hwp_epp md_clear flush_l1d"
)
# A Sandy Bridge (2011): AVX but no AVX2, FMA, F16C or BMI2:
SANDY_BRIDGE = (
    "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush dts acpi mmx fxsr sse sse2 ss ht "
    "tm pbe syscall nx rdtscp lm constant_tsc arch_perfmon pebs bts nopl xtopology nonstop_tsc cpuid aperfmperf pni "
    "pclmulqdq dtes64 monitor ds_cpl vmx est tm2 ssse3 cx16 xtpr pdcm pcid sse4_1 sse4_2 x2apic popcnt "
    "tsc_deadline_timer aes xsave avx lahf_lm epb pti ssbd ibrs ibpb stibp xsaveopt dtherm ida arat pln pts"
)
X86_OPTIONS = ("SSE42", "AVX", "AVX2", "FMA", "F16C", "BMI2", "AVX_VNNI", "AVX512", "AVX512_VBMI", "AVX512_VNNI",
               "AVX512_BF16")  # fmt: skip
# What each option compiles with, as ggml/src/ggml-cpu/CMakeLists.txt (llama.cpp vendored by llama-cpp-python 0.3.36)
# spells it for GCC; GGML_AVX512 alone adds five -mavx512* flags.
GCC_FLAGS = {"SSE42": ["sse4.2"], "AVX": ["avx"], "AVX2": ["avx2"], "FMA": ["fma"], "F16C": ["f16c"],
             "BMI2": ["bmi2"], "AVX_VNNI": ["avxvnni"],
             "AVX512": ["avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"], "AVX512_VBMI": ["avx512vbmi"],
             "AVX512_VNNI": ["avx512vnni"], "AVX512_BF16": ["avx512bf16"]}  # fmt: skip


def cmake_args(cpuinfo: Path | str, arch: str = "x86_64") -> dict[str, str]:
    out = subprocess.run(["bash", str(SCRIPT), str(cpuinfo), arch], capture_output=True, text=True, check=True)
    pairs = [a.removeprefix("-D").split("=", 1) for a in out.stdout.split()]
    assert all(len(p) == 2 and p[0].startswith("GGML_") for p in pairs), out.stdout
    return {k: v for k, v in pairs}


def write_cpuinfo(tmp_path: Path, *flag_lines: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text("".join(f"processor\t: {i}\nmodel name\t: x\nflags\t\t: {f}\nbugs\t\t: spectre_v1\n\n"
                            for i, f in enumerate(flag_lines)))  # fmt: skip
    return path


def enabled(args: dict[str, str]) -> set[str]:
    return {k.removeprefix("GGML_") for k, v in args.items() if v == "ON"}


def assert_no_amx(args: dict[str, str]) -> None:
    assert args["GGML_NATIVE"] == "OFF"  # -march=native would turn AMX on behind our back
    assert [args[f"GGML_AMX_{unit}"] for unit in ("TILE", "INT8", "BF16")] == ["OFF"] * 3


AVX2_SET = {"SSE42", "AVX", "AVX2", "FMA", "F16C", "BMI2"}
AVX512_SET = {"AVX512", "AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16"}


@pytest.mark.parametrize(
    ("flags", "want"),
    [
        (ZEN4, AVX2_SET | AVX512_SET),
        (SPR, AVX2_SET | AVX512_SET | {"AVX_VNNI"}),
        (SKYLAKE, AVX2_SET),
        (SANDY_BRIDGE, {"SSE42", "AVX"}),
    ],
    ids=["zen4", "sapphire-rapids-amx", "skylake-avx2", "sandy-bridge-avx"],
)
def test_each_cpu_gets_its_own_vector_units_and_never_amx(tmp_path: Path, flags: str, want: set[str]) -> None:
    args = cmake_args(write_cpuinfo(tmp_path, flags, flags))
    assert_no_amx(args)
    assert set(args) == {f"GGML_{o}" for o in (*X86_OPTIONS, "NATIVE", "AMX_TILE", "AMX_INT8", "AMX_BF16")}
    assert enabled(args) == want


def test_a_feature_one_core_lacks_stays_off(tmp_path: Path) -> None:
    # Every core must have it: a machine whose second "flags" line lacks AVX512 (as a hybrid CPU could) gets AVX2.
    args = cmake_args(write_cpuinfo(tmp_path, ZEN4, SKYLAKE))
    assert enabled(args) == AVX2_SET
    # AVX512's extensions are not switched on without AVX512 itself (GGML_AVX512 needs all of F/CD/VL/DQ/BW).
    partial = ZEN4.replace(" avx512cd", "")
    args = cmake_args(write_cpuinfo(tmp_path, partial))
    assert AVX512_SET.isdisjoint(enabled(args))


def test_unreadable_cpuinfo_gets_the_portable_avx2_set_and_other_cpus_llama_cpps_defaults(tmp_path: Path) -> None:
    args = cmake_args(tmp_path / "missing")
    assert_no_amx(args)
    assert enabled(args) == {"AVX", "AVX2", "FMA", "F16C", "BMI2"}
    (tmp_path / "no-flags").write_text("processor\t: 0\nvendor_id\t: GenuineIntel\n")  # no "flags" line at all
    assert cmake_args(tmp_path / "no-flags") == args
    for arch in ("aarch64", "arm64", "ppc64le"):
        assert cmake_args(write_cpuinfo(tmp_path, ZEN4), arch) == {}


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64") or shutil.which("gcc") is None,
                    reason="compares with GCC's x86 -march=native detection")  # fmt: skip
def test_this_machine_matches_what_gcc_detects_minus_amx() -> None:
    # An independent reading of the same CPU: GCC's -march=native asks CPUID (and XGETBV) itself.
    out = subprocess.run(["gcc", "-march=native", "-Q", "--help=target"], capture_output=True, text=True, check=True)
    gcc = dict(re.findall(r"^\s+-m([\w.-]+)\s+\[(enabled|disabled)\]", out.stdout, re.M))
    args = cmake_args("/proc/cpuinfo", platform.machine())
    assert_no_amx(args)
    for option, flags in GCC_FLAGS.items():
        if all(f in gcc for f in flags):  # an older GCC may not know the newest ones
            want = "ON" if all(gcc[f] == "enabled" for f in flags) else "OFF"
            assert args[f"GGML_{option}"] == want, (option, {f: gcc[f] for f in flags})
