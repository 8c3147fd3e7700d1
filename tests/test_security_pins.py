"""The lock CI installs with: every package nlpsuite[train,dev] pulls in (transitively) is pinned in
constraints.txt, and the environment under test has exactly the pinned versions (torch: scripts/setup.sh's)."""
from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = ("train", "dev")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not pinned with =="
            pins[_norm(name)] = version.strip()
    return pins


def _closure() -> dict[str, str]:
    """name -> installed version of everything nlpsuite[train,dev] requires, transitively, on this platform."""
    seen: dict[str, str] = {}
    todo = [(Requirement(f"nlpsuite[{','.join(EXTRAS)}]"), set(EXTRAS))]
    while todo:
        req, extras = todo.pop()
        name = _norm(req.name)
        dist = metadata.distribution(req.name)
        if name in seen and not extras:
            continue
        seen[name] = dist.version
        for text in dist.requires or []:
            sub = Requirement(text)
            if sub.marker is not None and not any(sub.marker.evaluate({"extra": e}) for e in (extras or {""})):
                continue
            if _norm(sub.name) not in seen:
                todo.append((sub, set(sub.extras)))
    seen.pop("nlpsuite")
    return seen


def test_every_dependency_is_pinned_at_the_installed_version():
    pins, installed = _pins(), _closure()
    torch = re.search(r"TORCH_VERSION:-([0-9.]+)", (ROOT / "scripts" / "setup.sh").read_text()).group(1)
    assert installed.pop("torch").split("+")[0] == torch
    assert sorted(set(installed) - set(pins)) == [], "installed but not pinned in constraints.txt"
    wrong = {name: (version, pins[name]) for name, version in installed.items() if pins[name] != version}
    assert wrong == {}, "installed version differs from constraints.txt"


def test_the_scripts_ci_runs_install_with_the_constraints():
    assert "-c constraints.txt -e '.[train,dev]'" in (ROOT / "scripts" / "setup.sh").read_text()
    assert "-c constraints.txt" in (ROOT / "scripts" / "install_deploy_tools.sh").read_text()
    assert "scripts/setup.sh" in (ROOT / "scripts" / "test.sh").read_text()
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
