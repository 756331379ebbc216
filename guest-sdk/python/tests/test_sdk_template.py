"""The `new --lang python` template: filled in as the CLI does, its own tests pass."""

import os
import subprocess
import sys

TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "template")
SDK = os.path.normpath(os.path.join(TEMPLATE, os.pardir))


def fill(tmp_path, name="my-counter"):
    for file in sorted(os.listdir(TEMPLATE)):
        src = os.path.join(TEMPLATE, file)
        if not os.path.isfile(src):
            continue
        with open(src, encoding="utf-8") as f:
            text = f.read()
        text = text.replace("__NAME_SNAKE__", name.replace("-", "_")).replace("__NAME__", name)
        text = text.replace("__SDK__", SDK.replace("\\", "/"))
        target = file[: -len(".tmpl")] if file.endswith(".tmpl") else file
        (tmp_path / target).write_text(text, encoding="utf-8")
    return tmp_path


def test_template_has_the_expected_files_and_placeholders():
    files = set(os.listdir(TEMPLATE))
    assert {"app.py", "test_app.py", "conftest.py"} <= files
    with open(os.path.join(TEMPLATE, "conftest.py"), encoding="utf-8") as f:
        assert "__SDK__" in f.read()
    with open(os.path.join(TEMPLATE, "app.py"), encoding="utf-8") as f:
        app = f.read()
    assert "__NAME__" in app
    assert "WitWorld = export(" in app


def test_filled_in_template_passes_its_tests(tmp_path):
    project = fill(tmp_path)
    assert "__" + "SDK__" not in (project / "conftest.py").read_text()
    env = {k: v for k, v in os.environ.items() if k != "AGGREGATE_SDK_PYTHON"}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 passed" in result.stdout
