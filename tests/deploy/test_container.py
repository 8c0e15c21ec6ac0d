"""deploy/container/Dockerfile without a Docker engine: the stages, user, contents and entry
point are what docs/deploy.md promises, the build installs what tools/bootstrap installs, and
the runtime packages provide every shared library the built binaries link."""

import fnmatch
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from rendering import K8S, REPO, load_yaml, worker_container

DOCKERFILE = REPO / "deploy" / "container" / "Dockerfile"
BINARIES = {  # build output -> what the image ships
    "build/worker/ember-worker": "/opt/ember/bin/ember-worker",
    "build/worker/ember-generate": "/opt/ember/bin/ember-generate",
    "build/loader/ember-pull": "/opt/ember/bin/ember-pull",
}
UID = 10001

# tools/bootstrap packages the image does not need: test frameworks and the fuzzing compiler
# (the image is configured with -DEMBER_BUILD_TESTS=OFF).
TEST_ONLY_PACKAGES = {"clang", "libclang-rt-14-dev", "libgtest-dev", "libgmock-dev",
                      "libboost-context-dev"}  # the CUDA emulation's fibers

# Shared libraries (DT_NEEDED sonames, version numbers dropped) -> the Ubuntu 24.04 package of
# the runtime stage that provides them. BASE_IMAGE: in nvidia/cuda:*-runtime-ubuntu24.04
# already (glibc, libstdc++, zlib, the CUDA runtime libraries); DRIVER: mounted from the node
# by the NVIDIA container toolkit. A soname missing here fails the test: add its package to the
# Dockerfile's runtime stage and a line here.
BASE_IMAGE, DRIVER = "(base image)", "(node driver)"
SONAME_PACKAGES = [
    (r"libabsl_\w+\.so", "libabsl20220623t64"),
    (r"libcurl\.so", "libcurl4t64"),
    (r"libgrpc\+\+\w*\.so|libgrpcpp_\w+\.so", "libgrpc++1.51t64"),
    (r"libgrpc(_unsecure)?\.so|libgpr\.so|libupb\.so|libaddress_sorting\.so", "libgrpc29t64"),
    (r"libprotobuf\.so", "libprotobuf32t64"),
    (r"libpugixml\.so", "libpugixml1v5"),
    (r"libre2\.so", "libre2-10"),
    (r"libutf8proc\.so", "libutf8proc3"),  # the tokenizer's Unicode normalization
    (r"libmicrohttpd\.so", "libmicrohttpd12t64"),  # the worker's /metrics endpoint
    (r"libdnnl\.so", "libdnnl3"),  # oneDNN: the CPU backend's BF16 GEMM (noble ships oneDNN 3.1)
    (r"libgomp\.so", "libgomp1"),  # OpenMP, which Ubuntu's oneDNN is built on
    (r"(libc|libm|libdl|librt|libpthread|libresolv)\.so|ld-linux[\w-]*\.so|linux-vdso\.so", BASE_IMAGE),
    (r"libstdc\+\+\.so|libgcc_s\.so|libz\.so", BASE_IMAGE),
    (r"libcudart\.so|libcublas(Lt)?\.so|libcurand\.so|libnvrtc[\w-]*\.so|libnvJitLink\.so", BASE_IMAGE),
    (r"libcuda\.so|libnvidia-ml\.so", DRIVER),
]
# Runtime packages needed for something other than a linked library.
NON_LIBRARY_PACKAGES = {"ca-certificates": "HTTPS to object storage (libcurl's CA bundle)"}


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        current += " " + stripped[:-1] if stripped.endswith("\\") else " " + stripped
        if not stripped.endswith("\\"):
            lines.append(current.strip())
            current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def stages() -> list[dict]:
    """Each FROM with its image (global ARG defaults substituted), alias and instructions."""
    args, out = {}, []
    for op, rest in instructions():
        if op == "ARG" and not out and "=" in rest:
            name, _, default = rest.partition("=")
            args[name] = default.strip('"')
        elif op == "FROM":
            words = rest.split()
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], words[0])
            alias = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            out.append({"image": image, "alias": alias, "ops": []})
        elif out:
            out[-1]["ops"].append((op, rest))
    return out


def apt_packages(stage: dict) -> set[str]:
    packages = set()
    for op, rest in stage["ops"]:
        if op == "RUN" and "apt-get install" in rest:
            command = rest.split("apt-get install", 1)[1].split("&&", 1)[0]
            packages |= {w for w in shlex.split(command) if not w.startswith("-")}
    return packages


def bootstrap_packages() -> set[str]:
    text = (REPO / "tools" / "bootstrap").read_text()
    block = re.search(r"APT_PACKAGES=\((.*?)\)", text, re.S)
    assert block, "tools/bootstrap no longer lists APT_PACKAGES"
    return set(block.group(1).split())


def package_for(soname: str) -> str | None:
    for pattern, package in SONAME_PACKAGES:
        if re.fullmatch(rf"(?:{pattern})(\.[\d.]+)*", soname):
            return package
    return None


def needed_sonames(binary: Path) -> set[str]:
    """The libraries a binary links directly (DT_NEEDED); their own dependencies come with the
    packages that provide them."""
    if shutil.which("readelf"):
        out = subprocess.run(["readelf", "-d", str(binary)], capture_output=True, text=True, check=True).stdout
        return set(re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out))
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


# --- stages ---------------------------------------------------------------------------------


def test_builds_on_cuda_devel_and_runs_on_the_matching_runtime_image():
    build, *_, runtime = stages()
    devel = re.fullmatch(r"nvidia/cuda:(13\.0\.\d+)-devel-ubuntu24\.04", build["image"])
    run = re.fullmatch(r"nvidia/cuda:(13\.0\.\d+)-runtime-ubuntu24\.04", runtime["image"])
    assert devel and run, (build["image"], runtime["image"])
    assert devel.group(1) == run.group(1), "build and runtime images must be the same CUDA release"
    assert build["alias"] == "build"


def test_build_configures_release_without_tests_and_builds_the_three_binaries():
    build = stages()[0]
    commands = " ".join(rest for op, rest in build["ops"] if op == "RUN")
    assert "-G Ninja" in commands and "-DCMAKE_BUILD_TYPE=Release" in commands
    assert "-DEMBER_BUILD_TESTS=OFF" in commands
    targets = re.search(r"--target ([\w\- ]+)", commands).group(1).split()
    assert set(targets) == {Path(p).name for p in BINARIES}


def test_build_installs_the_bootstrap_build_dependencies():
    """A library added to tools/bootstrap for the build must be added to the image as well."""
    missing = bootstrap_packages() - TEST_ONLY_PACKAGES - apt_packages(stages()[0])
    assert not missing, f"tools/bootstrap installs {sorted(missing)}, the build stage does not"


def test_runtime_stage_holds_only_the_binaries_and_runs_as_a_numeric_non_root_user():
    runtime = stages()[-1]
    ops = runtime["ops"]
    assert not [rest for op, rest in ops if op == "ADD"]
    copies = [rest for op, rest in ops if op == "COPY"]
    assert len(copies) == 1 and copies[0].startswith("--from=build ")
    *sources, destination = copies[0].split()[1:]
    assert destination == "/opt/ember/bin/"
    assert {s.removeprefix("/src/") for s in sources} == set(BINARIES)
    users = [rest for op, rest in ops if op == "USER"]
    assert users, "the runtime stage must set USER"
    user, _, group = users[-1].partition(":")
    # Numeric, so the kubelet can enforce runAsNonRoot; the same uid the manifests run as.
    assert user.isdigit() and int(user) == UID and (not group or int(group) == UID)
    entrypoint = [rest for op, rest in ops if op == "ENTRYPOINT"]
    assert entrypoint == ['["/opt/ember/bin/ember-worker"]'], "exec form, so SIGTERM reaches the worker"


def test_manifests_run_as_the_image_user():
    deployment = load_yaml(K8S / "base" / "deployment.yaml")
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == UID
    knative = load_yaml(K8S / "overlays" / "knative" / "service.yaml")
    assert worker_container(knative["spec"]["template"])["securityContext"]["runAsUser"] == UID


def test_dockerignore_keeps_models_builds_and_git_out_of_the_context():
    patterns = [line.strip().rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]

    def ignored(path: str) -> bool:
        # Docker matches each pattern against the path and, for directories, its parents.
        parts = path.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        return any(fnmatch.fnmatch(p, pattern.removeprefix("**/")) or fnmatch.fnmatch(p, pattern)
                   for pattern in patterns for p in prefixes)

    for path in ("models/llama/model.safetensors", "build/loader/ember-pull", "build-fuzz/x", ".git/HEAD"):
        assert ignored(path), f"{path} would be sent to the build"
    for path in ("CMakeLists.txt", "loader/CMakeLists.txt", "kernels/CMakeLists.txt", "worker/README.md",
                 "proto/README.md"):
        assert not ignored(path), f"{path} is needed by the build"


# --- shared libraries -----------------------------------------------------------------------


def test_soname_table_names_exactly_the_runtime_packages():
    """Every runtime package is there for a library (or a listed reason), and only those."""
    runtime = apt_packages(stages()[-1])
    for_libraries = {package for _, package in SONAME_PACKAGES} - {BASE_IMAGE, DRIVER}
    assert runtime == for_libraries | set(NON_LIBRARY_PACKAGES)


def test_runtime_packages_provide_every_library_the_binaries_link():
    build_dir = Path(os.environ.get("EMBER_BUILD_DIR", REPO / "build"))
    binaries = [build_dir / Path(p).relative_to("build") for p in BINARIES]
    present = [b for b in binaries if b.is_file()]
    if not present:
        pytest.skip(f"no built binaries under {build_dir} (build the project first): "
                    "the library check of the runtime stage did not run")
    runtime = apt_packages(stages()[-1])
    for binary in present:
        for soname in sorted(needed_sonames(binary)):
            package = package_for(soname)
            assert package, f"{binary.name} links {soname}: add its Ubuntu 24.04 package to the runtime stage and SONAME_PACKAGES"
            assert package in runtime | {BASE_IMAGE, DRIVER}, f"{binary.name} links {soname} from {package}, not installed"
