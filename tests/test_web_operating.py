"""docs/operating.md: its catalog and each of its `sh` recipes run, in order, in one
directory, as a reader would paste them (the Python examples run in test_docs.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from .test_docs import ROOT

PAGE = ROOT / "docs" / "operating.md"
FENCE = re.compile(r"^```(toml|sh)\n(.*?)^```", re.S | re.M)


def test_the_operating_recipes_run(tmp_path: Path) -> None:
    blocks = FENCE.findall(PAGE.read_text())
    (catalog,) = [text for kind, text in blocks if kind == "toml"]
    (tmp_path / "flowfsm.toml").write_text(catalog)
    recipes = [text for kind, text in blocks if kind == "sh"]
    assert len(recipes) >= 6
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWFSM_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["COLUMNS"] = "160"
    # One shell for the whole page, so that what a recipe sets (FLOW=...) is there for the next.
    script = "set -euo pipefail\n" + "\n".join(recipes)
    done = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "ok: flowfsm.toml: 1 service(s)" in out
    assert "database migration running" not in done.stderr
    assert "svc-api success  dev:success → prod:success" in out  # the skip let the flow finish
    assert "approval  Awaiting approval for 'prod': 0 of 1, from alice or group:release-managers" in out
    assert "finished  Finished: the flow succeeded" in out
    history = subprocess.run(
        ["bash", "-c", "flowfsm history com.acme:api:1.4.0"],
        cwd=tmp_path,
        env={**env, "FLOWFSM_STORE": "flowfsm.db", "FLOWFSM_CATALOG": "flowfsm.toml"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    steps = (
        "PauseFlow by alice: database migration running",
        "ResumeFlow by alice",
        "ApprovalGranted by bob",
        "SkipPromotion by alice",
    )
    for step in steps:
        assert step in history
