"""The committed generated code must be exactly what protos/ generates."""
from __future__ import annotations

import filecmp
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_generated_code_is_current(tmp_path):
    subprocess.run(["bash", str(ROOT / "scripts" / "gen_protos.sh"), str(tmp_path)], check=True, cwd=ROOT)
    generated = sorted(p.name for p in (tmp_path / "nlpsuite" / "v1").iterdir())
    committed = sorted(p.name for p in (ROOT / "nlpsuite" / "v1").iterdir() if p.name != "__init__.py" and p.is_file())
    assert generated == committed, "run scripts/gen_protos.sh and commit the result"
    stale = [name for name in generated
             if not filecmp.cmp(tmp_path / "nlpsuite" / "v1" / name, ROOT / "nlpsuite" / "v1" / name, shallow=False)]
    assert not stale, f"stale generated code {stale}: run scripts/gen_protos.sh and commit the result"
