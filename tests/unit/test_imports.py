"""Who may import what (ARCHITECTURE.md): tools reach the service only through its public
settings and logging, benchmarks also through the parts they measure, and the service
and the contract never reach back."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Package -> the consumer modules (and their submodules) it may import.
ALLOWED = {
    "producer_tools": ("consumer.settings", "consumer.log", "consumer.artifacts"),
    "bench": (
        "consumer.settings", "consumer.log", "consumer.config", "consumer.app",
        "consumer.engines", "consumer.documents", "consumer.errors", "consumer.page_image",
        "consumer.publisher", "consumer.postprocess", "consumer.state",
    ),
    "schemas": (),
}
# ocr-gateway checks uploads and draws page images with the consumer's own rasteriser, so
# its refusals carry the consumer's codes and its page images have the pixels the engine
# saw (bbox_px fit them), and opens Redis with the consumer's client.
GATEWAY = ("consumer.documents", "consumer.errors", "consumer.state")
NEVER = {
    "consumer": ("producer_tools", "bench"),
    "schemas": ("consumer", "producer_tools", "bench", "aiokafka", "redis"),
    "producer_tools": ("bench",),
}


def imports(package: str) -> list[tuple[str, str]]:
    """(file, imported module) for every import under `package`, nested ones too."""
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.append((str(path.relative_to(ROOT)), node.module))
            elif isinstance(node, ast.Import):
                found.extend((str(path.relative_to(ROOT)), a.name) for a in node.names)
    return found


def within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_only_the_public_parts_of_the_consumer_are_imported(package: str) -> None:
    def allowed(path: str) -> tuple[str, ...]:
        gateway = path.startswith("producer_tools/gateway/")
        return ALLOWED[package] + (GATEWAY if gateway else ())

    bad = [
        (path, module) for path, module in imports(package)
        if within(module, ("consumer",)) and not within(module, allowed(path))
    ]
    assert bad == []


@pytest.mark.parametrize("package", sorted(NEVER))
def test_imports_never_run_back_up(package: str) -> None:
    bad = [(path, module) for path, module in imports(package) if within(module, NEVER[package])]
    assert bad == []
