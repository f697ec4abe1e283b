"""The package as operators install it: the wheel built from this checkout, installed with
pip into a fresh virtualenv, base first and then the `cpu` extra, as the README says.

Checks what an install must carry (console scripts with --version, the vLLM plugin entry
point, py.typed, the schemas' data files), that the base install has no engine and says
which extra brings one, that the `cpu` extra runs RapidOCR on the headless OpenCV build
with no GUI build installed, and what the `gpu` extra declares (vLLM cannot be installed
on this machine: no CUDA, and gigabytes of wheels). Prints each install's size:

    .venv/bin/pytest -s tests/integration/test_install.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.parser import Parser
from pathlib import Path

import pytest

from consumer.engines.deepseek_modes import PLUGIN_GROUP, PLUGIN_VALUE

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
SCRIPTS = PYPROJECT["project"]["scripts"]
PIP_TIMEOUT_S = 900

pytestmark = [pytest.mark.slow, pytest.mark.timeout(PIP_TIMEOUT_S + 300)]


def _size_bytes(root: Path) -> int:
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            path = Path(folder, name)
            if not path.is_symlink():
                total += path.stat().st_size
    return total


def _run(*command: str | Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(part) for part in command], capture_output=True, text=True,
        timeout=PIP_TIMEOUT_S, env=env,
    )
    assert done.returncode == 0, f"{command}: {done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@dataclass
class Install:
    wheel: Path
    venv: Path
    sizes_mb: dict[str, float] = field(default_factory=dict)

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def pip(self, *args: str | Path) -> str:
        # A fresh environment, not ours: no PYTHONPATH pointing back at the checkout.
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        return _run(self.python, "-m", "pip", "install", "-q", *args, env=env)

    def python_out(self, code: str) -> str:
        # Run outside the checkout so `import consumer` can only find the installed copy.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        done = subprocess.run(
            [str(self.python), "-c", code], capture_output=True, text=True, cwd=self.venv,
            env=env, timeout=120,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout


@pytest.fixture(scope="module")
def install(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Install]:
    work = tmp_path_factory.mktemp("install")
    # Built the way pip builds it for a user (isolated), from a copy of the tracked files:
    # setuptools writes build/ and *.egg-info next to the sources, and a stale build/ of
    # the checkout could put deleted modules into the wheel.
    source = work / "source"
    listed = _run("git", "-C", REPO, "ls-files", "-z", "--cached", "--others",
                  "--exclude-standard")
    for name in filter(None, listed.split("\0")):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", work / "dist", source)
    [wheel] = (work / "dist").glob("ocr_stream-*.whl")
    venv = work / "venv"
    _run(sys.executable, "-m", "venv", venv)
    empty = _size_bytes(venv)
    found = Install(wheel=wheel, venv=venv)
    found.pip(wheel)
    base = _size_bytes(venv)
    found.sizes_mb["base"] = round((base - empty) / 1e6, 1)
    yield found
    print(f"\ninstall sizes (MB, files written into a fresh venv): {json.dumps(found.sizes_mb)}")


def test_base_install_has_every_tool_with_a_version(install: Install) -> None:
    version = PYPROJECT["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert version == "consumer.__version__"
    expected = install.python_out("import consumer; print(consumer.__version__)").strip()
    assert install.wheel.name.startswith(f"ocr_stream-{expected}-")
    for script in SCRIPTS:
        out = _run(install.venv / "bin" / script, "--version")
        assert out.strip() == f"{script} (ocr-stream {expected})", out


def test_base_install_registers_the_vllm_plugin(install: Install) -> None:
    out = install.python_out(
        "import json; from importlib.metadata import entry_points as e; "
        f"print(json.dumps([[x.name, x.value] for x in e(group={PLUGIN_GROUP!r})]))"
    )
    assert json.loads(out) == [["ocr_stream_resolution", PLUGIN_VALUE]]
    # What the vLLM engine asks before it starts a non-default resolution mode, and what
    # vLLM then loads in each of its processes.
    out = install.python_out(
        "from consumer.engines import deepseek_modes as m; print(m.plugin_registered()); "
        "from importlib.metadata import entry_points as e; "
        f"[p] = e(group={PLUGIN_GROUP!r}); p.load()(); print('loaded')"
    )
    assert out.split() == ["True", "loaded"]


def test_setup_script_declares_the_same_plugin() -> None:
    # deploy/gpu/setup.sh declares it by hand for runs from the checkout (no install there).
    text = (REPO / "deploy" / "gpu" / "setup.sh").read_text()
    declared = PYPROJECT["project"]["entry-points"][PLUGIN_GROUP]
    for name, value in declared.items():
        assert f"[{PLUGIN_GROUP}]\\n{name} = {value}" in text


def test_base_install_is_typed_and_carries_its_data(install: Install) -> None:
    names = zipfile.ZipFile(install.wheel).namelist()
    for package in ("consumer", "producer_tools", "schemas"):
        assert f"{package}/py.typed" in names, package
    assert "schemas/asyncapi.yaml" in names
    assert any(n.startswith("schemas/json/") and n.endswith(".schema.json") for n in names)


def test_base_install_has_no_engine_and_says_which_extra(install: Install) -> None:
    out = install.python_out(
        "import importlib.util as u\n"
        "import consumer.app, producer_tools.submit, producer_tools.collect, schemas.export\n"
        "from consumer.config import EngineName\n"
        "from consumer.engines import factory\n"
        "from consumer.errors import OcrError\n"
        "print(u.find_spec('cv2') is None and u.find_spec('onnxruntime') is None,\n"
        "      u.find_spec('rapidocr_onnxruntime') is None)\n"
        "try:\n"
        "    factory.resolve_engine_name(EngineName.AUTO)\n"
        "except OcrError as exc:\n"
        "    print(exc.message)\n"
    )
    no_runtime, no_rapidocr, message = out.strip().split(maxsplit=2)
    assert (no_runtime, no_rapidocr) == ("True", "True"), "the base install pulled in an engine"
    assert "ocr-stream[cpu]" in message and "ocr-stream[gpu]" in message, message


def test_cpu_extra_runs_rapidocr_on_headless_opencv(install: Install) -> None:
    before = _size_bytes(install.venv)
    install.pip(f"{install.wheel}[cpu]")
    install.pip("--no-deps", "-r", REPO / "deploy" / "cpu-engine.txt")
    install.sizes_mb["cpu_adds"] = round((_size_bytes(install.venv) - before) / 1e6, 1)
    install.sizes_mb["base_plus_cpu"] = round(
        install.sizes_mb["base"] + install.sizes_mb["cpu_adds"], 1
    )
    installed = install.python_out(
        "import json; from importlib.metadata import distributions as d; "
        "print(json.dumps(sorted(x.metadata['Name'].lower() for x in d())))"
    )
    names = set(json.loads(installed))
    assert "opencv-python-headless" in names and "rapidocr-onnxruntime" in names
    assert "opencv-python" not in names, "the GUI OpenCV build came in"
    # A real recognition, through the consumer's own engine, on a rendered word.
    out = install.python_out(
        "import asyncio\n"
        "from PIL import Image, ImageDraw, ImageFont\n"
        "from consumer.config import EngineName, Settings\n"
        "from consumer.engines import factory\n"
        "assert factory.rapidocr_missing() is None\n"
        "assert factory.resolve_engine_name(EngineName.AUTO) is EngineName.RAPIDOCR\n"
        "from rapidocr_onnxruntime import RapidOCR\n"
        "image = Image.new('RGB', (420, 90), 'white')\n"
        "ImageDraw.Draw(image).text((12, 20), 'HEADLESS 42', fill='black',\n"
        "                           font=ImageFont.load_default(size=40))\n"
        "import numpy\n"
        "result, _ = RapidOCR()(numpy.asarray(image)[:, :, ::-1])\n"
        "print(' '.join(line[1] for line in result or []))\n"
    )
    assert "HEADLESS" in out.upper(), out


def test_gpu_extra_declares_the_vllm_stack(install: Install) -> None:
    # Not installable here (CUDA wheels, several GB): the wheel's metadata is checked instead.
    with zipfile.ZipFile(install.wheel) as wheel:
        [meta_name] = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = Parser().parsestr(wheel.read(meta_name).decode())
    assert "gpu" in metadata.get_all("Provides-Extra", [])
    gpu = {
        line.split(";")[0].strip()
        for line in metadata.get_all("Requires-Dist", [])
        if 'extra == "gpu"' in line
    }
    assert gpu == set(PYPROJECT["project"]["optional-dependencies"]["gpu"])
    assert any(req.startswith("vllm==") for req in gpu)
    base = [line for line in metadata.get_all("Requires-Dist", []) if "extra ==" not in line]
    for heavy in ("vllm", "torch", "rapidocr", "opencv", "onnxruntime"):
        assert not any(line.lower().startswith(heavy) for line in base), heavy
