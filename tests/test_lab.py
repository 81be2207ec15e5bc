"""Jupyter Lab as a reader gets it: a real server started the way `make lab` starts it, asked
through its REST API whether the notebooks open as notebooks and saving one changes nothing."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from kn_utils import io

REPO = io.repo_root()
SOURCES = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.py"))
DOCMANAGER = "@jupyterlab/docmanager-extension:plugin"
JUPYTEXT_VIEWER = "Jupytext Notebook"


def _executed_notebooks() -> list[Path]:
    """The committed executed notebooks (what a clone has); every one on disk without git."""
    listed = subprocess.run(["git", "ls-files", "-z", "--", "results"], cwd=REPO, capture_output=True, text=True,
                            check=False) if shutil.which("git") else None
    if listed is not None and listed.returncode == 0:
        paths = [REPO / p for p in listed.stdout.split("\0") if p.endswith(".ipynb")]
        return sorted(p for p in paths if p.is_file())
    return sorted(REPO.glob("results/**/[0-9][0-9]_*.ipynb"))


class Lab:
    def __init__(self, url: str, token: str, proc: subprocess.Popen, log: Path):
        self.url, self.token, self.proc, self.log = url, token, proc, log

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict | str]:
        req = urllib.request.Request(self.url + path, method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"token {self.token}",
                                              "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")

    def get(self, path: str) -> dict:
        status, body = self.request("GET", path)
        assert status == 200, f"GET {path}: {status} {body}"
        return body

    def notebook(self, path: Path) -> dict:
        """What Lab loads when it opens ``path`` as a notebook."""
        rel = path.relative_to(REPO).as_posix()
        status, model = self.request("GET", f"/api/contents/{urllib.request.quote(rel)}?type=notebook&content=1")
        assert status == 200, f"Lab cannot open {rel} as a notebook: {status} {model}"
        return model


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Lab:
    if shutil.which("make") is None:
        pytest.skip("GNU make not installed")
    tmp = tmp_path_factory.mktemp("lab")
    port, token = _free_port(), secrets.token_hex(16)
    # The user's own Lab settings and workspaces stay out of it; the config path is make lab's.
    env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(tmp / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp / "workspaces"), "JUPYTER_RUNTIME_DIR": str(tmp / "runtime")}
    log = tmp / "lab.log"
    args = (f"--no-browser --ServerApp.ip=127.0.0.1 --ServerApp.port={port} --ServerApp.port_retries=0 "
            f"--IdentityProvider.token={token}")
    # -o: never rebuild the venv from inside a test, even when pyproject.toml is newer than its stamp.
    cmd = ["make", "--no-print-directory", "-o", ".venv/.installed", "lab", f"LAB_ARGS={args}"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = Lab(f"http://127.0.0.1:{port}", token, proc, log)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"make lab exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if server.request("GET", "/api/status")[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"Jupyter Lab did not answer within 120 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield server
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # make and the server it started: their own group
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def test_make_lab_command() -> None:
    if shutil.which("make") is None:
        pytest.skip("GNU make not installed")
    plan = subprocess.run(["make", "-n", "-o", ".venv/.installed", "lab"], cwd=REPO, capture_output=True,
                          text=True, check=True).stdout
    config = plan.split('JUPYTER_CONFIG_PATH="', 1)[1].split("$", 1)[0]
    assert Path(config).resolve() == REPO / ".jupyter" and "-m jupyter lab" in plan, plan
    assert ("--allow-root" in plan) == (os.getuid() == 0)


def test_python_files_open_with_the_jupytext_viewer(lab: Lab) -> None:
    settings = lab.get(f"/lab/api/settings/{DOCMANAGER}")
    viewers = settings["schema"]["properties"]["defaultViewers"]["default"]
    assert viewers.get("python") == JUPYTEXT_VIEWER, viewers
    assert settings["settings"].get("defaultViewers", {}).get("python", JUPYTEXT_VIEWER) == JUPYTEXT_VIEWER
    # ... and that viewer exists: the jupytext Lab extension is loaded and registers it by that name.
    page = urllib.request.urlopen(urllib.request.Request(f"{lab.url}/lab?token={lab.token}"), timeout=60).read().decode()
    config = json.loads(page.split('id="jupyter-config-data"', 1)[1].split(">", 1)[1].split("</script>", 1)[0])
    names = {e["name"] for e in config.get("federated_extensions", [])}
    assert "jupyterlab-jupytext" in names, sorted(names)
    from jupyter_core.paths import jupyter_path

    static = [f for d in jupyter_path("labextensions") for f in Path(d, "jupyterlab-jupytext", "static").glob("*.js")]
    assert any(f'FACTORY="{JUPYTEXT_VIEWER}"' in f.read_text(errors="replace") for f in static), static


def test_executed_notebooks_open_with_their_outputs(lab: Lab) -> None:
    executed = _executed_notebooks()
    assert executed, "no executed notebooks under results/"
    for path in executed:
        model = lab.notebook(path)
        assert model["type"] == "notebook"
        nb = model["content"]
        on_disk = json.loads(path.read_text(encoding="utf-8"))
        outputs = [len(c.get("outputs", [])) for c in nb["cells"] if c["cell_type"] == "code"]
        assert sum(outputs) > 0 and outputs == [len(c.get("outputs", [])) for c in on_disk["cells"]
                                                if c["cell_type"] == "code"], path
        assert "jupytext" not in nb["metadata"], f"{path}: pairing metadata of the .py source"
        assert isinstance(nb["metadata"]["papermill"]["input_path"], str), f"{path}: papermill kept the whole input"


def test_py_notebooks_open_as_notebooks(lab: Lab) -> None:
    import jupytext

    assert SOURCES
    for path in SOURCES:
        model = lab.notebook(path)
        assert model["type"] == "notebook" and model["format"] == "json"
        cells = model["content"]["cells"]
        assert len(cells) == len(jupytext.read(path).cells) and cells[0]["cell_type"] == "markdown", path
        assert "kn_study" in model["content"]["metadata"], f"{path}: header lost its kn_study entry"


def _git_diff(path: Path) -> str | None:
    if shutil.which("git") is None:
        return None
    r = subprocess.run(["git", "diff", "--", str(path)], cwd=REPO, capture_output=True, text=True, check=False)
    return r.stdout if r.returncode == 0 else None


def test_saving_a_py_notebook_unchanged_changes_nothing(lab: Lab) -> None:
    """What Lab's autosave writes after opening a notebook and starting its kernel (which sets the
    kernelspec and language_info) must be the file as committed: no diff for a reader."""
    status, specs = lab.request("GET", "/api/kernelspecs")
    assert status == 200
    spec = specs["kernelspecs"][specs["default"]]["spec"]
    for path in SOURCES:
        before, diff_before = path.read_bytes(), _git_diff(path)
        nb = lab.notebook(path)["content"]
        nb["metadata"]["kernelspec"] = {"name": specs["default"], "display_name": spec["display_name"],
                                        "language": spec["language"]}
        nb["metadata"]["language_info"] = {"name": "python", "version": "3", "mimetype": "text/x-python",
                                           "file_extension": ".py", "pygments_lexer": "ipython3",
                                           "codemirror_mode": {"name": "ipython", "version": 3},
                                           "nbconvert_exporter": "python"}
        rel = path.relative_to(REPO).as_posix()
        try:
            status, body = lab.request("PUT", f"/api/contents/{urllib.request.quote(rel)}",
                                       {"type": "notebook", "format": "json", "content": nb})
            assert status == 200, f"saving {rel}: {status} {body}"
            after = path.read_bytes()
            assert after == before, f"saving {rel} unchanged through Lab rewrote it"
            if diff_before is not None:
                assert _git_diff(path) == diff_before  # on a clean checkout: git diff stays empty
        finally:
            if path.read_bytes() != before:
                path.write_bytes(before)


def test_kernel_imports_tqdm_auto_without_a_warning() -> None:
    """The first cell of every notebook imports tqdm.auto; in Lab's kernel it must not warn."""
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3")
    try:
        seen: list[str] = []
        reply = kc.execute_interactive(
            "import warnings\nwarnings.simplefilter('always')\nfrom tqdm.auto import tqdm\nimport tqdm.notebook as tn\n"
            "print('widget bar:', issubclass(tqdm, tn.tqdm))",
            timeout=120, output_hook=lambda msg: seen.append(json.dumps(msg.get("content", {}))))
        assert reply["content"]["status"] == "ok"
        text = "\n".join(seen)
        assert "widget bar: True" in text and "IProgress not found" not in text and "Warning" not in text, text
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_tidy_executed_drops_the_pairing_and_keeps_the_outputs(tmp_path: Path) -> None:
    import nbformat

    from kn_utils import runner

    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("print(1)")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="1\n")]
    nb.cells = [cell]
    nb.metadata = {"jupytext": {"formats": "py:percent"}, "kernelspec": {"name": "python3", "display_name": "P",
                                                                           "language": "python"},
                   "papermill": {"input_path": {"cells": ["the whole input notebook"]}, "output_path": "/elsewhere/x.ipynb"}}
    path = tmp_path / "03_x.ipynb"
    nbformat.write(nb, path)
    assert runner.tidy_executed(path, REPO / "notebooks" / "03_suppress_amplify.py")
    back = nbformat.read(path, as_version=4)
    assert "jupytext" not in back.metadata and back.metadata.kernelspec.name == "python3"
    assert back.metadata.papermill.input_path == "notebooks/03_suppress_amplify.py"
    assert back.metadata.papermill.output_path == path.resolve().as_posix()
    assert back.cells[0].outputs[0].text == "1\n"
    assert not runner.tidy_executed(path)  # already tidy: the file is left alone
